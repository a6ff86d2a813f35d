"""The refresh worker: renews OAuth2 credentials before they expire, with any number of workers.

A connection is leased to one worker for seconds at a time and the lease is renewed by a
heartbeat while its work is live. Before a request is sent, the statement that extends the
lease confirms it is still held and records the attempt (fencing, write-ahead), so an answer
lost to a crash or a timeout is known to the next worker, which replays at once, inside the
provider's reuse grace. See the README's "What the refresh worker can and cannot lose".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from uuid import UUID, uuid4

from linkvault.credentials import OAuth2Tokens, open_credentials, seal_credentials
from linkvault.domain import Clock, ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import (
    AnswerLostError,
    ConfigurationError,
    ConstraintViolationError,
    DatabaseError,
    DecryptionError,
    InvalidClientError,
    InvalidGrantError,
    LinkvaultError,
    MalformedResponseError,
    OAuthError,
    ProviderUnavailableError,
    RateLimitedError,
    RevokedError,
    SchemaError,
    StaleConnectionError,
    UnauthorizedClientError,
    UnknownProviderError,
)
from linkvault.events import ConnectionEvent, EventType
from linkvault.oauth import DEFAULT_CONNECT_TIMEOUT, TokenResponse, token_expiry
from linkvault.ports import Cipher, TokenClient
from linkvault.providers import AuthStyle, Provider, ProviderRegistry
from linkvault.services.fences import Fences
from linkvault.services.limits import AdaptiveLimit
from linkvault.services.retry import save_with_retry
from linkvault.stores import ConnectionStore
from linkvault.stores.common import (
    DEFAULT_MAX_ATTEMPTS,
    AttemptStart,
    Claim,
    ClaimRequest,
    ClaimResult,
    LostAttempt,
    Refreshed,
)

log = logging.getLogger("linkvault.refresher")


class Outcome(StrEnum):
    """How one refresh attempt ended."""

    REFRESHED = "refreshed"
    EXPIRED = "expired"  # the provider refused the grant: the user must reconnect
    REVOKED = "revoked"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # 5xx, or never sent (connection refused, connect timeout)
    ANSWER_LOST = "answer_lost"  # sent, no answer: replayed at once, not counted as a failure
    MALFORMED = "malformed"
    GAVE_UP = "gave_up"  # transient failures exhausted the attempts
    LOST_RACE = "lost_race"  # the connection changed meanwhile; new tokens discarded
    LEASE_LOST = "lease_lost"  # the lease was no longer this worker's: nothing was sent
    PAUSED = "paused"  # the provider's circuit is open: handed back, no attempt used
    RELEASED = "released"  # never started before the worker stopped: handed back as it was
    UNREFRESHABLE = "unrefreshable"  # no refresh token, or a provider that cannot refresh
    CLIENT_REJECTED = "client_rejected"  # the provider refused linkvault's client credentials
    DECRYPT_FAILED = "decrypt_failed"
    ERROR = "error"


TRANSIENT = frozenset({Outcome.RATE_LIMITED, Outcome.UNAVAILABLE, Outcome.MALFORMED, Outcome.ERROR})


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh, how leases are held, how to back off, when a provider's circuit opens."""

    horizon: timedelta = timedelta(minutes=10)
    lease: timedelta = timedelta(seconds=15)
    heartbeat: timedelta | None = None  # default: a quarter of the lease
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    batch_size: int = 100
    concurrency: int = 16
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: timedelta = timedelta(seconds=5)
    backoff_max: timedelta = timedelta(minutes=15)
    idle_poll: float = 1.0
    unrefreshable_retry: timedelta = timedelta(hours=6)
    # A token is due at this fraction of its own lifetime (jittered between the two), or
    # `horizon` before it expires, whichever comes later.
    refresh_at: tuple[float, float] = (0.75, 0.85)
    circuit_threshold: int = 5
    circuit_window: timedelta = timedelta(seconds=30)
    circuit_open: timedelta = timedelta(seconds=5)
    circuit_open_max: timedelta = timedelta(minutes=1)
    # How long new tokens are kept trying to be saved while the database fails: the provider
    # has already spent the old refresh token, so they are the grant now.
    save_retry: timedelta = timedelta(minutes=2)

    @property
    def heartbeat_every(self) -> timedelta:
        if self.heartbeat is not None:
            return self.heartbeat
        quarter: timedelta = self.lease / 4
        return quarter

    def check(self) -> None:
        """Refuse a configuration under which a lease could lapse while its request is live."""
        lease = self.lease.total_seconds()
        beat = self.heartbeat_every.total_seconds()
        if beat <= 0 or beat * 2 > lease:
            raise ConfigurationError(
                f"refresh lease of {lease:g}s cannot be renewed every {beat:g}s: the heartbeat "
                "must come at least twice per lease"
            )
        if self.connect_timeout + beat >= lease:
            raise ConfigurationError(
                f"refresh lease of {lease:g}s is too short: a token request may take "
                f"{self.connect_timeout:g}s to connect, plus {beat:g}s until the heartbeat "
                "renews the lease; make LINKVAULT_REFRESH_LEASE_SECONDS larger than "
                f"{self.connect_timeout + beat:g} or LINKVAULT_REFRESH_CONNECT_TIMEOUT_SECONDS "
                "smaller"
            )
        low, high = self.refresh_at
        if not 0 < low <= high < 1:
            raise ConfigurationError("refresh_at must be fractions with 0 < low <= high < 1")
        if self.concurrency < 1 or self.batch_size < 1 or self.max_attempts < 1:
            raise ConfigurationError("concurrency, batch size and attempts must be at least 1")

    def backoff(self, failures: int, rng: random.Random) -> timedelta:
        """Full-jitter exponential backoff after `failures` consecutive failures."""
        ceiling = min(
            self.backoff_max.total_seconds(),
            self.backoff_base.total_seconds() * 2 ** max(0, failures - 1),
        )
        return timedelta(seconds=ceiling / 2 + rng.uniform(0, ceiling / 2))

    def next_refresh(
        self, now: datetime, expires_at: datetime | None, rng: random.Random
    ) -> datetime | None:
        """When tokens issued `now` and expiring at `expires_at` are due for a refresh."""
        if expires_at is None or expires_at <= now:
            return None
        fraction = rng.uniform(*self.refresh_at)
        return max(now + (expires_at - now) * fraction, expires_at - self.horizon)

    def circuit_open_for(self, opened: int, retry_after: float | None) -> timedelta:
        """How long a circuit opened for the `opened`+1-th time in a row stays open."""
        base: timedelta = self.circuit_open * (2 ** min(opened, 16))
        wait = min(base, self.circuit_open_max)
        if retry_after is not None:
            wait = max(wait, timedelta(seconds=min(retry_after, 3600)))
        return wait


