"""PostgreSQL store over an asyncpg pool: the production store."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cache
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from linkvault.domain import Clock, ProviderConnection, ProviderCredentials, utc_now
from linkvault.errors import (
    ConfigurationError,
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    LinkvaultError,
    SchemaError,
)
from linkvault.stores import queries
from linkvault.stores.common import AttemptStart, EventRow
from linkvault.stores.engine import Row, Statement, StoreEngine
from linkvault.stores.migrations import SCHEMA_TABLE, load_migrations

T = TypeVar("T")
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_Q = queries.load("postgres")


async def _learn_array_types(conn: Conn) -> None:
    """Have a new connection learn the array types the named queries pass, once, now.

    asyncpg looks an array type up in the catalog (two more statements) the first time a
    connection meets it; done here, no save, claim or logged change pays for it later.
    """
    await conn.fetchval(
        "SELECT ARRAY[$1::uuid[]::text, $2::text[]::text, $3::timestamptz[]::text,"
        " $4::bytea[]::text]",
        [],
        [],
        [],
        [],
    )


@cache
def logged_query(name: str, arity: int) -> str:
    """The named change, and the insert of its events (arrays after its `arity` arguments)."""
    events = re.sub(r"\$e(\d)", lambda m: f"${arity + int(m.group(1))}", _Q["insert_event"])
    events = events.replace("$k", f"${arity}")
    return f"WITH saved AS ({_Q[name]}), logged AS ({events}) SELECT value FROM saved"


POOLER_MODES = ("transaction",)


def pooler_mode(dsn: str) -> tuple[str, bool]:
    """The URL without linkvault's `pooler` parameter, and whether a transaction pooler is
    in front. asyncpg would send an unknown URL parameter to the server as a setting."""
    parts = urlsplit(dsn)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    modes = [value for key, value in pairs if key == "pooler"]
    if not modes:
        return dsn, False
    if len(modes) > 1 or modes[0] not in POOLER_MODES:
        raise ConfigurationError(
            "the database URL's pooler parameter must be pooler=transaction "
            "(PgBouncer or another pooler in transaction mode); leave it out for a direct "
            "connection"
        )
    query = urlencode([(key, value) for key, value in pairs if key != "pooler"])
    return urlunsplit(parts._replace(query=query)), True


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


def row_to_connection(row: Row) -> ProviderConnection:
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


def _same(value: T) -> T:
    return value


class PostgresConnectionRepository(StoreEngine):
    """The repository port on PostgreSQL, pooled; bound to one connection inside a transaction."""

    _dialect = "postgres"

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
        """Open a pool on `dsn`; raises DatabaseUnavailableError when the server is unreachable.

        `?pooler=transaction` on the URL says a transaction pooler (PgBouncer in transaction
        mode, or a managed database's pooler) stands between: no prepared statement is
        kept across transactions and no startup parameter is sent (set `jit = off` on the
        role instead: `ALTER ROLE … SET jit = off`).
        """
        dsn, pooled = pooler_mode(dsn)
        # Short OLTP statements: JIT compilation only ever adds latency here.
        direct: dict[str, Any] = {"server_settings": {"jit": "off"}}
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                reset=_keep_session,
                init=_learn_array_types,
                **({"statement_cache_size": 0} if pooled else direct),
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

    # --- the dialect's primitives -------------------------------------------

    def _fetch(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Sequence[Row]]:
        return self._call(operation, lambda c: c.fetch(query, *args))

    def _fetchrow(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Row | None]:
        return self._call(operation, lambda c: c.fetchrow(query, *args))

    def _fetchval(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Any]:
        return self._call(operation, lambda c: c.fetchval(query, *args))

    async def _execute(self, operation: str, query: str, args: tuple[Any, ...]) -> None:
        await self._call(operation, lambda c: c.execute(query, *args))

    def _execute_all(self, operation: str, statements: Sequence[Statement]) -> Awaitable[None]:
        async def run(conn: Conn) -> None:
            for query, args in statements:
                await conn.execute(query, *args)

        return self._call(operation, run)

    async def _claim_rows(
        self, lost: Statement, due: Callable[[int], Statement], limit: int
    ) -> list[Row]:
        rows: list[Row] = list(await self._fetch("claim_due", *lost))
        if len(rows) < limit:
            rows.extend(await self._fetch("claim_due", *due(limit - len(rows))))
        return rows

    def _fence_rows(
        self, owner: str, now: Any, until: Any, attempts: Sequence[AttemptStart]
    ) -> Awaitable[Sequence[Row]]:
        # One statement over parallel arrays, however many attempts: one round trip, one commit.
        ids = [a.connection_id for a in attempts]
        fingerprints = [a.fingerprint for a in attempts]
        credentials = [a.credentials for a in attempts]
        args = (ids, owner, now, until, fingerprints, credentials)
        return self._fetch("begin_attempts", self._q["begin_attempts"], args)

    def _logged(
        self, operation: str, name: str, args: tuple[Any, ...], events: Sequence[EventRow]
    ) -> Awaitable[Any]:
        # One statement: the change and its events commit together, in one round trip.
        columns = tuple(list(column) for column in zip(*events, strict=True))
        return self._fetchval(operation, logged_query(name, len(args)), (*args, *columns))

    # asyncpg encodes and decodes UUIDs, timestamps and arrays itself.
    _row_to_connection = staticmethod(row_to_connection)
    _key = _time = _uuid = _at = staticmethod(_same)

    @staticmethod
    def _list(values: Sequence[Any]) -> list[Any]:
        return list(values)

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
