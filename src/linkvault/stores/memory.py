"""In-memory store, shipped for users' unit tests; it passes the same conformance suite."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self
from uuid import UUID

from linkvault.domain import Clock, ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import ConstraintViolationError, NotFoundError, StaleConnectionError
from linkvault.stores.common import (
    Claim,
    ConnectionFilter,
    PendingAuthorization,
    RefreshBacklog,
    check_limit,
    check_minutes,
    check_owner,
)


def _copy(connection: ProviderConnection) -> ProviderConnection:
    # Credentials are frozen, every other field immutable: a shallow copy is a full copy.
    return dataclasses.replace(connection)


@dataclasses.dataclass(slots=True)
class _Schedule:
    owner: str | None = None
    until: datetime | None = None
    failures: int = 0
    next_at: datetime | None = None
    error: str | None = None


def _due_expiry(c: ProviderConnection, horizon: datetime) -> datetime | None:
    """The expiry of an ACTIVE refreshable connection due by `horizon`, else None."""
    creds = c.credentials
    if (
        c.status is ConnectionStatus.ACTIVE
        and creds is not None
        and creds.supports_refresh
        and creds.expires_at is not None
        and creds.expires_at <= horizon
    ):
        return creds.expires_at
    return None


def _ordered(rows: list[ProviderConnection]) -> list[ProviderConnection]:
    return sorted(rows, key=lambda c: (c.created_at, c.id))


class InMemoryConnectionRepository:
    """The repository port in a dict: same semantics as the database stores, no I/O."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._rows: dict[UUID, ProviderConnection] = {}
        self._schedules: dict[UUID, _Schedule] = {}
        self._states: dict[bytes, PendingAuthorization] = {}
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
            schedules = {k: dataclasses.replace(v) for k, v in self._schedules.items()}
            states = dict(self._states)
            try:
                yield self
            except BaseException:
                self._rows = snapshot
                self._schedules = schedules
                self._states = states
                raise
            return
        async with self._lock:
            staged = InMemoryConnectionRepository(clock=self._clock)
            staged._rows = {k: _copy(v) for k, v in self._rows.items()}
            staged._schedules = {k: dataclasses.replace(v) for k, v in self._schedules.items()}
            staged._states = dict(self._states)
            staged._in_transaction = True
            yield staged
            self._rows = staged._rows
            self._schedules = staged._schedules
            self._states = staged._states

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
        old_blob = stored.credentials.encrypted_data if stored and stored.credentials else None
        new_blob = connection.credentials.encrypted_data if connection.credentials else None
        schedule = self._schedules.setdefault(connection.id, _Schedule())
        if old_blob != new_blob:
            schedule.failures, schedule.next_at = 0, None
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
        self._schedules.pop(connection_id, None)
        for key in [k for k, v in self._states.items() if v.connection_id == connection_id]:
            del self._states[key]

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

    async def claim_due(
        self,
        owner: str,
        *,
        horizon: timedelta,
        lease: timedelta,
        limit: int,
        max_failures: int,
    ) -> list[Claim]:
        """Lease up to `limit` refreshable ACTIVE connections expiring within `horizon`."""
        check_owner(owner)
        check_limit(limit)
        async with self._lock:
            now = self._clock()
            due = []
            for c in self._rows.values():
                s = self._schedules.setdefault(c.id, _Schedule())
                expiry = _due_expiry(c, now + horizon)
                if (
                    expiry is not None
                    and (s.next_at is None or s.next_at <= now)
                    and (s.until is None or s.until <= now)
                    and s.failures < max_failures
                ):
                    due.append((expiry, c))
            due.sort(key=lambda pair: pair[0])
            claims = []
            for _, c in due[:limit]:
                s = self._schedules[c.id]
                s.owner, s.until = owner, now + lease
                claims.append(Claim(_copy(c), s.failures))
            return claims

    async def claim_connection(
        self, connection_id: UUID, owner: str, *, lease: timedelta
    ) -> Claim | None:
        """Lease one ACTIVE connection now; None when absent, not active, or leased elsewhere."""
        check_owner(owner)
        async with self._lock:
            now = self._clock()
            c = self._rows.get(connection_id)
            if c is None or c.status is not ConnectionStatus.ACTIVE:
                return None
            s = self._schedules.setdefault(connection_id, _Schedule())
            if s.until is not None and s.until > now:
                return None
            s.owner, s.until = owner, now + lease
            return Claim(_copy(c), s.failures)

    async def finish_claim(
        self,
        connection_id: UUID,
        owner: str,
        *,
        succeeded: bool,
        next_attempt_at: datetime | None = None,
        error: str | None = None,
    ) -> int | None:
        """Close a lease `owner` still holds; the failure count after it, or None if lost."""
        async with self._lock:
            s = self._schedules.get(connection_id)
            if s is None or s.owner != owner or connection_id not in self._rows:
                return None
            s.owner, s.until = None, None
            s.failures = 0 if succeeded else s.failures + 1
            s.next_at, s.error = next_attempt_at, error
            return s.failures

    async def release_claims(self, connection_ids: Sequence[UUID], owner: str) -> None:
        """Hand back leases never started, keeping their schedule."""
        async with self._lock:
            for connection_id in connection_ids:
                s = self._schedules.get(connection_id)
                if s is not None and s.owner == owner:
                    s.owner, s.until = None, None

    async def refresh_backlog(
        self, horizon: timedelta, *, max_failures: int | None = None
    ) -> RefreshBacklog:
        """Due connections nobody leases (below `max_failures` if given), and the oldest expiry."""
        async with self._lock:
            now = self._clock()
            expiries = []
            for c in self._rows.values():
                s = self._schedules.get(c.id, _Schedule())
                expiry = _due_expiry(c, now + horizon)
                if (
                    expiry is not None
                    and (s.until is None or s.until <= now)
                    and (max_failures is None or s.failures < max_failures)
                ):
                    expiries.append(expiry)
            return RefreshBacklog(len(expiries), min(expiries) if expiries else None)

    async def find_sealed_outside(
        self, prefix: bytes, *, after: UUID | None = None, limit: int = 500
    ) -> list[ProviderConnection]:
        """Connections holding credentials whose blob does not start with `prefix`, in id order."""
        size = check_limit(limit)
        rows = await self._read(
            lambda c: (
                c.credentials is not None
                and not c.credentials.encrypted_data.startswith(prefix)
                and (after is None or c.id.bytes > after.bytes)
            )
        )
        return sorted(rows, key=lambda c: c.id.bytes)[:size]

    async def count_sealed_outside(self, prefixes: Sequence[bytes]) -> int:
        """How many connections hold credentials starting with none of `prefixes`."""
        headers = tuple(prefixes)
        rows = await self._read(
            lambda c: (
                c.credentials is not None
                and not any(c.credentials.encrypted_data.startswith(h) for h in headers)
            )
        )
        return len(rows)

    async def count_states_sealed_with(self, prefix: bytes) -> int:
        """How many unexpired pending authorizations were sealed under the key of `prefix`."""
        async with self._lock:
            now = self._clock()
            return sum(
                1
                for p in self._states.values()
                if p.expires_at > now and p.sealed_verifier.startswith(prefix)
            )

    async def count_sealed_with(self, prefix: bytes) -> int:
        """How many connections hold credentials whose blob starts with `prefix`."""
        rows = await self._read(
            lambda c: c.credentials is not None and c.credentials.encrypted_data.startswith(prefix)
        )
        return len(rows)

    async def put_state(self, pending: PendingAuthorization) -> None:
        """Keep a pending authorization until its callback (or its expiry)."""
        if self._in_transaction:
            self._put_state(pending)
            return
        async with self._lock:
            self._put_state(pending)

    def _put_state(self, pending: PendingAuthorization) -> None:
        now = pending.created_at
        for key in [k for k, v in self._states.items() if v.expires_at < now]:
            del self._states[key]
        if pending.connection_id not in self._rows:
            raise ConstraintViolationError("put_state: the connection does not exist")
        if pending.state_hash in self._states:
            raise ConstraintViolationError("put_state: the state is already in use")
        self._states[pending.state_hash] = pending

    async def take_state(self, state_hash: bytes) -> PendingAuthorization | None:
        """Remove and return the pending authorization with this state hash (single use)."""
        if self._in_transaction:
            return self._states.pop(state_hash, None)
        async with self._lock:
            return self._states.pop(state_hash, None)

    async def migrate(self) -> list[int]:
        return []

    async def schema_version(self) -> int:
        return 0

    async def check_schema(self) -> None:
        return None
