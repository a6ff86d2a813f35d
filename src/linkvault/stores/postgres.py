"""PostgreSQL store over an asyncpg pool: the production store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar
from uuid import UUID

import asyncpg

from linkvault.domain import (
    Clock,
    ProviderConnection,
    ProviderCredentials,
    utc_now,
)
from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    LinkvaultError,
    NotFoundError,
    SchemaError,
    StaleConnectionError,
)
from linkvault.stores import queries
from linkvault.stores.common import (
    CircuitCount,
    Claim,
    ConnectionFilter,
    PendingAuthorization,
    RefreshBacklog,
    check_limit,
    check_minutes,
    check_owner,
    list_query,
    lost_attempt,
)
from linkvault.stores.migrations import SCHEMA_TABLE, latest_version, load_migrations

T = TypeVar("T")
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_Q = queries.load("postgres")
# An arbitrary constant naming linkvault's migration lock among the server's advisory locks.
_MIGRATION_LOCK = 0x4C696E6B5661  # "LinkVa"

_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
    OSError,
)


def describe(exc: BaseException) -> str:
    """What a driver error says, without the values it was given.

    A server error's DETAIL repeats the failing row (credentials and alias included), and a
    data error's message quotes the value it could not use: neither may reach a message.
    """
    if not isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc}"
    text = f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"
    # Class 22 (data exceptions, asyncpg's own encoding errors included) quotes the value.
    if exc.args and not str(exc.sqlstate or "22").startswith("22"):
        text += f": {exc.args[0]}"
    for name in ("table_name", "column_name", "constraint_name"):
        value = getattr(exc, name, None)
        if value:
            text += f", {name.removesuffix('_name')} {value}"
    return text


def translate_error(exc: BaseException, operation: str) -> LinkvaultError:
    """Map a driver or network error to linkvault's exception tree (never parameter values)."""
    if isinstance(exc, LinkvaultError):
        return exc
    detail = describe(exc)
    if isinstance(exc, asyncpg.exceptions.UndefinedTableError | asyncpg.UndefinedColumnError):
        return SchemaError(
            f"{operation} failed: the linkvault schema is missing or outdated "
            f"(run `linkvault migrate`): {detail}"
        )
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return ConstraintViolationError(f"{operation} violated a database constraint: {detail}")
    # TimeoutError is an OSError: tested first, for it is not a lost connection.
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailableError(f"{operation} failed: database timed out")
    if _is_connection_loss(exc):
        return DatabaseUnavailableError(f"{operation} failed: database unreachable: {detail}")
    return DatabaseError(f"{operation} failed: {detail}")


