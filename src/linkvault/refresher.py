"""The refresh worker: renews OAuth2 credentials before they expire, with any number of workers.

Work is claimed with a lease in the store (see DESIGN.md), so two workers never refresh the
same connection, and a crashed worker's leases lapse and are taken over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Protocol
from uuid import UUID, uuid4

from linkvault.credentials import OAuth2Tokens, open_credentials, seal_credentials
from linkvault.domain import Clock, ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import (
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
    StaleConnectionError,
    UnauthorizedClientError,
    UnknownProviderError,
)
from linkvault.oauth import TokenResponse, token_expiry
from linkvault.ports import Cipher
from linkvault.providers import AuthStyle, Provider, ProviderRegistry
from linkvault.stores import ConnectionStore
from linkvault.stores.common import Claim

log = logging.getLogger("linkvault.refresher")


class Outcome(StrEnum):
    """How one refresh attempt ended."""

    REFRESHED = "refreshed"
    EXPIRED = "expired"  # the provider refused the grant: the user must reconnect
    REVOKED = "revoked"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # 5xx, timeout, network
    MALFORMED = "malformed"
    GAVE_UP = "gave_up"  # transient failures exhausted the attempts
    LOST_RACE = "lost_race"  # the connection changed meanwhile; new tokens discarded
    UNREFRESHABLE = "unrefreshable"  # no refresh token, or a provider that cannot refresh
    CLIENT_REJECTED = "client_rejected"  # the provider refused linkvault's client credentials
    DECRYPT_FAILED = "decrypt_failed"
    ERROR = "error"


TRANSIENT = frozenset({Outcome.RATE_LIMITED, Outcome.UNAVAILABLE, Outcome.MALFORMED, Outcome.ERROR})


class TokenRefresher(Protocol):
    """The part of the token client the worker needs."""

    async def refresh(
        self, provider: Provider, *, refresh_token: str, scopes: Sequence[str] | None = None
    ) -> TokenResponse: ...


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh, how long a lease lasts, and how to back off."""

    horizon: timedelta = timedelta(minutes=10)
    lease: timedelta = timedelta(minutes=2)
    batch_size: int = 100
    concurrency: int = 16
    max_attempts: int = 8
    backoff_base: timedelta = timedelta(seconds=5)
    backoff_max: timedelta = timedelta(minutes=15)
    idle_poll: float = 5.0
    unrefreshable_retry: timedelta = timedelta(hours=6)

    def backoff(self, failures: int, rng: random.Random) -> timedelta:
        """Full-jitter exponential backoff after `failures` consecutive failures."""
        ceiling = min(
            self.backoff_max.total_seconds(),
            self.backoff_base.total_seconds() * 2 ** max(0, failures - 1),
        )
        return timedelta(seconds=ceiling / 2 + rng.uniform(0, ceiling / 2))


@dataclass(slots=True)
class RefreshMetrics:
    """Counters of one worker; gauges are refreshed from the store between batches."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    claimed: int = 0
    batches: int = 0
    due_unclaimed: int = 0
    oldest_overdue_seconds: float = 0.0

    @property
    def refreshed(self) -> int:
        return self.outcomes[Outcome.REFRESHED]

    def failed_by_class(self) -> dict[str, int]:
        return {o.value: n for o, n in self.outcomes.items() if o is not Outcome.REFRESHED}


def default_owner() -> str:
    """A lease owner name unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


