"""What the API tells its operators: HTTP and refresh metrics, and the middlewares around routes."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from linkvault.api.problems import (
    ApiProblem,
    header,
    internal_error,
    problem_response,
    send_problem,
)
from linkvault.outage import OutageLog
from linkvault.runtime import Runtime
from linkvault.services.refresh import Outcome

log = logging.getLogger("linkvault.api")

# Metrics label only these methods; any other is counted as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BodyLimitMiddleware:
    """Reads a request body only up to `max_bytes`; a larger one is a 413, unread beyond that.

    The body is read here, before any route parses it, and handed on in one piece; except on
    `streaming` paths, whose route reads the body as it comes and keeps its own limit.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, streaming: re.Pattern[str] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streaming = streaming

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.streaming is not None and self.streaming.match(scope.get("path", ""))
        ):
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_problem(scope, send, self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left: the app gets the disconnect as the first message
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await send_problem(scope, send, self._too_large())
                return
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": bytes(body)}
                break
        pending = [message]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiProblem:
        return ApiProblem(
            413,
            "body-too-large",
            "Content Too Large",
            f"a request body may hold at most {self.max_bytes} bytes",
            headers={"Connection": "close"},
            extra={"max_bytes": self.max_bytes},
        )


class HeadAsGetMiddleware:
    """HEAD is answered as GET would be; the server sends the headers without the body.

    Paths matching `keep` are left alone: the proxy forwards HEAD as HEAD.
    """

    def __init__(self, app: ASGIApp, keep: re.Pattern[str] | None = None) -> None:
        self.app = app
        self.keep = keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kept = self.keep is not None and self.keep.match(scope.get("path", ""))
        if scope["type"] == "http" and scope.get("method") == "HEAD" and not kept:
            # A copy: the server reads the method from its own scope to leave the body out.
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


class OutageMiddleware:
    """Tells the outage log that the database answered: a 2xx from a route that needs it."""

    def __init__(
        self,
        app: ASGIApp,
        outage: OutageLog,
        prefixes: tuple[str, ...],
        without_database: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.outage = outage
        self.prefixes = prefixes
        self.without_database = without_database  # paths under the prefixes that never ask it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (
            scope["type"] != "http"
            or not path.startswith(self.prefixes)
            or path in self.without_database
        ):
            await self.app(scope, receive, send)
            return

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.outage.success()
            await send(message)

        await self.app(scope, receive, watching_send)


class _TrackingSend:
    """`send`, remembering whether the answer has started: after that, no problem can
    replace it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class CatchAllMiddleware:
    """Turns an exception no handler took into a 500 problem that names no internals."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _TrackingSend(send)
        try:
            await self.app(scope, receive, sent)
        except Exception as exc:
            if sent.started:
                raise
            response = internal_error(Request(scope), exc)
            await response(scope, receive, send)


class CutOnShutdownMiddleware:
    """A request still running when the shutdown grace runs out is cancelled by the server:
    its client gets a 503 problem saying so (retry elsewhere), not a bare 500."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _TrackingSend(send)
        try:
            await self.app(scope, receive, sent)
        except asyncio.CancelledError:
            if sent.started or not self.draining():
                raise
            # The server cancelled this request to stop: answering is all that is left.
            log.warning(
                "%s %s cut at the end of the shutdown grace", scope["method"], scope["path"]
            )
            response = problem_response(
                Request(scope),
                ApiProblem(
                    503,
                    "shutting-down",
                    "Service Unavailable",
                    "the server shut down before this request finished; retry",
                    headers={"Retry-After": "1", "Connection": "close"},
                ),
            )
            await response(scope, receive, send)


class HttpMetrics:
    """Request counters and latency histograms in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "linkvault_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "linkvault_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class MetricsMiddleware:
    """Counts and times every request under its route template; logs it without the query."""

    def __init__(
        self, app: ASGIApp, metrics: HttpMetrics, routes: Callable[[], Sequence[Any]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            elapsed = time.perf_counter() - started
            route = self._route(scope)
            method = str(scope.get("method", ""))
            if method not in HTTP_METHODS:
                method = "other"  # a made-up method must not add a series per spelling
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            # The path only: a callback's query carries the authorization code and state.
            log.debug("%s %s %d %.1fms", method, scope.get("path", ""), status, elapsed * 1000)

    def _route(self, scope: Scope) -> str:
        # A route template, or one bucket for every path no route has: never the raw path.
        route = scope.get("route")
        if route is None:
            probe = {**scope, "method": "GET"}
            for candidate in self.routes():
                match, child = candidate.matches(probe)
                if match is not Match.NONE:
                    # An included router answers for the route of its own that matched.
                    route = child.get("route", candidate)
                    break
        path = getattr(route, "path", None)
        return str(path) if path else "<unmatched>"


class RefreshCollector(Collector):
    """The refresh worker's counters and backlog gauges, read at scrape time."""

    def __init__(self, runtime: Runtime, worker_running: Callable[[], bool]) -> None:
        self.runtime = runtime
        self.worker_running = worker_running

    def collect(self) -> Iterator[Metric]:
        m = self.runtime.worker.metrics
        yield CounterMetricFamily(
            "linkvault_refresh_refreshed", "Connections refreshed", value=m.refreshed
        )
        failed = CounterMetricFamily(
            "linkvault_refresh_failed", "Refresh attempts that failed, by class", labels=["class"]
        )
        for outcome in Outcome:
            if outcome is not Outcome.REFRESHED:
                failed.add_metric([outcome.value], m.outcomes[outcome])
        yield failed
        yield CounterMetricFamily("linkvault_refresh_claimed", "Leases taken", value=m.claimed)
        yield CounterMetricFamily("linkvault_refresh_batches", "Batches claimed", value=m.batches)
        yield GaugeMetricFamily(
            "linkvault_refresh_due_unclaimed",
            "Connections due for refresh that no worker holds a lease on",
            value=m.due_unclaimed,
        )
        yield GaugeMetricFamily(
            "linkvault_refresh_oldest_overdue_seconds",
            "How long the most overdue connection has been past its refresh time",
            value=m.oldest_overdue_seconds,
        )
        yield GaugeMetricFamily(
            "linkvault_refresh_worker_running",
            "Whether this process runs the refresh worker",
            value=1 if self.worker_running() else 0,
        )
