"""A current access token on request, refreshed first when it is too close to expiry.

The refresh goes through the refresh worker's own path and lease (`claim_connection`, then
`RefreshWorker.refresh_one`), so the guarantees are the worker's: one refresh at a time per
connection whoever asks, in any number of processes; a refresh token is never spent twice.
Callers in one process queue behind one lock per connection; callers in other processes
find the lease taken and wait for the row to carry a token that is good enough. Either way
the provider sees one refresh and every caller gets its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from linkvault.credentials import OAuth2Tokens, open_credentials
from linkvault.domain import Clock, ConnectionStatus, CredentialType, ProviderConnection, utc_now
from linkvault.errors import (
    DecryptionError,
    NeedsUserActionError,
    NoAccessTokenError,
    NotAcceptedError,
    NotFoundError,
    NotRefreshableError,
    ProviderGoneError,
    TokenUnavailableError,
    UnknownProviderError,
)
from linkvault.ports import Cipher
from linkvault.providers import ProviderRegistry
from linkvault.services.refresh import Outcome, RefreshWorker
from linkvault.stores import ConnectionStore

__all__ = ["DEFAULT_MIN_VALID", "MAX_MIN_VALID", "AccessToken", "AccessTokenService"]

DEFAULT_MIN_VALID = timedelta(seconds=60)
MAX_MIN_VALID = timedelta(days=1)

# After these, read the row again: it holds new tokens, or somebody else's change.
_READ_AGAIN = frozenset(
    {Outcome.REFRESHED, Outcome.LOST_RACE, Outcome.LEASE_LOST, Outcome.ANSWER_LOST}
)
_USER_OUTCOMES = frozenset({Outcome.EXPIRED, Outcome.REVOKED, Outcome.GAVE_UP})
# How many of its own refreshes one call may start (a lost answer is replayed once).
_OWN_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token to send to the provider, its type and when it expires (None: never)."""

    token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None

    def valid_for(self, span: timedelta, now: datetime) -> bool:
        """Whether the token is still good `span` from `now`."""
        return self.expires_at is None or self.expires_at - now >= span

    @property
    def authorization(self) -> str:
        """The Authorization header value; "bearer" from a provider is sent as "Bearer"."""
        kind = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        return f"{kind} {self.token}"


def check_min_valid(min_valid: timedelta) -> timedelta:
    """Validate how long a requested token must still be good for: 0 to one day."""
    if not isinstance(min_valid, timedelta) or not (timedelta(0) <= min_valid <= MAX_MIN_VALID):
        raise NotAcceptedError(
            f"min_valid must be between 0 and {int(MAX_MIN_VALID.total_seconds())} seconds",
            field="min_valid_seconds",
            reason="out of range",
        )
    return min_valid