class RefreshWorker:
    """Claims due connections in batches and refreshes them with bounded concurrency."""

    def __init__(
        self,
        store: ConnectionStore,
        registry: ProviderRegistry,
        tokens: TokenRefresher,
        cipher: Cipher,
        *,
        policy: RefreshPolicy | None = None,
        owner: str | None = None,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.tokens = tokens
        self.cipher = cipher
        self.policy = policy or RefreshPolicy()
        self.owner = owner or default_owner()
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.metrics = RefreshMetrics()

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> None:
        """Work until `stop` is set (or, with `until_idle`, until nothing is due)."""
        log.info("refresh worker %s started", self.owner)
        while not stop.is_set():
            try:
                done = await self.run_once(stop)
                await self.update_gauges()
            except DatabaseError as exc:
                log.warning("refresh worker: database unavailable, retrying: %s", exc)
                done = 0
            if done == 0:
                # Idle: nothing due that this worker could ever claim. Rows waiting out a
                # backoff keep it running; rows leased by another worker (a crashed one's
                # included) and rows out of attempts are left alone.
                if until_idle and not await self._work_remains():
                    break
                await _wait(stop, self.policy.idle_poll)
        log.info("refresh worker %s stopped", self.owner)

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Claim one batch and work it off; returns how many claims were handled."""
        p = self.policy
        claims = await self.store.claim_due(
            self.owner,
            horizon=p.horizon,
            lease=p.lease,
            limit=p.batch_size,
            max_failures=p.max_attempts,
        )
        if not claims:
            return 0
        self.metrics.claimed += len(claims)
        self.metrics.batches += 1
        queue: deque[Claim] = deque(claims)
        handled = 0

        async def lane() -> None:
            nonlocal handled
            # A lane takes its next claim only while no stop was asked for: what is in
            # flight finishes, what never started is handed back below.
            while queue and not (stop is not None and stop.is_set()):
                await self.refresh_one(queue.popleft())
                handled += 1

        await asyncio.gather(*(lane() for _ in range(min(p.concurrency, len(claims)))))
        if queue:
            await self.store.release_claims([c.connection.id for c in queue], self.owner)
            log.info("refresh worker %s released %d unstarted leases", self.owner, len(queue))
        return handled

    async def _work_remains(self) -> bool:
        backlog = await self.store.refresh_backlog(
            self.policy.horizon, max_failures=self.policy.max_attempts
        )
        return backlog.unclaimed > 0

    async def update_gauges(self) -> None:
        backlog = await self.store.refresh_backlog(self.policy.horizon)
        self.metrics.due_unclaimed = backlog.unclaimed
        overdue = 0.0
        if backlog.oldest_due is not None:
            overdue = max(0.0, (self.clock() - backlog.oldest_due).total_seconds())
        self.metrics.oldest_overdue_seconds = overdue

    async def refresh_one(self, claim: Claim) -> Outcome:
        """Refresh one claimed connection, record the outcome and close the lease."""
        started = time.perf_counter()
        conn = claim.connection
        try:
            outcome = await self._refresh(claim)
        except Exception as exc:  # one bad connection must not stop the worker
            log.exception(
                "refresh of connection %s failed unexpectedly (%s)", conn.id, type(exc).__name__
            )
            outcome = Outcome.ERROR
            await self._schedule_retry(claim, outcome, type(exc).__name__)
        self.metrics.outcomes[outcome] += 1
        duration_ms = (time.perf_counter() - started) * 1000
        log.info(
            "refresh connection_id=%s provider=%s outcome=%s duration_ms=%.1f",
            conn.id,
            conn.provider_slug,
            outcome.value,
            duration_ms,
            extra={
                "connection_id": str(conn.id),
                "provider": conn.provider_slug,
                "outcome": outcome.value,
                "duration_ms": round(duration_ms, 1),
            },
        )
        return outcome

    async def _refresh(self, claim: Claim) -> Outcome:
        conn = claim.connection
        try:
            provider = self.registry.by_id(conn.provider_id)
        except UnknownProviderError:
            return await self._unrefreshable(claim, "provider not in the registry")
        if provider.auth_style is not AuthStyle.OAUTH2 or not provider.refreshes:
            return await self._unrefreshable(claim, "the provider does not refresh tokens")
        assert conn.credentials is not None
        try:
            current = open_credentials(
                conn.credentials, connection_id=conn.id, cipher=self.cipher, expect=OAuth2Tokens
            )
        except DecryptionError as exc:
            await self._schedule_retry(claim, Outcome.DECRYPT_FAILED, str(exc))
            return Outcome.DECRYPT_FAILED
        if not current.refresh_token:
            return await self._give_up(claim, Outcome.EXPIRED, "no refresh token: reconnect")
        try:
            response = await self.tokens.refresh(provider, refresh_token=current.refresh_token)
        except InvalidClientError as exc:
            # Our own client credentials were refused: every connection of this provider
            # would fail alike, and none of their grants is at fault. Retry much later.
            log.error(  # noqa: TRY400 - a known condition, no traceback wanted
                "provider %s refused linkvault's client credentials; check "
                "LINKVAULT_PROVIDER_%s_CLIENT_ID/_SECRET: %s",
                provider.slug,
                provider.slug.upper().replace("-", "_"),
                _reason(exc),
            )
            await self._unrefreshable(claim, f"client rejected: {_reason(exc)}")
            return Outcome.CLIENT_REJECTED
        except (InvalidGrantError, UnauthorizedClientError) as exc:
            return await self._give_up(claim, Outcome.EXPIRED, _reason(exc))
        except RevokedError as exc:
            return await self._give_up(claim, Outcome.REVOKED, _reason(exc))
        except RateLimitedError as exc:
            return await self._transient(claim, Outcome.RATE_LIMITED, exc, exc.retry_after)
        except MalformedResponseError as exc:
            return await self._transient(claim, Outcome.MALFORMED, exc)
        except ProviderUnavailableError as exc:
            return await self._transient(claim, Outcome.UNAVAILABLE, exc)
        except OAuthError as exc:
            return await self._give_up(claim, Outcome.EXPIRED, _reason(exc))
        now = self.clock()
        renewed = OAuth2Tokens(
            access_token=response.access_token,
            # A provider that does not rotate sends no refresh token: the old one stays valid.
            refresh_token=response.refresh_token or current.refresh_token,
            token_type=response.token_type or current.token_type,
            scope=response.scope or current.scope,
            expires_at=token_expiry(response, provider, now),
        )
        sealed = seal_credentials(renewed, connection_id=conn.id, cipher=self.cipher)

        def apply(c: ProviderConnection) -> None:
            c.update_credentials(sealed, now=now)

        if not await self._save_same_grant(conn, apply):
            await self.store.finish_claim(conn.id, self.owner, succeeded=True)
            return Outcome.LOST_RACE
        await self.store.finish_claim(conn.id, self.owner, succeeded=True)
        return Outcome.REFRESHED

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
        target = conn
        for _ in range(5):
            change(target)
            try:
                await self.store.save(target)
            except StaleConnectionError:
                fresh = await self.store.find_by_id(conn.id)
                if (
                    fresh is None
                    or fresh.status is not ConnectionStatus.ACTIVE
                    or fresh.credentials is None
                    or fresh.credentials.encrypted_data != started_from
                ):
                    log.info(
                        "refresh of connection %s lost to a concurrent change; "
                        "the new tokens are discarded",
                        conn.id,
                    )
                    return False
                target = fresh
            else:
                return True
        return False

    async def _give_up(self, claim: Claim, outcome: Outcome, reason: str) -> Outcome:
        now = self.clock()
        conn = claim.connection

        def apply(c: ProviderConnection) -> None:
            if outcome is Outcome.REVOKED:
                c.mark_revoked(reason, now=now)
            else:
                c.mark_expired(reason, now=now)

        saved = await self._save_same_grant(conn, apply)
        await self.store.finish_claim(conn.id, self.owner, succeeded=False, error=reason)
        return outcome if saved else Outcome.LOST_RACE

    async def _transient(
        self,
        claim: Claim,
        outcome: Outcome,
        exc: LinkvaultError,
        retry_after: float | None = None,
    ) -> Outcome:
        if claim.failures + 1 >= self.policy.max_attempts:
            attempts = claim.failures + 1
            reason = f"refresh kept failing ({attempts} attempts, last: {_reason(exc)}): reconnect"
            given_up = await self._give_up(claim, Outcome.EXPIRED, reason)
            return Outcome.GAVE_UP if given_up is Outcome.EXPIRED else given_up
        log.warning(
            "refresh of connection %s: %s, retrying later: %s",
            claim.connection.id,
            outcome.value,
            _reason(exc),
        )
        await self._schedule_retry(claim, outcome, _reason(exc), retry_after)
        return outcome

    async def _schedule_retry(
        self, claim: Claim, outcome: Outcome, error: str, retry_after: float | None = None
    ) -> None:
        wait = self.policy.backoff(claim.failures + 1, self.rng)
        if retry_after is not None:
            wait = max(wait, timedelta(seconds=min(retry_after, 86_400)))
        await self.store.finish_claim(
            claim.connection.id,
            self.owner,
            succeeded=False,
            next_attempt_at=self.clock() + wait,
            error=f"{outcome.value}: {error}"[:500],
        )

    async def _unrefreshable(self, claim: Claim, reason: str) -> Outcome:
        await self.store.finish_claim(
            claim.connection.id,
            self.owner,
            succeeded=False,
            next_attempt_at=self.clock() + self.policy.unrefreshable_retry,
            error=reason,
        )
        return Outcome.UNREFRESHABLE


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
