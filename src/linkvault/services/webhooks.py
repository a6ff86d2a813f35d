"""Webhooks: endpoints (register, list, get, remove, deliveries, replay) and their delivery.

`WebhookDispatcher` is what `linkvault worker` runs next to the refresh worker (a library
user can run it in-process): it fans new events of the log out to the endpoints that want
them, then claims due deliveries with leases and POSTs them, at least once, in order per
(endpoint, connection): sequence n+1 is sent only once n was delivered or given up. Every
attempt of a delivery carries the same webhook-id (the event id) and is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import httpx

from linkvault.domain import Clock, utc_now, uuid7
from linkvault.errors import (
    DecryptionError,
    InvalidArgumentError,
    LinkvaultError,
    WebhookNotFoundError,
)
from linkvault.events import EventType
from linkvault.oauth import no_cookies
from linkvault.ports import Cipher
from linkvault.services.refresh import default_owner
from linkvault.stores import ConnectionStore
from linkvault.webhooks import (
    Delivery,
    DeliveryAttempt,
    DeliveryClaim,
    DeliveryResult,
    DeliveryStatus,
    WebhookEndpoint,
    check_url,
    new_secret,
    retry_delay,
    signed_headers,
)

log = logging.getLogger("linkvault.webhooks")

EVENT_TYPES = frozenset(t.value for t in EventType)


@dataclass(frozen=True, slots=True)
class RegisteredEndpoint:
    """A new endpoint and its signing secret: the only time the secret is handed out."""

    endpoint: WebhookEndpoint
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A delivery with its attempts, oldest first."""

    delivery: Delivery
    attempts: tuple[DeliveryAttempt, ...]


def check_event_types(events: Sequence[str]) -> frozenset[str]:
    """The event types an endpoint subscribes to (empty: all); unknown ones are refused."""
    if isinstance(events, str):
        raise InvalidArgumentError("events is a list of event types", field="events")
    unknown = sorted({e for e in events if e not in EVENT_TYPES}, key=str)
    if unknown:
        raise InvalidArgumentError(
            f"unknown event type(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(EVENT_TYPES))}",
            field="events",
        )
    return frozenset(events)