@dataclass(slots=True)
class RefreshMetrics:
    """Counters of one worker; gauges are refreshed from the store now and then."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    claimed: int = 0
    batches: int = 0
    due_unclaimed: int = 0
    oldest_overdue_seconds: float = 0.0
    circuits_opened: int = 0

    @property
    def refreshed(self) -> int:
        return self.outcomes[Outcome.REFRESHED]

    def failed_by_class(self) -> dict[str, int]:
        return {o.value: n for o, n in self.outcomes.items() if o is not Outcome.REFRESHED}


def default_owner() -> str:
    """A lease owner name unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


def token_fingerprint(refresh_token: str) -> str:
    """A short, one-way name of a refresh token, to tell attempts apart without keeping it."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()[:16]


class _AnswerUnsavedError(Exception):
    """The provider answered, and the database stayed unavailable past the save's retries."""


class _LeaseLostError(Exception):
    """The heartbeat could not keep the lease: the request in flight was abandoned."""


class _Lease:
    """Keeps one claim's lease alive while its work runs; tells when it could not."""

    def __init__(self, worker: RefreshWorker, connection_id: UUID) -> None:
        self._worker = worker
        self._id = connection_id
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> _Lease:
        self._task = asyncio.create_task(self._beat())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        w = self._worker
        every = w.policy.heartbeat_every.total_seconds()
        lease = w.policy.lease.total_seconds()
        confirmed_until = time.monotonic() + lease
        while True:
            await asyncio.sleep(every)
            try:
                held = await w.store.extend_lease(self._id, w.owner, lease=w.policy.lease)
            except DatabaseError as exc:
                log.warning("lease heartbeat for connection %s failed: %s", self._id, exc)
                held = time.monotonic() + every < confirmed_until
            else:
                if held:
                    confirmed_until = time.monotonic() + lease
            if not held:
                log.warning("lease on connection %s lost: abandoning its refresh", self._id)
                self.lost.set()
                return

    async def guard(self, work: asyncio.Future[TokenResponse]) -> TokenResponse:
        """Await `work`, cancelling it if the lease is lost first."""
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait([work, lost], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        except asyncio.CancelledError:
            work.cancel()  # cut (a shutdown grace ran out): the request must not outlive it
            raise
        finally:
            lost.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise _LeaseLostError
        return work.result()


CHORES_EVERY = 30.0  # seconds between two runs of the worker's chores


class RefreshWorker:
    """Claims due connections and refreshes them, a few at a time per provider."""

    def __init__(
        self,
        store: ConnectionStore,
        registry: ProviderRegistry,
        tokens: TokenClient,
        cipher: Cipher,
        *,
        policy: RefreshPolicy | None = None,
        owner: str | None = None,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        chores: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        """`chores`: upkeep the worker also runs, at start and every CHORES_EVERY seconds
        (the runtime passes failing lapsed authorizations)."""
        self.store = store
        self.chores = tuple(chores)
        self.registry = registry
        self.tokens = tokens
        self.cipher = cipher
        self.policy = policy or RefreshPolicy()
        self.policy.check()
        self.owner = owner or default_owner()
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.metrics = RefreshMetrics()
        self._limits: dict[str, AdaptiveLimit] = {}
        self._queued: Counter[str] = Counter()  # claims held here per provider, sent or waiting
        self._probe_after = 0.0  # when every provider held here is saturated: next look for others
        self._paused: dict[str, datetime] = {}
        self._paused_read = -1e9
        self._failing: set[str] = set()  # providers whose circuit may need closing
        self._stopping = False
        self._fences = Fences(self._fence, most=lambda: self.policy.batch_size)

    def _fence(self, attempts: Sequence[AttemptStart]) -> Awaitable[dict[UUID, datetime]]:
        """One fence statement for requests about to be sent (see services/fences.py)."""
        return self.store.begin_attempts(self.owner, lease=self.policy.lease, attempts=attempts)

    # --- the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> None:
        """Work until `stop` is set (or, with `until_idle`, until nothing is due anywhere)."""
        self.policy.check()
        log.info("refresh worker %s started", self.owner)
        p = self.policy
        live: set[asyncio.Task[Outcome | None]] = set()
        stopped = asyncio.create_task(stop.wait())
        gauges_at = 0.0
        chores_at = -CHORES_EVERY
        try:
            while not stop.is_set():
                if time.monotonic() - chores_at >= CHORES_EVERY:
                    chores_at = time.monotonic()
                    for chore in self.chores:
                        await self._quietly(chore())
                free = p.concurrency - len(live) + self._parked()
                claimed = 0
                if self._may_claim(free, live):
                    claimed = await self._claim_into(live, free)
                if time.monotonic() - gauges_at > 5.0:
                    gauges_at = time.monotonic()
                    await self._quietly(self.update_gauges())
                if not live and claimed == 0:
                    if until_idle and not await self._work_remains():
                        break
                    await _wait(stop, p.idle_poll)
                    continue
                timeout = None if claimed == free and free > 0 else p.idle_poll
                await asyncio.wait({*live, stopped}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            self._stopping = True
            stopped.cancel()
            if live:
                await asyncio.gather(*live, return_exceptions=True)
            self._stopping = False
        f = self._fences
        log.info(
            "refresh worker %s stopped; %d fences took %d statements",
            self.owner,
            f.fenced,
            f.statements,
        )

    def _may_claim(self, free: int, live: set[asyncio.Task[Outcome | None]]) -> bool:
        """Whether to claim now, with `free` slots (claims parked behind a provider's limit
        leave their slot to the others, so a slow provider never holds up the rest).

        Claim when a quarter of the slots are free (or nothing is live): fewer claim statements,
        and nothing leased that cannot start soon. When every provider held here already has
        its queue full, only other providers can be claimed: look for them once per poll.
        """
        if live and free < max(1, self.policy.concurrency // 4):
            return False
        held = set(self._queued)
        if held and held <= self._saturated():
            if time.monotonic() < self._probe_after:
                return False
            self._probe_after = time.monotonic() + self.policy.idle_poll
        return True

    def _headroom(self) -> int:
        """How many more claims the providers held here can take before their queues are full."""
        return sum(
            max(0, 2 * limit.limit - self._queued[slug])
            for slug, limit in self._limits.items()
            if slug in self._queued
        )

    async def _claim_into(self, live: set[asyncio.Task[Outcome | None]], free: int) -> int:
        p = self.policy
        size = min(p.batch_size, free)
        if self._queued:
            # Enough to fill the queues of the providers held here, and a quarter of the slots
            # for whichever others are due.
            size = min(size, max(self._headroom(), p.concurrency // 4, 1))
        try:
            claims = await self._claim(size)
        except DatabaseError as exc:
            log.warning("refresh worker: database unavailable, retrying: %s", exc)
            return 0
        for claim in claims:
            slug = claim.connection.provider_slug
            self._queued[slug] += 1
            task = asyncio.create_task(self.refresh_one(claim))
            live.add(task)
            task.add_done_callback(live.discard)
            task.add_done_callback(functools.partial(self._dequeue, slug))
        return len(claims)

    def _dequeue(self, slug: str, _task: object) -> None:
        self._queued[slug] -= 1
        if self._queued[slug] <= 0:
            del self._queued[slug]

    def _parked(self) -> int:
        """Claims held here that wait for room under their provider's limit."""
        return sum(limit.waiting for limit in self._limits.values())

    def _saturated(self) -> set[str]:
        """Providers that already have twice as many claims here as their limit lets run.

        One limit's worth waiting keeps the pipe full; claiming more would only park leases
        behind a slow provider.
        """
        return {
            slug
            for slug, queued in self._queued.items()
            if slug in self._limits and queued >= 2 * self._limits[slug].limit
        }

    async def _claim(self, limit: int) -> list[Claim]:
        p = self.policy
        paused = sorted(await self._open_circuits() | self._saturated())
        request = ClaimRequest(p.horizon, p.lease, limit, p.max_attempts, paused)
        claims = await self.store.claim_due(self.owner, request)
        if claims:
            self.metrics.claimed += len(claims)
            self.metrics.batches += 1
        return claims

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Claim one batch and work it off; returns how many claims were handled."""
        claims = await self._claim(self.policy.batch_size)
        if not claims:
            return 0
        slots = asyncio.Semaphore(self.policy.concurrency)
        handed_back: list[UUID] = []

        async def one(claim: Claim) -> bool:
            async with slots:
                if stop is not None and stop.is_set():
                    handed_back.append(claim.connection.id)
                    return False
                await self.refresh_one(claim)
                return True

        done = await asyncio.gather(*(one(c) for c in claims))
        if handed_back:
            await self.store.release_claims(handed_back, self.owner)
        return sum(done)

    async def _work_remains(self) -> bool:
        backlog = await self.store.refresh_backlog(
            self.policy.horizon, max_failures=self.policy.max_attempts
        )
        return backlog.due > 0

    async def update_gauges(self) -> None:
        backlog = await self.store.refresh_backlog(self.policy.horizon)
        self.metrics.due_unclaimed = backlog.unclaimed
        overdue = 0.0
        if backlog.oldest_due is not None:
            overdue = max(0.0, (self.clock() - backlog.oldest_due).total_seconds())
        self.metrics.oldest_overdue_seconds = overdue

    @staticmethod
    async def _quietly(work: asyncio.Future[None] | asyncio.Task[None] | object) -> None:
        try:
            await work  # type: ignore[misc]
        except DatabaseError as exc:
            log.warning("refresh worker: database unavailable: %s", exc)

    # --- one connection ------------------------------------------------------------

    async def refresh_one(self, claim: Claim) -> Outcome:
        """Refresh one claimed connection, record the outcome and close the lease."""
        started = time.perf_counter()
        conn = claim.connection
        timing: dict[str, float] = {}
        try:
            with _Lease(self, conn.id) as lease:
                outcome = await self._refresh(claim, lease, timing)
        except _LeaseLostError:
            outcome = Outcome.LEASE_LOST
        except _AnswerUnsavedError as exc:
            # Nothing can be written now: leave the attempt on record, as a crashed worker
            # would, for the next claim to replay once the database is back.
            log.error(  # noqa: TRY400 - the database's error is in the line; no traceback
                "refresh of connection %s: the provider answered but the database stayed "
                "unavailable for %.0f s; the attempt stays on record for a replay (%s)",
                conn.id,
                self.policy.save_retry.total_seconds(),
                exc,
            )
            outcome = Outcome.ANSWER_LOST
        except Exception as exc:  # one bad connection must not stop the worker
            log.exception(
                "refresh of connection %s failed unexpectedly (%s)", conn.id, type(exc).__name__
            )
            outcome = Outcome.ERROR
            await self._quietly(self._settle(claim, outcome, _Then.RETRY, type(exc).__name__))
        self.metrics.outcomes[outcome] += 1
        duration_ms = (time.perf_counter() - started) * 1000
        request_ms = timing.get("request", 0.0) * 1000
        log.info(
            "refresh connection_id=%s provider=%s outcome=%s duration_ms=%.1f request_ms=%.1f",
            conn.id,
            conn.provider_slug,
            outcome.value,
            duration_ms,
            request_ms,
            extra={
                "connection_id": str(conn.id),
                "provider": conn.provider_slug,
                "outcome": outcome.value,
                "duration_ms": round(duration_ms, 1),
                "request_ms": round(request_ms, 1),
            },
        )
        return outcome

    async def _refresh(self, claim: Claim, lease: _Lease, timing: dict[str, float]) -> Outcome:
        conn = claim.connection
        try:
            provider = self.registry.by_id(conn.provider_id)
        except UnknownProviderError:
            return await self._settle(
                claim, Outcome.UNREFRESHABLE, _Then.PARK, "provider not in the registry"
            )
        if provider.auth_style is not AuthStyle.OAUTH2 or not provider.refreshes:
            return await self._settle(
                claim, Outcome.UNREFRESHABLE, _Then.PARK, "the provider does not refresh tokens"
            )
        assert conn.credentials is not None
        try:
            current = open_credentials(
                conn.credentials, connection_id=conn.id, cipher=self.cipher, expect=OAuth2Tokens
            )
        except DecryptionError as exc:
            return await self._settle(claim, Outcome.DECRYPT_FAILED, _Then.RETRY, str(exc))
        if not current.refresh_token:
            return await self._settle(
                claim, Outcome.EXPIRED, _Then.END, "no refresh token: reconnect"
            )
        limit = self._limit(provider.slug)
        async with limit.slot():
            if self._stopping or provider.slug in await self._open_circuits():
                # Never started: hand it back as it was.
                await self.store.release_claims([conn.id], self.owner)
                return Outcome.RELEASED if self._stopping else Outcome.PAUSED
            fingerprint = token_fingerprint(current.refresh_token)
            # The fence, in a statement shared with the requests starting at the same time.
            first_sent = await self._fences.begin(
                AttemptStart(conn.id, fingerprint, conn.credentials.encrypted_data)
            )
            if first_sent is None:
                log.info("refresh of connection %s: lease or grant gone, nothing sent", conn.id)
                return Outcome.LEASE_LOST
            sent = time.monotonic()
            request = asyncio.ensure_future(
                self.tokens.refresh(provider, refresh_token=current.refresh_token)
            )
            try:
                response = await lease.guard(request)
            except OAuthError as exc:
                timing["request"] = time.monotonic() - sent
                limit.record(timing["request"], ok=not _provider_failure(exc))
                return await self._failed(claim, provider, exc, replay=_replay(claim, fingerprint))
            timing["request"] = time.monotonic() - sent
            limit.record(timing["request"], ok=True)
        return await self._succeeded(claim, provider, current, response)

    async def _succeeded(
        self, claim: Claim, provider: Provider, current: OAuth2Tokens, response: TokenResponse
    ) -> Outcome:
        conn = claim.connection
        assert conn.credentials is not None
        now = self.clock()
        renewed = OAuth2Tokens.from_response(
            response, expires_at=token_expiry(response, provider, now), previous=current
        )
        sealed = seal_credentials(renewed, connection_id=conn.id, cipher=self.cipher)
        recovered = (
            _event(claim, EventType.RECOVERED, now, None, after_attempts=claim.failures)
            if claim.failures
            else None
        )
        refreshed = Refreshed(
            started_from=conn.credentials.encrypted_data,
            credentials=sealed,
            next_refresh_at=self.policy.next_refresh(now, sealed.expires_at, self.rng),
            events=() if recovered is None else (recovered,),
        )
        saved = await self._save_answer(conn.id, refreshed)
        if provider.slug in self._failing:
            self._failing.discard(provider.slug)
            if await self.store.close_circuit(provider.slug):
                log.info("provider %s answers again: its circuit is closed", provider.slug)
            self._paused.pop(provider.slug, None)
        if not saved:
            # Disconnected, reconnected or deleted meanwhile: that change wins.
            log.info(
                "refresh of connection %s lost to a concurrent change; "
                "the new tokens are discarded",
                conn.id,
            )
            return await self._settle(claim, Outcome.LOST_RACE, _Then.DONE, "")
        return Outcome.REFRESHED

    async def _save_answer(self, connection_id: UUID, refreshed: Refreshed) -> bool:
        """Save the provider's answer, again and again while the database fails.

        Safe to repeat: the save applies only while the row still holds the grant the refresh
        started from. Past `policy.save_retry`, _AnswerUnsavedError: the attempt stays on
        record as a worker's that stopped, and the next claim replays it.
        """
        deadline = time.monotonic() + self.policy.save_retry.total_seconds()
        pause = 0.1
        while True:
            try:
                return await self.store.complete_refresh(connection_id, self.owner, refreshed)
            except (ConstraintViolationError, SchemaError):
                raise
            except DatabaseError as exc:
                if time.monotonic() + pause > deadline:
                    raise _AnswerUnsavedError(str(exc)) from exc
                log.warning(
                    "refresh of connection %s: the new tokens are not saved yet (%s); "
                    "trying again in %.1f s",
                    connection_id,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _failed(
        self, claim: Claim, provider: Provider, exc: OAuthError, *, replay: LostAttempt | None
    ) -> Outcome:
        if _provider_failure(exc):
            await self._count_provider_failure(provider, exc)
        outcome, then = _on_failure(exc)
        reason = _reason(exc)
        if then is _Then.REPLAY:
            log.warning(
                "refresh of connection %s: request sent, answer lost (%s); replaying at once",
                claim.connection.id,
                getattr(exc, "how", "?"),
            )
            await self.store.record_lost(
                claim.connection.id, self.owner, how=getattr(exc, "how", "?"), error=reason
            )
            return outcome
        if then is _Then.PARK:
            # Our own client credentials were refused: every connection of this provider
            # would fail alike, and none of their grants is at fault. Retry much later.
            log.error(
                "provider %s refused linkvault's client credentials; check "
                "LINKVAULT_PROVIDER_%s_CLIENT_ID/_SECRET: %s",
                provider.slug,
                provider.slug.upper().replace("-", "_"),
                reason,
            )
            reason = f"client rejected: {reason}"
        elif replay is not None and isinstance(exc, InvalidGrantError | UnauthorizedClientError):
            reason = _lost_reason(replay, provider, self.clock())
            log.warning("refresh of connection %s: %s", claim.connection.id, reason)
        retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
        return await self._settle(claim, outcome, then, reason, retry_after=retry_after)

    # --- circuits and limits ----------------------------------------------------------

    def _limit(self, slug: str) -> AdaptiveLimit:
        limit = self._limits.get(slug)
        if limit is None:
            c = self.policy.concurrency
            limit = self._limits[slug] = AdaptiveLimit(initial=1, maximum=c)
        return limit

    async def _open_circuits(self) -> set[str]:
        """Providers paused now, read from the store at most once a second."""
        if time.monotonic() - self._paused_read >= 1.0:
            try:
                self._paused = await self.store.open_circuits()
                self._paused_read = time.monotonic()
            except DatabaseError as exc:
                log.warning("refresh worker: cannot read provider circuits: %s", exc)
            for slug in self._paused:
                self._failing.add(slug)
        now = self.clock()
        return {slug for slug, until in self._paused.items() if until > now}

    async def _count_provider_failure(self, provider: Provider, exc: OAuthError) -> None:
        p = self.policy
        self._failing.add(provider.slug)
        count = await self.store.circuit_failure(
            provider.slug, window=p.circuit_window, error=_reason(exc)
        )
        retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
        # A closed circuit opens after `threshold` failures in a row; a circuit that was open
        # (now half-open) re-opens on its first failed probe; a Retry-After opens it at once.
        if count.failures < p.circuit_threshold and count.opened == 0 and retry_after is None:
            return
        until = self.clock() + p.circuit_open_for(count.opened, retry_after)
        if await self.store.open_circuit(provider.slug, until=until, opened=count.opened):
            self.metrics.circuits_opened += 1
            self._paused[provider.slug] = until
            log.warning(
                "provider %s keeps failing (%s): refreshes to it pause until %s",
                provider.slug,
                _reason(exc),
                until.isoformat(timespec="seconds"),
            )

    # --- recording outcomes ---------------------------------------------------------

    async def _save_same_grant(
        self, conn: ProviderConnection, change: Callable[[ProviderConnection], None]
    ) -> bool:
        """Apply `change` and save; after a concurrent write, re-apply only to the same grant.

        The change is re-applied while the stored connection is still ACTIVE with the very
        credentials this refresh started from (a rename or a sync may have happened). A
        disconnect, delete or reconnect in between wins: the change is dropped.
        """
        assert conn.credentials is not None
        started_from = conn.credentials.encrypted_data

        def same_grant(fresh: ProviderConnection) -> bool:
            return (
                fresh.status is ConnectionStatus.ACTIVE
                and fresh.credentials is not None
                and fresh.credentials.encrypted_data == started_from
            )

        try:
            result = await save_with_retry(
                self.store, conn, change, still_applies=same_grant, attempts=5
            )
        except StaleConnectionError:
            return False
        if not result.saved:
            log.info(
                "refresh of connection %s lost to a concurrent change; "
                "the new tokens are discarded",
                conn.id,
            )
        return result.saved

    async def _settle(
        self,
        claim: Claim,
        outcome: Outcome,
        then: _Then,
        reason: str,
        *,
        retry_after: float | None = None,
    ) -> Outcome:
        """Record how a refresh that brought no new tokens ended, and close its lease.

        The one place a lease is closed with `finish_claim`: `then` says what comes next.
        """
        conn = claim.connection
        now = self.clock()
        succeeded = False
        next_attempt_at: datetime | None = None
        error: str | None = reason
        if then is _Then.BACKOFF and claim.failures + 1 >= self.policy.max_attempts:
            attempts = claim.failures + 1
            reason = f"refresh kept failing ({attempts} attempts, last: {reason}): reconnect"
            outcome, then, error = Outcome.GAVE_UP, _Then.END, reason
        if then is _Then.END:
            marked = await self._save_same_grant(conn, _marker(outcome, reason, now))
            outcome = outcome if marked else Outcome.LOST_RACE
        elif then is _Then.PARK:
            next_attempt_at = now + self.policy.unrefreshable_retry
            error = f"{outcome.value}: {reason}"[:500]
        elif then is _Then.DONE:
            succeeded, error = True, None
        else:  # BACKOFF or RETRY: try again later, one more failure on record
            if then is _Then.BACKOFF:
                log.warning(
                    "refresh of connection %s: %s, retrying later: %s",
                    conn.id,
                    outcome.value,
                    reason,
                )
            wait = self.policy.backoff(claim.failures + 1, self.rng)
            if retry_after is not None:
                wait = max(wait, timedelta(seconds=min(retry_after, 86_400)))
            next_attempt_at = now + wait
            error = f"{outcome.value}: {reason}"[:500]
        events = _failure_events(claim, outcome, then, now, next_attempt_at, error)
        result = ClaimResult(succeeded, next_attempt_at, error, events)
        await self.store.finish_claim(conn.id, self.owner, result)
        return outcome


def _failure_events(
    claim: Claim,
    outcome: Outcome,
    then: _Then,
    now: datetime,
    next_attempt_at: datetime | None,
    error: str | None,
) -> tuple[ConnectionEvent, ...]:
    """What a failed refresh that keeps the connection tells the application.

    A transient failure: connection.refresh_failed, every attempt. One only an operator can
    fix (credentials that do not open, a client the provider rejects): needs_attention, once.
    """
    if then is _Then.BACKOFF:
        data = {"attempt": claim.failures + 1, "next_attempt_at": next_attempt_at}
        return (_event(claim, EventType.REFRESH_FAILED, now, error, outcome=outcome.value, **data),)
    if then in (_Then.RETRY, _Then.PARK) and claim.failures == 0:
        return (_event(claim, EventType.NEEDS_ATTENTION, now, error, outcome=outcome.value),)
    return ()


def _event(
    claim: Claim, kind: EventType, now: datetime, reason: str | None, **data: object
) -> ConnectionEvent:
    """An event about a claimed connection whose status stays as it is."""
    c = claim.connection
    status = c.status.value
    return ConnectionEvent(
        type=kind,
        connection_id=c.id,
        user_id=c.user_id,
        provider_slug=c.provider_slug,
        occurred_at=now,
        from_status=status,
        to_status=status,
        reason=reason,
        data=data,
    )


class _Then(Enum):
    """What follows a refresh that brought no new tokens."""

    REPLAY = "replay"  # sent, answer lost: kept on record, replayed at once, no failure counted
    BACKOFF = "backoff"  # transient: retry with backoff; after max_attempts, give up
    RETRY = "retry"  # our side failed (decrypt, a bug): retry with backoff, never give up
    PARK = "park"  # nothing to do for now (no refresh at this provider): retry much later
    END = "end"  # the grant is gone (expired, revoked, out of attempts): the user reconnects
    DONE = "done"  # nothing to record (new tokens lost to a concurrent change)


# From the failure a refresh request raised to its outcome and what follows; the first class
# that matches wins, so the more specific come first.
_FAILURES: tuple[tuple[type[LinkvaultError], Outcome, _Then], ...] = (
    (AnswerLostError, Outcome.ANSWER_LOST, _Then.REPLAY),
    (InvalidClientError, Outcome.CLIENT_REJECTED, _Then.PARK),
    (InvalidGrantError, Outcome.EXPIRED, _Then.END),
    (UnauthorizedClientError, Outcome.EXPIRED, _Then.END),
    (RevokedError, Outcome.REVOKED, _Then.END),
    (RateLimitedError, Outcome.RATE_LIMITED, _Then.BACKOFF),
    (MalformedResponseError, Outcome.MALFORMED, _Then.BACKOFF),
    (ProviderUnavailableError, Outcome.UNAVAILABLE, _Then.BACKOFF),
    (OAuthError, Outcome.EXPIRED, _Then.END),
)


def _on_failure(exc: OAuthError) -> tuple[Outcome, _Then]:
    for kind, outcome, then in _FAILURES:
        if isinstance(exc, kind):
            return outcome, then
    return Outcome.EXPIRED, _Then.END  # pragma: no cover - OAuthError is the last row


def _marker(outcome: Outcome, reason: str, now: datetime) -> Callable[[ProviderConnection], None]:
    """The status change a grant that is gone makes on its connection."""

    def mark(conn: ProviderConnection) -> None:
        if outcome is Outcome.REVOKED:
            conn.mark_revoked(reason, now=now)
        else:
            conn.mark_expired(reason, now=now)

    return mark


def _provider_failure(exc: OAuthError) -> bool:
    """Whether a failure speaks of the provider's health rather than of one grant."""
    return isinstance(exc, ProviderUnavailableError | RateLimitedError)


def _replay(claim: Claim, fingerprint: str) -> LostAttempt | None:
    """The lost attempt this request replayed, when it spent the same refresh token."""
    lost = claim.lost
    return lost if lost is not None and lost.fingerprint == fingerprint else None


def _lost_reason(lost: LostAttempt, provider: Provider, now: datetime) -> str:
    """Why a replay was refused, in words an operator and a user can act on."""
    how = "a worker stopped" if lost.how is None else f"of a {lost.how}"
    grace = provider.refresh_token_reuse_grace
    if grace <= timedelta(0):
        allowed = "the provider allows no replay"
    else:
        late = (now - lost.at).total_seconds()
        allowed = f"the replay came {late:.0f}s later, past the provider's {grace.seconds}s grace"
    return f"refresh answer lost when {how}; {allowed}: reconnect".replace("when of", "because of")


def _reason(exc: BaseException) -> str:
    # OAuthError messages are built to carry no token, code or secret.
    return str(exc)[:500]


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return


async def refresh_now(worker: RefreshWorker, connection_id: UUID) -> Outcome | None:
    """Refresh one connection at once; None when it is absent, not active or leased elsewhere."""
    claim = await worker.store.claim_connection(
        connection_id, worker.owner, lease=worker.policy.lease
    )
    if claim is None:
        return None
    return await worker.refresh_one(claim)