class AccessTokenService:
    """Hand out current access tokens, refreshing through the worker when needed.

    `wait` bounds how long a caller waits for a refresh another process is running;
    `poll` is the first pause between looks at the row (doubling up to half a second).
    """

    def __init__(
        self,
        store: ConnectionStore,
        registry: ProviderRegistry,
        cipher: Cipher,
        worker: RefreshWorker,
        *,
        clock: Clock = utc_now,
        wait: float = 30.0,
        poll: float = 0.02,
    ) -> None:
        self.store = store
        self.registry = registry
        self.cipher = cipher
        self.worker = worker
        self.clock = clock
        self.wait = wait
        self.poll = poll
        self._flights: dict[UUID, tuple[asyncio.Lock, list[int]]] = {}

    async def access_token(
        self, connection_id: UUID, *, min_valid: timedelta = DEFAULT_MIN_VALID
    ) -> AccessToken:
        """An access token good for at least `min_valid`, refreshed first when needed.

        NeedsUserActionError when only a reconnect can give one; TokenUnavailableError when
        the provider is failing or another refresh outlasts `wait`; NotAcceptedError when the
        provider's new token is itself shorter-lived than `min_valid`.
        """
        span = check_min_valid(min_valid)
        _, current = await self._read(connection_id)
        if current.valid_for(span, self.clock()):
            return current
        return await self._renewed(connection_id, lambda t, now: t.valid_for(span, now), span)

    async def after_rejection(self, connection_id: UUID, rejected: AccessToken) -> AccessToken:
        """The provider refused `rejected` (a 401): the current token, refreshed once if the
        stored one is still `rejected`. Callers retry their request once with the result."""

        def replaced(token: AccessToken, now: datetime) -> bool:
            return token.token != rejected.token and token.valid_for(timedelta(0), now)

        return await self._renewed(connection_id, replaced, None)

    # --- the slow path ----------------------------------------------------------------

    async def _renewed(
        self,
        connection_id: UUID,
        good: Callable[[AccessToken, datetime], bool],
        span: timedelta | None,
    ) -> AccessToken:
        async with self._single_flight(connection_id):
            deadline = time.monotonic() + self.wait
            pause, attempts, refreshed = self.poll, 0, False
            while True:
                conn, current = await self._read(connection_id)
                now = self.clock()
                if good(current, now):
                    return current
                if refreshed:
                    raise self._too_short(current, span)
                self._check_renewable(conn, current, now)
                await self._check_backoff(connection_id, now)
                policy = self.worker.policy
                claim = await self.store.claim_connection(
                    connection_id, self.worker.owner, lease=policy.lease
                )
                if claim is None:  # another process is refreshing it: wait for its result
                    if time.monotonic() + pause > deadline:
                        raise TokenUnavailableError(
                            "another refresh of this connection is still running",
                            retry_after=1,
                        )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.5)
                    continue
                if claim.connection.version != conn.version:
                    # Another process refreshed (or changed) it between our read and our
                    # claim: look at what it left before spending its refresh token again.
                    await self.store.release_claims([connection_id], self.worker.owner)
                    continue
                outcome = await self.worker.refresh_one(claim)
                attempts += 1
                if outcome not in _READ_AGAIN:
                    raise await self._failure(connection_id, outcome)
                if attempts >= _OWN_ATTEMPTS and outcome is not Outcome.REFRESHED:
                    raise TokenUnavailableError("the refresh did not complete", retry_after=1)
                refreshed = outcome is Outcome.REFRESHED

    @contextlib.asynccontextmanager
    async def _single_flight(self, connection_id: UUID) -> AsyncIterator[None]:
        lock, users = self._flights.get(connection_id) or (asyncio.Lock(), [0])
        self._flights[connection_id] = (lock, users)
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._flights[connection_id]

    async def _read(self, connection_id: UUID) -> tuple[ProviderConnection, AccessToken]:
        conn = await self.store.find_by_id(connection_id)
        if conn is None:
            raise NotFoundError(connection_id)
        if conn.status is not ConnectionStatus.ACTIVE:
            reason = conn.status_reason or f"the connection is {conn.status.value}"
            raise NeedsUserActionError(conn.status.value, reason)
        creds = conn.credentials
        if creds is None or creds.credential_type is not CredentialType.OAUTH2:
            kind = "none" if creds is None else creds.credential_type.value
            raise NoAccessTokenError(kind)
        tokens = open_credentials(
            creds, connection_id=conn.id, cipher=self.cipher, expect=OAuth2Tokens
        )
        return conn, AccessToken(tokens.access_token, tokens.token_type, tokens.expires_at)

    def _check_renewable(
        self, conn: ProviderConnection, current: AccessToken, now: datetime
    ) -> None:
        """Refuse to start a refresh that cannot succeed: no refresh token, or a provider
        that does not refresh. The worker would end such a connection; a caller asking for
        a longer-lived token must not."""
        try:
            provider = self.registry.by_id(conn.provider_id)
        except UnknownProviderError:
            raise ProviderGoneError(conn.provider_slug) from None
        assert conn.credentials is not None
        if provider.refreshes and conn.credentials.supports_refresh:
            return
        if current.valid_for(timedelta(0), now):
            raise NeedsUserActionError(
                ConnectionStatus.ACTIVE.value,
                f"the access token expires at {_when(current.expires_at)} and cannot be "
                "refreshed: reconnect for a longer-lived one",
            )
        raise NotRefreshableError(provider.slug)

    async def _check_backoff(self, connection_id: UUID, now: datetime) -> None:
        """Honour the worker's backoff: a failing connection is not retried early on demand."""
        record = (await self.store.connection_health([connection_id])).get(connection_id)
        if record is None or not record.refresh_failures:
            return
        if record.refresh_failures >= self.worker.policy.max_attempts:
            raise NeedsUserActionError(
                ConnectionStatus.ACTIVE.value,
                f"refresh failed {record.refresh_failures} times in a row: reconnect",
            )
        if record.next_refresh_at is not None and record.next_refresh_at > now:
            wait = (record.next_refresh_at - now).total_seconds()
            raise TokenUnavailableError(
                f"refresh is failing ({record.last_refresh_error or 'unknown'}); "
                "the next attempt is scheduled",
                retry_after=wait,
            )

    async def _failure(self, connection_id: UUID, outcome: Outcome) -> Exception:
        """The error a refresh that ended with `outcome` gives the caller."""
        conn = await self.store.find_by_id(connection_id)
        if conn is None:
            return NotFoundError(connection_id)
        if outcome in _USER_OUTCOMES or conn.status is not ConnectionStatus.ACTIVE:
            reason = conn.status_reason or f"the refresh ended {outcome.value}"
            return NeedsUserActionError(conn.status.value, reason)
        if outcome is Outcome.DECRYPT_FAILED:
            return DecryptionError("the stored credentials do not open with the configured keys")
        if outcome is Outcome.UNREFRESHABLE:
            return NotRefreshableError(conn.provider_slug)
        record = (await self.store.connection_health([connection_id])).get(connection_id)
        retry_after = 5.0
        if record is not None and record.next_refresh_at is not None:
            retry_after = max(1.0, (record.next_refresh_at - self.clock()).total_seconds())
        error = record.last_refresh_error if record is not None else None
        return TokenUnavailableError(error or outcome.value, retry_after=retry_after)

    @staticmethod
    def _too_short(current: AccessToken, span: timedelta | None) -> Exception:
        if span is None:  # the provider handed back the token it had refused
            return TokenUnavailableError("the provider issued no new access token", retry_after=5)
        return NotAcceptedError(
            f"the provider's new access token expires at {_when(current.expires_at)}, "
            f"sooner than the {int(span.total_seconds())} seconds asked for",
            field="min_valid_seconds",
            reason="longer than the provider's tokens live",
        )


def _when(at: datetime | None) -> str:
    return "never" if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")