def _is_connection_loss(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return False
    return isinstance(exc, _CONNECTION_LOST) or (
        isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's reset query: one round trip per call.

    linkvault leaves no session state behind (no SET, LISTEN, cursor or session-level
    advisory lock), and asyncpg still rolls back a transaction left open before calling this.
    """


def row_to_connection(row: asyncpg.Record | Sequence[Any]) -> ProviderConnection:
    """Build the entity from a row in the column order of the named queries."""
    blob = row[8]
    return ProviderConnection.restore(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        None if blob is None else ProviderCredentials.restore(blob, row[7], row[9]),
        row[10],
        row[11],
        row[12],
        row[13],
        row[14],
    )


def connection_params(c: ProviderConnection) -> tuple[Any, ...]:
    """The entity's column values in the order of the named queries (version excluded)."""
    creds = c.credentials
    return (
        c.id,
        c.user_id,
        c.provider_id,
        c.provider_slug,
        c.alias,
        c.status.value,
        c.status_reason,
        None if creds is None else creds.credential_type.value,
        None if creds is None else creds.encrypted_data,
        None if creds is None else creds.expires_at,
        c.connected_at,
        c.last_sync_at,
        c.created_at,
        c.updated_at,
    )


def _claim(row: asyncpg.Record) -> Claim:
    return Claim(row_to_connection(row), row[15], lost_attempt(row[16], row[17], row[18]))


class PostgresConnectionRepository:
    """The repository port on PostgreSQL, pooled; bound to one connection inside a transaction."""

    def __init__(
        self,
        pool: asyncpg.Pool | None = None,
        *,
        connection: Conn | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if (pool is None) == (connection is None):
            raise ValueError("pass exactly one of pool or connection")
        self._pool = pool
        self._conn = connection
        self._clock = clock
        self._owns_pool = False

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        clock: Clock = utc_now,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> Self:
        """Open a pool on `dsn`; raises DatabaseUnavailableError when the server is unreachable."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                reset=_keep_session,
                # Short OLTP statements: JIT compilation only ever adds latency here.
                server_settings={"jit": "off"},
            )
        except Exception as exc:
            raise translate_error(exc, "connecting to PostgreSQL") from exc
        repo = cls(pool, clock=clock)
        repo._owns_pool = True
        return repo

    @property
    def pool(self) -> asyncpg.Pool | None:
        return self._pool

    async def close(self) -> None:
        if self._pool is not None and self._owns_pool:
            await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- plumbing ------------------------------------------------------------

    async def _call(self, operation: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        if self._conn is not None:
            try:
                return await fn(self._conn)
            except Exception as exc:
                raise translate_error(exc, operation) from exc
        assert self._pool is not None
        # A dropped connection (server restart, failover) is retried once on a fresh one:
        # reads are idempotent and a write carries its version check, so it cannot apply twice.
        for attempt in (1, 2):
            try:
                async with self._pool.acquire() as conn:
                    return await fn(conn)
            except Exception as exc:
                if attempt == 1 and _is_connection_loss(exc):
                    # A lost connection means a restart or a failover: the pool's other idle
                    # connections are dead too, though asyncpg may not know it yet, and the
                    # retry must not land on one of them.
                    await self._pool.expire_connections()
                    continue
                raise translate_error(exc, operation) from exc
        raise AssertionError("unreachable")

    async def _many(self, operation: str, query: str, *args: Any) -> list[ProviderConnection]:
        rows = await self._call(operation, lambda c: c.fetch(query, *args))
        return [row_to_connection(r) for r in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresConnectionRepository]:
        """A unit of work: everything done through the yielded repository commits together."""
        if self._conn is not None:
            async with self._conn.transaction():  # a savepoint inside the caller's transaction
                yield self
            return
        assert self._pool is not None
        try:
            conn = await self._pool.acquire()
        except Exception as exc:
            raise translate_error(exc, "beginning a transaction") from exc
        try:
            tx = conn.transaction()
            try:
                await tx.start()
            except Exception as exc:
                raise translate_error(exc, "beginning a transaction") from exc
            try:
                yield PostgresConnectionRepository(connection=conn, clock=self._clock)
            except BaseException:
                if not conn.is_closed():
                    await tx.rollback()
                raise
            try:
                await tx.commit()
            except Exception as exc:
                raise translate_error(exc, "committing a transaction") from exc
        finally:
            await self._pool.release(conn)

    # --- the port ------------------------------------------------------------

    async def find_by_id(self, connection_id: UUID) -> ProviderConnection | None:
        query = _Q["find_by_id"]
        row = await self._call("find_by_id", lambda c: c.fetchrow(query, connection_id))
        return None if row is None else row_to_connection(row)

    async def find_by_user_id(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._many("find_by_user_id", _Q["find_by_user_id"], user_id)

    async def find_by_user_and_provider(
        self, user_id: UUID, provider_id: UUID
    ) -> list[ProviderConnection]:
        return await self._many(
            "find_by_user_and_provider", _Q["find_by_user_and_provider"], user_id, provider_id
        )

    async def find_active_by_user(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._many("find_active_by_user", _Q["find_active_by_user"], user_id)

    async def save(self, connection: ProviderConnection) -> None:
        params = connection_params(connection)
        expected = connection.version
        if expected == 0:
            query = _Q["insert"]
            version = await self._call("save", lambda c: c.fetchval(query, *params))
        else:
            query = _Q["update"]
            version = await self._call("save", lambda c: c.fetchval(query, *params, expected))
        if version is None:
            raise StaleConnectionError(connection.id, expected)
        connection.version = version

    async def delete(self, connection_id: UUID) -> None:
        query = _Q["delete"]
        deleted = await self._call("delete", lambda c: c.fetchval(query, connection_id))
        if deleted is None:
            raise NotFoundError(connection_id)

    async def find_expiring_soon(self, minutes: int = 30) -> list[ProviderConnection]:
        horizon = self._clock() + timedelta(minutes=check_minutes(minutes))
        return await self._many("find_expiring_soon", _Q["find_expiring_soon"], horizon)

    # --- beyond the port -------------------------------------------------------

    async def list_connections(
        self,
        where: ConnectionFilter | None = None,
        *,
        after: UUID | None = None,
        limit: int = 100,
    ) -> list[ProviderConnection]:
        """One page of connections in id order, after the cursor `after`."""
        f = where or ConnectionFilter()
        return await self._many(
            "list_connections",
            _Q[list_query(f)],
            f.user_id,
            f.provider_id,
            f.status.value if f.status else None,
            f.expiring_before,
            after,
            check_limit(limit),
        )

    async def claim_due(
        self,
        owner: str,
        *,
        horizon: timedelta,
        lease: timedelta,
        limit: int,
        max_failures: int,
        paused: Sequence[str] = (),
    ) -> list[Claim]:
        """Lease up to `limit` due connections: lost attempts first, then by expiry.

        Connections of the `paused` providers (an open circuit) are left alone.
        """
        now, owner, limit = self._clock(), check_owner(owner), check_limit(limit)
        skip = list(paused)
        lost_q, due_q = _Q["claim_lost"], _Q["claim_due"]
        lost_args = (now, max_failures, limit, owner, now + lease, skip)
        rows = list(await self._call("claim_due", lambda c: c.fetch(lost_q, *lost_args)))
        if len(rows) < limit:
            args = (now + horizon, now, max_failures, limit - len(rows), owner, now + lease, skip)
            rows.extend(await self._call("claim_due", lambda c: c.fetch(due_q, *args)))
        return [_claim(r) for r in rows]

    async def claim_connection(
        self, connection_id: UUID, owner: str, *, lease: timedelta
    ) -> Claim | None:
        """Lease one ACTIVE connection now; None when absent, not active, or leased elsewhere."""
        now = self._clock()
        query, args = _Q["claim_connection"], (connection_id, check_owner(owner), now, now + lease)
        row = await self._call("claim_connection", lambda c: c.fetchrow(query, *args))
        return None if row is None else _claim(row)

    async def begin_attempt(
        self,
        connection_id: UUID,
        owner: str,
        *,
        lease: timedelta,
        fingerprint: str,
        credentials: bytes,
    ) -> datetime | None:
        """Fence and record a refresh request about to be sent; its first time, or None.

        None: the lease is no longer this worker's, or the grant changed: send nothing.
        """
        now = self._clock()
        query = _Q["begin_attempt"]
        args = (connection_id, owner, now, now + lease, fingerprint, credentials)
        value: datetime | None = await self._call(
            "begin_attempt", lambda c: c.fetchval(query, *args)
        )
        return value

    async def extend_lease(self, connection_id: UUID, owner: str, *, lease: timedelta) -> bool:
        """Heartbeat: extend a lease `owner` still holds; False when it is gone."""
        now = self._clock()
        query, args = _Q["extend_lease"], (connection_id, owner, now, now + lease)
        return await self._call("extend_lease", lambda c: c.fetchval(query, *args)) is not None

    async def complete_refresh(
        self,
        connection_id: UUID,
        owner: str,
        *,
        started_from: bytes,
        credentials: ProviderCredentials,
        next_refresh_at: datetime | None,
    ) -> bool:
        """Store refreshed credentials and close the lease in one statement.

        Applied only while the row still holds the grant `started_from`; False otherwise.
        """
        query = _Q["complete_refresh"]
        args = (
            connection_id,
            owner,
            started_from,
            credentials.encrypted_data,
            credentials.expires_at,
            self._clock(),
            next_refresh_at,
        )
        return await self._call("complete_refresh", lambda c: c.fetchval(query, *args)) is not None

    async def record_lost(self, connection_id: UUID, owner: str, *, how: str, error: str) -> bool:
        """A request whose answer never came: keep its record, hand the row back for a replay."""
        query, args = _Q["record_lost"], (connection_id, owner, how, error)
        return await self._call("record_lost", lambda c: c.fetchval(query, *args)) is not None

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
        query = _Q["finish_claim"]
        args = (connection_id, owner, succeeded, next_attempt_at, error)
        value = await self._call("finish_claim", lambda c: c.fetchval(query, *args))
        return None if value is None else int(value)

    async def release_claims(self, connection_ids: Sequence[UUID], owner: str) -> None:
        """Hand back leases never started, keeping their schedule."""
        query, ids = _Q["release_claims"], list(connection_ids)
        await self._call("release_claims", lambda c: c.execute(query, ids, owner))

    async def refresh_backlog(
        self, horizon: timedelta, *, max_failures: int | None = None
    ) -> RefreshBacklog:
        """Due connections (below `max_failures` if given): all, unleased, and the oldest expiry."""
        now = self._clock()
        query = _Q["refresh_backlog"]
        row = await self._call(
            "refresh_backlog", lambda c: c.fetchrow(query, now + horizon, now, max_failures)
        )
        assert row is not None
        return RefreshBacklog(int(row[0]), int(row[1]), row[2])

    async def open_circuits(self) -> dict[str, datetime]:
        """Providers whose circuit is open now, and until when."""
        query, now = _Q["open_circuits"], self._clock()
        rows = await self._call("open_circuits", lambda c: c.fetch(query, now))
        return {r[0]: r[1] for r in rows}

    async def circuit_failure(
        self, provider_slug: str, *, window: timedelta, error: str
    ) -> CircuitCount:
        """Count a failure at a provider (failures older than `window` start afresh)."""
        now = self._clock()
        query, args = _Q["circuit_failure"], (provider_slug, now, now - window, error[:500])
        row = await self._call("circuit_failure", lambda c: c.fetchrow(query, *args))
        assert row is not None
        return CircuitCount(int(row[0]), int(row[1]), row[2])

    async def open_circuit(self, provider_slug: str, *, until: datetime, opened: int) -> bool:
        """Open a provider's circuit until `until`, unless another worker just did."""
        query, args = _Q["open_circuit"], (provider_slug, until, opened, self._clock())
        return await self._call("open_circuit", lambda c: c.fetchval(query, *args)) is not None

    async def close_circuit(self, provider_slug: str) -> bool:
        """Close a provider's circuit after a success; False when it was not failing."""
        query = _Q["close_circuit"]
        value = await self._call("close_circuit", lambda c: c.fetchval(query, provider_slug))
        return value is not None

    async def find_sealed_outside(
        self, prefix: bytes, *, after: UUID | None = None, limit: int = 500
    ) -> list[ProviderConnection]:
        """Connections holding credentials whose blob does not start with `prefix`, in id order."""
        return await self._many(
            "find_sealed_outside", _Q["find_sealed_outside"], prefix, after, check_limit(limit)
        )

    async def count_sealed_outside(self, prefixes: Sequence[bytes]) -> int:
        """How many connections hold credentials starting with none of `prefixes`."""
        query, headers = _Q["count_sealed_outside"], list(prefixes)
        return int(await self._call("count_sealed_outside", lambda c: c.fetchval(query, headers)))

    async def count_states_sealed_with(self, prefix: bytes) -> int:
        """How many unexpired pending authorizations were sealed under the key of `prefix`."""
        query, now = _Q["count_states_sealed_with"], self._clock()
        value = await self._call(
            "count_states_sealed_with", lambda c: c.fetchval(query, prefix, now)
        )
        return int(value)

    async def count_sealed_with(self, prefix: bytes) -> int:
        """How many connections hold credentials whose blob starts with `prefix`."""
        query = _Q["count_sealed_with"]
        return int(await self._call("count_sealed_with", lambda c: c.fetchval(query, prefix)))

    async def put_state(self, pending: PendingAuthorization) -> None:
        """Keep a pending authorization until its callback (or its expiry)."""
        p = pending
        args = (
            p.state_hash,
            p.connection_id,
            p.sealed_verifier,
            p.redirect_uri,
            p.return_to,
            p.created_at,
            p.expires_at,
        )
        put, purge = _Q["put_state"], _Q["purge_states"]

        async def run(conn: Conn) -> None:
            await conn.execute(purge, p.created_at)
            await conn.execute(put, *args)

        await self._call("put_state", run)

    async def take_state(self, state_hash: bytes) -> PendingAuthorization | None:
        """Remove and return the pending authorization with this state hash (single use)."""
        query = _Q["take_state"]
        row = await self._call("take_state", lambda c: c.fetchrow(query, state_hash))
        if row is None:
            return None
        return PendingAuthorization(state_hash, row[0], row[1], row[2], row[3], row[4], row[5])

    # --- schema --------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply pending migrations under an advisory lock; returns the versions applied."""

        async def run(conn: Conn) -> list[int]:
            applied: list[int] = []
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r[0] for r in await conn.fetch(f"SELECT version FROM {SCHEMA_TABLE}")}
                for migration in load_migrations("postgres"):
                    if migration.version in done:
                        continue
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                    applied.append(migration.version)
            return applied

        return await self._call("migrate", run)

    async def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""

        async def run(conn: Conn) -> int:
            exists = await conn.fetchval("SELECT to_regclass($1)", SCHEMA_TABLE)
            if exists is None:
                return 0
            value = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}")
            return int(value)

        return await self._call("reading the schema version", run)

    async def check_schema(self) -> None:
        """Raise SchemaError unless every migration of this linkvault has been applied."""
        current, needed = await self.schema_version(), latest_version("postgres")
        if current < needed:
            raise SchemaError(
                f"the database schema is at version {current}, this linkvault needs {needed}: "
                "run `linkvault migrate`"
            )
