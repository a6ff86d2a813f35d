"""Reading and changing connections on request: the one path the API, the CLI and code share.

Plain arguments in, domain objects out, typed errors of `linkvault.errors` for everything a
caller can handle. Changes are saved with the version check; an unconditional change lost to
a concurrent writer is re-applied to a fresh copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID

from linkvault.credentials import CredentialPayload, open_credentials
from linkvault.domain import Clock, ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidTransitionError,
    NoCredentialsError,
    NotFoundError,
    NotRefreshableError,
    ProviderGoneError,
    RefreshInProgressError,
    StaleConnectionError,
    UnknownProviderError,
)
from linkvault.events import ConnectionEvent, EventType
from linkvault.ports import Cipher
from linkvault.providers import AuthStyle, Provider, ProviderRegistry
from linkvault.services.health import HealthReport, assess
from linkvault.services.refresh import Outcome, RefreshWorker
from linkvault.services.retry import STALE_ATTEMPTS, save_with_retry
from linkvault.stores import ConnectionStore
from linkvault.stores.common import DEFAULT_MAX_ATTEMPTS, ConnectionFilter, Page

__all__ = ["ConnectionPage", "ConnectionService", "Refreshed", "provider_of"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConnectionPage:
    """One page of a listing; `next_after` is the id to continue after, None on the last.

    `health` holds each listed connection's HealthReport, by id.
    """

    items: list[ProviderConnection]
    next_after: UUID | None
    health: dict[UUID, HealthReport]


@dataclass(frozen=True, slots=True)
class Refreshed:
    """How an immediate refresh ended, and the connection afterwards."""

    outcome: Outcome
    connection: ProviderConnection


def provider_of(registry: ProviderRegistry, conn: ProviderConnection) -> Provider:
    """The provider a connection was made with; ProviderGoneError when it is not configured."""
    try:
        return registry.by_id(conn.provider_id)
    except UnknownProviderError:
        raise ProviderGoneError(conn.provider_slug) from None


class ConnectionService:
    """Get, list, rename, disconnect, delete, reveal and refresh connections.

    `registry`, `cipher` and `worker` are needed only by the operations that use them
    (revealing credentials, refreshing now); the CLI's read-and-change commands pass none.
    `max_attempts` (the worker's policy's when a worker is given) is how many refresh
    failures in a row make a connection need its user.
    """

    def __init__(
        self,
        store: ConnectionStore,
        *,
        clock: Clock = utc_now,
        registry: ProviderRegistry | None = None,
        cipher: Cipher | None = None,
        worker: RefreshWorker | None = None,
        attempts: int = STALE_ATTEMPTS,
        max_attempts: int | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.registry = registry
        self.cipher = cipher
        self.worker = worker
        self.attempts = attempts
        if max_attempts is None:
            max_attempts = DEFAULT_MAX_ATTEMPTS if worker is None else worker.policy.max_attempts
        self.max_attempts = max_attempts

    async def get(self, connection_id: UUID) -> ProviderConnection:
        """The connection; NotFoundError when there is none."""
        conn = await self.store.find_by_id(connection_id)
        if conn is None:
            raise NotFoundError(connection_id)
        return conn

    async def list(
        self,
        *,
        user_id: UUID | None = None,
        provider_id: UUID | None = None,
        status: ConnectionStatus | None = None,
        expiring_within: int | None = None,
        needs_user_action: bool | None = None,
        after: UUID | None = None,
        limit: int = 100,
    ) -> ConnectionPage:
        """Connections in id order after `after`, filtered, with their health.

        `expiring_within` is in minutes; `needs_user_action` keeps (True) or leaves out
        (False) the connections only their user can fix.
        """
        expiring_before = (
            None if expiring_within is None else self.clock() + timedelta(minutes=expiring_within)
        )
        where = ConnectionFilter(
            user_id, provider_id, status, expiring_before, needs_user_action, self.max_attempts
        )
        rows = await self.store.list_connections(where, Page(after, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        health = await self.health_of(rows)
        return ConnectionPage(rows, rows[-1].id if more and rows else None, health)

    async def health_of(self, conns: Sequence[ProviderConnection]) -> dict[UUID, HealthReport]:
        """Each connection's health, by id, in one read of the store."""
        records = await self.store.connection_health([c.id for c in conns])
        return {
            c.id: assess(
                c,
                records.get(c.id),
                max_attempts=self.max_attempts,
                consent_expires_at=self._consent_ends(c),
            )
            for c in conns
        }

    def _consent_ends(self, conn: ProviderConnection) -> datetime | None:
        """When the provider ends this connection's consent by rule (None: never, unknown)."""
        if self.registry is None or conn.provider_slug not in self.registry:
            return None
        return self.registry.get(conn.provider_slug).consent_expires_at(conn.connected_at)

    async def health(self, conn: ProviderConnection) -> HealthReport:
        """One connection's health."""
        return (await self.health_of([conn]))[conn.id]

    async def rename(
        self, connection_id: UUID, alias: str | None, *, expected_version: int | None = None
    ) -> ProviderConnection:
        """Set or clear the alias; with `expected_version`, only on that version."""
        return await self.change(
            connection_id, lambda c: c.rename(alias, now=self.clock()), expected_version
        )

    async def disconnect(
        self, connection_id: UUID, *, expected_version: int | None = None
    ) -> ProviderConnection:
        """Soft delete: the record stays, the credentials are dropped."""
        return await self.change(
            connection_id, lambda c: c.mark_disconnected(now=self.clock()), expected_version
        )

    async def delete(self, connection_id: UUID) -> None:
        """Hard delete; NotFoundError when there is none."""
        await self.store.delete(connection_id)

    async def reveal_credentials(
        self, connection_id: UUID, *, revealed_to: str | None = None
    ) -> tuple[ProviderConnection, CredentialPayload]:
        """The connection and its decrypted credentials; NoCredentialsError when it holds none.

        With `revealed_to` (who asked: an API key's name, never a secret), a
        credentials.revealed event is logged before the credentials are handed out.
        """
        cipher = self._needs(self.cipher, "cipher")
        conn = await self.get(connection_id)
        if conn.credentials is None:
            raise NoCredentialsError(conn.status.value)
        payload = open_credentials(conn.credentials, connection_id=conn.id, cipher=cipher)
        if revealed_to is not None:
            event = ConnectionEvent(
                type=EventType.CREDENTIALS_REVEALED,
                connection_id=conn.id,
                user_id=conn.user_id,
                provider_slug=conn.provider_slug,
                occurred_at=self.clock(),
                from_status=conn.status.value,
                to_status=conn.status.value,
                data={
                    "api_key": revealed_to,
                    "credential_type": conn.credentials.credential_type.value,
                },
            )
            if not await self.store.append_events(conn.id, [event]):
                raise NotFoundError(connection_id)
        return conn, payload

    async def refresh_now(self, connection_id: UUID) -> Refreshed:
        """Refresh an active OAuth2 connection at once, through the worker's own path.

        The lease is taken first: its statement reads the row, so the happy path reads it
        once before and once after the refresh.
        """
        worker = self._needs(self.worker, "worker")
        claim = await self.store.claim_connection(
            connection_id, worker.owner, lease=worker.policy.lease
        )
        if claim is None:
            self._check_refreshable(await self.get(connection_id))
            raise RefreshInProgressError()
        try:
            self._check_refreshable(claim.connection)
        except BaseException:
            await self.store.release_claims([connection_id], worker.owner)
            raise
        outcome = await worker.refresh_one(claim)
        return Refreshed(outcome, await self.get(connection_id))

    async def check_database(self, *, seconds: float) -> None:
        """Return when the database answers; DatabaseError when it fails or is too slow."""
        try:
            async with asyncio.timeout(seconds):
                await self.store.schema_version()
        except TimeoutError:
            raise DatabaseUnavailableError("health check timed out") from None

    async def change(
        self,
        connection_id: UUID,
        apply: Callable[[ProviderConnection], None],
        expected_version: int | None = None,
    ) -> ProviderConnection:
        """Load, apply, save; without `expected_version`, retried on a fresh copy."""
        conn = await self.get(connection_id)
        if expected_version is not None and conn.version != expected_version:
            raise StaleConnectionError(conn.id, expected_version)
        attempts = 1 if expected_version is not None else self.attempts
        result = await save_with_retry(self.store, conn, apply, attempts=attempts)
        if result.connection is None:
            raise NotFoundError(connection_id)
        return result.connection

    def _check_refreshable(self, conn: ProviderConnection) -> None:
        if conn.status is not ConnectionStatus.ACTIVE:
            raise InvalidTransitionError(conn.status.value, None, "refresh")
        provider = provider_of(self._needs(self.registry, "registry"), conn)
        creds = conn.credentials
        if (
            provider.auth_style is not AuthStyle.OAUTH2
            or not provider.refreshes
            or creds is None
            or not creds.supports_refresh
        ):
            raise NotRefreshableError(provider.slug)

    @staticmethod
    def _needs(value: T | None, name: str) -> T:
        if value is None:
            raise ConfigurationError(f"this ConnectionService was built without a {name}")
        return value
