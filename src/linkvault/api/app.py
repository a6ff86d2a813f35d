"""The HTTP API: JSON under /v1, bearer API keys with scopes, RFC 9457 problems for every error.

This module wires the app (routes, middlewares, handlers, the OpenAPI document) and serves
it; the routes live in `linkvault.api.routes`, one module per resource.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path as PathType
from typing import Any

import fastapi_offline
import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry
from starlette.staticfiles import StaticFiles

from linkvault.access import ApiKeySet
from linkvault.api.observability import (
    BodyLimitMiddleware,
    CatchAllMiddleware,
    CutOnShutdownMiddleware,
    HeadAsGetMiddleware,
    HttpMetrics,
    MetricsMiddleware,
    OutageMiddleware,
    RefreshCollector,
)
from linkvault.api.paths import (
    CALLBACK_PATH,
    DOCS_ASSETS,
    HEALTH_PATH,
    HEALTH_PATHS,
    LIVE_PATH,
    PROXIED,
    PUBLIC_PATHS,
)
from linkvault.api.problems import PROBLEM_JSON, install_handlers
from linkvault.api.routes import (
    connections,
    events,
    oauth,
    operations,
    providers,
    proxy,
    webhooks,
)
from linkvault.api.security import AuthMiddleware
from linkvault.origins import ReturnOrigins
from linkvault.outage import OutageLog
from linkvault.runtime import Runtime
from linkvault.serving import Server, finish_within

log = logging.getLogger("linkvault.api")


def create_app(
    runtime: Runtime,
    access: ApiKeySet,
    *,
    run_worker: bool = False,
    public_docs: bool = True,
) -> FastAPI:
    """The API on `runtime`; with `run_worker` its lifespan also runs the refresh worker."""
    app = FastAPI(
        title="linkvault",
        version="1",
        summary="Users' connections to external data providers, with encrypted credentials.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=_lifespan(runtime, run_worker),
        # A redirect to the slash-less path would be built from the Host header.
        redirect_slashes=False,
    )
    app.state.runtime = runtime
    app.state.worker_running = False
    # Set by `begin_drain` when the server starts its graceful stop: ready answers 503.
    app.state.draining = False
    app.state.drain_started = None
    app.state.drain_hooks = []
    app.state.outage = OutageLog(log, "the database", clock=runtime.clock)
    # The routes themselves, not included routers: the middlewares and the 405 answer match
    # a path against route templates, which an included router does not expose.
    app.router.routes.extend(connections.router.routes + oauth.router.routes)
    app.mount(DOCS_ASSETS, StaticFiles(directory=_swagger_ui_assets()), name="docs-assets")
    app.router.routes.extend(providers.router.routes + operations.router.routes)
    app.router.routes.extend(events.router.routes + webhooks.router.routes)
    app.router.routes.extend(proxy.router.routes)
    install_handlers(app)
    _add_middlewares(app, runtime, access, public_docs=public_docs)
    app.openapi = lambda: _openapi(app, runtime)  # type: ignore[method-assign]
    return app


def begin_drain(app: FastAPI) -> None:
    """The server stopped accepting: ready turns 503 and a worker in the app stops claiming."""
    if app.state.draining:
        return
    app.state.draining = True
    app.state.drain_started = time.monotonic()
    hooks: list[Callable[[], None]] = app.state.drain_hooks
    for hook in hooks:
        hook()


def grace_left(app: FastAPI, grace: float) -> float:
    """What is left of the shutdown grace since the drain began (all of it if it has not)."""
    started: float | None = app.state.drain_started
    return grace if started is None else max(0.0, grace - (time.monotonic() - started))


def _lifespan(runtime: Runtime, run_worker: bool) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not run_worker:
            yield
            return
        stop = asyncio.Event()
        app.state.drain_hooks.append(stop.set)
        task = asyncio.create_task(runtime.worker.run(stop), name="linkvault-refresh-worker")
        hooks = asyncio.create_task(runtime.dispatcher.run(stop), name="linkvault-webhooks")
        app.state.worker_running = True
        try:
            yield
        finally:
            # The worker stopped claiming when the drain began, beside the HTTP requests;
            # its in-flight work gets what is left of the same grace.
            stop.set()
            await finish_within(
                {task, hooks}, grace_left(app, runtime.settings.shutdown_grace_seconds)
            )
            app.state.worker_running = False

    return lifespan


def _add_middlewares(
    app: FastAPI, runtime: Runtime, access: ApiKeySet, *, public_docs: bool
) -> None:
    registry = CollectorRegistry(auto_describe=True)
    http_metrics = HttpMetrics(registry)
    registry.register(RefreshCollector(runtime, lambda: bool(app.state.worker_running)))
    app.state.metrics_registry = registry
    public = PUBLIC_PATHS if public_docs else HEALTH_PATHS | {CALLBACK_PATH}
    # Added innermost first: metrics see every answer, 401s and 500s included; a body is
    # read only for a known key, and only up to the limit.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(HeadAsGetMiddleware, keep=PROXIED)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=runtime.settings.max_body_bytes, streaming=PROXIED
    )
    app.add_middleware(
        AuthMiddleware,
        keys=access,
        public=public,
        public_prefixes=(f"{DOCS_ASSETS}/",) if public_docs else (),
    )
    app.add_middleware(
        OutageMiddleware,
        outage=app.state.outage,
        prefixes=("/v1/connections", HEALTH_PATH, CALLBACK_PATH),
        without_database=frozenset({LIVE_PATH}),
    )
    app.add_middleware(MetricsMiddleware, metrics=http_metrics, routes=lambda: app.router.routes)
    app.add_middleware(CutOnShutdownMiddleware, draining=lambda: bool(app.state.draining))


def _openapi(app: FastAPI, runtime: Runtime) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        _problem_media_types(schema)
        app.openapi_schema = _what_this_deployment_accepts(
            schema, [p.slug for p in runtime.registry], runtime.connect.return_origins
        )
    return app.openapi_schema


def _swagger_ui_assets() -> PathType:
    """Swagger UI's files as fastapi-offline ships them: /docs needs no CDN."""
    return PathType(fastapi_offline.__file__).parent / "static"


