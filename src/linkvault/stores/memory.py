"""In-memory store, shipped for users' unit tests; it passes the same conformance suite."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Self
from uuid import UUID

from linkvault.domain import Clock, ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import NotFoundError, StaleConnectionError
from linkvault.stores.common import ConnectionFilter, check_limit, check_minutes


def _copy(connection: ProviderConnection) -> ProviderConnection:
    # Credentials are frozen, every other field immutable: a shallow copy is a full copy.
    return dataclasses.replace(connection)


def _ordered(rows: list[ProviderConnection]) -> list[ProviderConnection]:
    return sorted(rows, key=lambda c: (c.created_at, c.id))


class InMemoryConnectionRepository:
    """The repository port in a dict: same semantics as the database stores, no I/O."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._rows: dict[UUID, ProviderConnection] = {}
        self._clock = clock
        self._lock = asyncio.Lock()
        self._in_transaction = False

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryConnectionRepository]:
        """A unit of work: changes through the yielded repository apply together or not at all."""
        if self._in_transaction:
            snapshot = dict(self._rows)
            try:
                yield self
            except BaseException:
                self._rows = snapshot
                raise
            return
        async with self._lock:
            staged = InMemoryConnectionRepository(clock=self._clock)
            staged._rows = {k: _copy(v) for k, v in self._rows.items()}
            staged._in_transaction = True
            yield staged
            self._rows = staged._rows

    async def _read(self, pick: Callable[[ProviderConnection], bool]) -> list[ProviderConnection]:
        if not self._in_transaction:
            async with self._lock:
                return _ordered([_copy(c) for c in self._rows.values() if pick(c)])
        return _ordered([_copy(c) for c in self._rows.values() if pick(c)])

    async def find_by_id(self, connection_id: UUID) -> ProviderConnection | None:
        found = await self._read(lambda c: c.id == connection_id)
        return found[0] if found else None

    async def find_by_user_id(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._read(lambda c: c.user_id == user_id)

    async def find_by_user_and_provider(
        self, user_id: UUID, provider_id: UUID
    ) -> list[ProviderConnection]:
        return await self._read(lambda c: c.user_id == user_id and c.provider_id == provider_id)

    async def find_active_by_user(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._read(
            lambda c: c.user_id == user_id and c.status is ConnectionStatus.ACTIVE
        )

    async def find_expiring_soon(self, minutes: int = 30) -> list[ProviderConnection]:
        horizon = self._clock() + timedelta(minutes=check_minutes(minutes))

        def due(c: ProviderConnection) -> bool:
            return (
                c.status is ConnectionStatus.ACTIVE
                and c.credentials is not None
                and c.credentials.expires_at is not None
                and c.credentials.expires_at <= horizon
            )

        rows = await self._read(due)
        return sorted(rows, key=lambda c: (c.credentials.expires_at, c.id))  # type: ignore[union-attr]

    async def save(self, connection: ProviderConnection) -> None:
        if self._in_transaction:
            self._save(connection)
            return
        async with self._lock:
            self._save(connection)

    def _save(self, connection: ProviderConnection) -> None:
        stored = self._rows.get(connection.id)
        expected = connection.version
        if (expected == 0 and stored is not None) or (
            expected > 0 and (stored is None or stored.version != expected)
        ):
            raise StaleConnectionError(connection.id, expected)
        copy = _copy(connection)
        copy.version = expected + 1
        self._rows[connection.id] = copy
        connection.version = expected + 1

    async def delete(self, connection_id: UUID) -> None:
        if self._in_transaction:
            self._delete(connection_id)
            return
        async with self._lock:
            self._delete(connection_id)

    def _delete(self, connection_id: UUID) -> None:
        if self._rows.pop(connection_id, None) is None:
            raise NotFoundError(connection_id)

    async def list_connections(
        self,
        where: ConnectionFilter | None = None,
        *,
        after: UUID | None = None,
        limit: int = 100,
    ) -> list[ProviderConnection]:
        """One page of connections in id order, after the cursor `after`."""
        f = where or ConnectionFilter()
        size = check_limit(limit)

        def pick(c: ProviderConnection) -> bool:
            expiry = c.credentials.expires_at if c.credentials else None
            return (
                (f.user_id is None or c.user_id == f.user_id)
                and (f.provider_id is None or c.provider_id == f.provider_id)
                and (f.status is None or c.status is f.status)
                and (
                    f.expiring_before is None
                    or (
                        c.status is ConnectionStatus.ACTIVE
                        and expiry is not None
                        and expiry <= f.expiring_before
                    )
                )
                and (after is None or c.id.bytes > after.bytes)
            )

        rows = await self._read(pick)
        return sorted(rows, key=lambda c: c.id.bytes)[:size]

    async def migrate(self) -> list[int]:
        return []

    async def schema_version(self) -> int:
        return 0

    async def check_schema(self) -> None:
        return None