class WebhookService:
    """The webhook use cases every entry point calls."""

    def __init__(
        self,
        store: ConnectionStore,
        cipher: Cipher,
        *,
        clock: Clock = utc_now,
        allow_http_loopback: bool = False,
    ) -> None:
        self._store = store
        self._cipher = cipher
        self._clock = clock
        self._allow_http_loopback = allow_http_loopback

    async def register(self, url: str, events: Sequence[str] = ()) -> RegisteredEndpoint:
        """Add an endpoint; its secret is returned here and only here, and kept sealed."""
        try:
            checked = check_url(url, allow_http_loopback=self._allow_http_loopback)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(str(exc), field="url") from None
        types = check_event_types(events)
        endpoint_id, secret, now = uuid7(), new_secret(), self._clock()
        sealed = self._cipher.seal(secret.encode("ascii"), connection_id=endpoint_id)
        endpoint = WebhookEndpoint(endpoint_id, checked, types, sealed, True, None, now, now)
        await self._store.add_webhook_endpoint(endpoint)
        log.info("webhook endpoint %s added for %s", endpoint_id, checked)
        return RegisteredEndpoint(endpoint, secret)

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        return await self._store.webhook_endpoints()

    async def get(self, endpoint_id: UUID) -> WebhookEndpoint:
        endpoint = await self._store.webhook_endpoint(endpoint_id)
        if endpoint is None:
            raise WebhookNotFoundError(f"webhook endpoint {endpoint_id} not found")
        return endpoint

    async def remove(self, endpoint_id: UUID) -> None:
        """Remove an endpoint with its deliveries."""
        if not await self._store.delete_webhook_endpoint(endpoint_id):
            raise WebhookNotFoundError(f"webhook endpoint {endpoint_id} not found")
        log.info("webhook endpoint %s removed", endpoint_id)

    async def deliveries(self, endpoint_id: UUID, *, limit: int = 100) -> list[DeliveryRecord]:
        """An endpoint's deliveries, newest first, each with its attempts."""
        await self.get(endpoint_id)
        found = await self._store.webhook_deliveries(endpoint_id, limit=limit)
        attempts = await self._store.delivery_attempts([d.id for d in found])
        by_delivery: dict[UUID, list[DeliveryAttempt]] = {}
        for a in attempts:
            by_delivery.setdefault(a.delivery_id, []).append(a)
        return [DeliveryRecord(d, tuple(by_delivery.get(d.id, ()))) for d in found]

    async def replay(self, endpoint_id: UUID, delivery_id: UUID) -> Delivery:
        """Send a delivery again, now, from the start of the retry schedule, under the same
        webhook-id; a disabled endpoint is enabled again (the operator says it is back)."""
        await self.get(endpoint_id)
        if not await self._store.replay_delivery(endpoint_id, delivery_id):
            raise WebhookNotFoundError(
                f"delivery {delivery_id} of webhook endpoint {endpoint_id} not found"
            )
        await self._store.set_webhook_endpoint_enabled(endpoint_id, True)
        delivery = await self._store.webhook_delivery(delivery_id)
        assert delivery is not None
        return delivery


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How the dispatcher works: batch sizes, the lease, timeouts and the idle poll."""

    batch_size: int = 20
    fan_out_batch: int = 200
    lease: timedelta = timedelta(seconds=60)
    connect_timeout: float = 3.0
    timeout: float = 10.0  # the whole request, connect included
    idle_poll: float = 1.0

    def check(self) -> None:
        if self.lease.total_seconds() < self.timeout + 5:
            raise InvalidArgumentError(
                "the webhook delivery lease must outlast a request by at least 5 seconds"
            )


class WebhookDispatcher:
    """Fans events out to endpoints and delivers them (see the module docstring)."""

    def __init__(
        self,
        store: ConnectionStore,
        cipher: Cipher,
        *,
        policy: DeliveryPolicy | None = None,
        clock: Clock = utc_now,
        unix_time: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        owner: str | None = None,
    ) -> None:
        self.policy = policy or DeliveryPolicy()
        self.policy.check()
        self.store = store
        self._cipher = cipher
        self._clock = clock
        # The signature's timestamp: receivers check it against their own wall clock.
        self._unix_time = unix_time
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.owner = owner or default_owner()
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            cookies=no_cookies(),
            timeout=httpx.Timeout(self.policy.timeout, connect=self.policy.connect_timeout),
            headers={"user-agent": "linkvault-webhooks"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fan_out(self) -> int:
        """Fan every new event of the log out; how many events passed."""
        total = 0
        while moved := await self.store.fan_out_events(limit=self.policy.fan_out_batch):
            total += moved
        return total

    async def deliver_due(self) -> int:
        """Claim one batch of due deliveries and attempt each once; how many were attempted."""
        p = self.policy
        claims = await self.store.claim_deliveries(self.owner, lease=p.lease, limit=p.batch_size)
        results = await asyncio.gather(*(self._deliver(c) for c in claims), return_exceptions=True)
        for claim, result in zip(claims, results, strict=True):
            # The lease lapses and another attempt follows: log it and go on with the rest.
            if isinstance(result, Exception):
                log.warning("webhook delivery %s: %s", claim.delivery.id, result)
            elif isinstance(result, BaseException):
                raise result
        return len(claims)

    async def run_once(self) -> int:
        """One fan-out and one batch of deliveries; how much work there was."""
        return await self.fan_out() + await self.deliver_due()

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> None:
        """Work until `stop` is set (or, with `until_idle`, until nothing is due now)."""
        log.info("webhook dispatcher %s started", self.owner)
        while not stop.is_set():
            try:
                worked = await self.run_once()
            except LinkvaultError as exc:
                log.warning("webhook dispatcher: %s", exc)
                worked = 0
            if worked:
                continue
            if until_idle:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.policy.idle_poll)
        log.info("webhook dispatcher %s stopped", self.owner)

    async def _deliver(self, claim: DeliveryClaim) -> None:
        d, endpoint = claim.delivery, claim.endpoint
        code, error = await self._attempt(d, endpoint)
        if error is None:
            status, attempts, next_at, reason = DeliveryStatus.DELIVERED, d.attempts, None, None
        else:
            attempts = d.attempts + 1
            delay = retry_delay(attempts, self.rng)
            if delay is None:
                status, next_at = DeliveryStatus.FAILED, None
                reason = (
                    f"gave up delivering {d.event_type} (event {d.event_id}) after {attempts} "
                    f"failed attempts; the last: {error}"
                )
                log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)
            else:
                status, next_at, reason = DeliveryStatus.PENDING, self._clock() + delay, None
        result = DeliveryResult(status, attempts, next_at, code, error, reason)
        finished = await self.store.finish_delivery(d.id, self.owner, result)
        if not finished:
            log.info("webhook delivery %s: lease lost, another worker retries it", d.id)

    async def _attempt(
        self, d: Delivery, endpoint: WebhookEndpoint
    ) -> tuple[int | None, str | None]:
        """POST a delivery once: (status code, None) on a 2xx, else (code or None, error)."""
        try:
            secret = self._cipher.open(endpoint.sealed_secret, connection_id=endpoint.id)
        except DecryptionError:
            return None, "the endpoint's signing secret cannot be opened with the configured keys"
        body = d.payload.encode("utf-8")
        headers = signed_headers(
            secret.decode("ascii"), str(d.event_id), int(self._unix_time()), body
        )
        try:
            async with asyncio.timeout(self.policy.timeout):
                response = await self._client.post(endpoint.url, content=body, headers=headers)
        except TimeoutError:
            return None, f"timed out after {self.policy.timeout:g} s"
        except httpx.TimeoutException as exc:
            return None, f"timed out ({type(exc).__name__})"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        code = response.status_code
        if 200 <= code < 300:
            return code, None
        return code, f"HTTP {code}"