def _what_this_deployment_accepts(
    schema: dict[str, Any], slugs: list[str], origins: ReturnOrigins | None
) -> dict[str, Any]:
    """Narrow the inputs that depend on configuration to exactly what is accepted."""
    models = schema.get("components", {}).get("schemas", {})
    provider = models["StartConnection"]["properties"]["provider"]
    provider.pop("pattern", None)
    provider["enum"] = sorted(slugs)
    for name in ("StartConnection", "ReconnectConnection"):
        properties = models[name]["properties"]
        if origins is None:
            continue  # the connect service leaves return_to to its caller
        if origins.pattern is None:
            properties.pop("return_to")  # additionalProperties is false: the schema says no
            continue
        for branch in properties["return_to"]["anyOf"]:
            if branch.get("type") == "string":
                branch["pattern"] = origins.pattern
    listing = schema["paths"]["/v1/connections"]["get"]
    for parameter in listing["parameters"]:
        if parameter["name"] == "provider":
            parameter["schema"]["anyOf"] = [
                {"type": "string", "enum": sorted(slugs)},
                {"type": "string", "format": "uuid"},
                {"type": "null"},
            ]
    return schema


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are application/problem+json, as the handlers send them."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status.isdigit() and int(status) >= 400 and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    return schema


# --- serving -------------------------------------------------------------------


def server_config(
    app: FastAPI, host: str, port: int, log_level: str, grace: int = 10
) -> uvicorn.Config:
    """The uvicorn configuration `serve` runs the app with; `grace` seconds for in-flight
    requests after SIGTERM."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        lifespan="on",
        # The access log would print the callback's query: its authorization code and state.
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=grace,
        backlog=2048,
    )


async def serve(
    runtime: Runtime,
    access: ApiKeySet,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    run_worker: bool = True,
    log_level: str = "info",
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
    on_server: Callable[[Server], None] | None = None,
) -> None:
    """Serve the API (and, by default, the refresh worker) until SIGINT/SIGTERM, then return.

    A signal stops accepting at once; in-flight requests (and the worker's in-flight work)
    get LINKVAULT_SHUTDOWN_GRACE_SECONDS to finish, then are cut. `on_server` receives the
    server before it starts (to drain it on another event than a signal).
    """
    app = create_app(runtime, access, run_worker=run_worker)
    grace = runtime.settings.shutdown_grace_seconds
    config = server_config(app, host, port, log_level, grace)
    server = Server(config, on_started=on_started, on_exit=lambda: begin_drain(app))
    if on_server is not None:
        on_server(server)
    await server.serve(sockets=sockets)
