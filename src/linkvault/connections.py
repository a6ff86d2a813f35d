"""Changing connections on request: renames and disconnects, with optimistic concurrency."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from linkvault.domain import Clock, ProviderConnection, utc_now
from linkvault.errors import NotFoundError, StaleConnectionError
from linkvault.stores import ConnectionStore

# Every lost race means another writer won, so a change that is re-applied to a fresh copy
# gets through after at most as many attempts as there are concurrent writers.
STALE_ATTEMPTS = 32


class ConnectionService:
    """Applies a change to a connection; unconditional changes are retried on a fresh copy.

    With `expected_version`, the change applies only to that version: otherwise (or when the
    connection changes before the save) StaleConnectionError, and nothing is written.
    """

    def __init__(
        self, store: ConnectionStore, *, clock: Clock = utc_now, attempts: int = STALE_ATTEMPTS
    ) -> None:
        self.store = store
        self.clock = clock
        self.attempts = attempts

    async def get(self, connection_id: UUID) -> ProviderConnection:
        """The connection; NotFoundError when there is none."""
        conn = await self.store.find_by_id(connection_id)
        if conn is None:
            raise NotFoundError(connection_id)
        return conn

    async def rename(
        self, connection_id: UUID, alias: str | None, *, expected_version: int | None = None
    ) -> ProviderConnection:
        """Set or clear the alias."""
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

    async def change(
        self,
        connection_id: UUID,
        apply: Callable[[ProviderConnection], None],
        expected_version: int | None = None,
    ) -> ProviderConnection:
        """Load, apply, save: the one retry-on-stale loop for changes made on request."""
        for attempt in range(1, self.attempts + 1):
            conn = await self.get(connection_id)
            if expected_version is not None and conn.version != expected_version:
                raise StaleConnectionError(conn.id, expected_version)
            apply(conn)
            try:
                await self.store.save(conn)
            except StaleConnectionError:
                if expected_version is not None or attempt == self.attempts:
                    raise
                continue
            return conn
        raise AssertionError("unreachable")  # pragma: no cover
