"""SQLite store over the standard sqlite3 module: the embedded default.

Every connection lives on a thread of its own, so no query ever blocks the event loop.
WAL lets readers run beside the single writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from uuid import UUID, SafeUUID

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
    InvalidArgumentError,
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

_Q = queries.load("sqlite")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def from_micros(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + value * _MICROSECOND


def _uuid(raw: bytes) -> UUID:
    # UUID(bytes=...) re-validates what the schema's length checks already guarantee.
    value = object.__new__(UUID)
    object.__setattr__(value, "int", int.from_bytes(raw, "big"))
    object.__setattr__(value, "is_safe", SafeUUID.unknown)
    return value


def translate_error(exc: BaseException, operation: str) -> LinkvaultError:
    """Map a sqlite3 error to linkvault's exception tree (never parameter values)."""
    if isinstance(exc, LinkvaultError):
        return exc
    detail = f"{type(exc).__name__}: {exc}"
    message = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return ConstraintViolationError(f"{operation} violated a database constraint: {detail}")
    if isinstance(exc, sqlite3.OperationalError):
        # "has no column named" is what an INSERT says of a column the table lacks.
        if message.startswith(("no such table", "no such column")) or (
            "has no column named" in message
        ):
            return SchemaError(
                f"{operation} failed: the linkvault schema is missing or outdated "
                f"(run `linkvault migrate`): {detail}"
            )
        if "unable to open" in message or "disk I/O" in message:
            return DatabaseUnavailableError(f"{operation} failed: database unreachable: {detail}")
    return DatabaseError(f"{operation} failed: {detail}")


def row_to_connection(row: Sequence[Any]) -> ProviderConnection:
    """Build the entity from a row in the column order of the named queries."""
    blob = row[8]
    return ProviderConnection.restore(
        _uuid(row[0]),
        _uuid(row[1]),
        _uuid(row[2]),
        row[3],
        row[4],
        row[5],
        row[6],
        None if blob is None else ProviderCredentials.restore(blob, row[7], from_micros(row[9])),
        from_micros(row[10]),
        from_micros(row[11]),
        _EPOCH + row[12] * _MICROSECOND,
        _EPOCH + row[13] * _MICROSECOND,
        row[14],
    )


def connection_params(c: ProviderConnection) -> tuple[Any, ...]:
    """The entity's column values in the order of the named queries (version excluded)."""
    creds = c.credentials
    return (
        c.id.bytes,
        c.user_id.bytes,
        c.provider_id.bytes,
        c.provider_slug,
        c.alias,
        c.status.value,
        c.status_reason,
        None if creds is None else creds.credential_type.value,
        None if creds is None else creds.encrypted_data,
        None if creds is None else to_micros(creds.expires_at),
        to_micros(c.connected_at),
        to_micros(c.last_sync_at),
        to_micros(c.created_at),
        to_micros(c.updated_at),
    )


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (executescript would commit midway)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement.strip(";\n "):
                statements.append(statement)
            buffer = ""
    if buffer.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buffer.splitlines()
    ):
        raise ValueError("the script ends with an incomplete statement")
    return statements


def _claim(row: Sequence[Any]) -> Claim:
    return Claim(
        row_to_connection(row), int(row[15]), lost_attempt(from_micros(row[16]), row[17], row[18])
    )


class _Worker:
    """One sqlite3 connection and the one thread that uses it."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="linkvault-sqlite")
        self._db: sqlite3.Connection | None = None

    def _open(self) -> None:
        db = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except BaseException:
            db.close()
            raise
        self._db = db

    def _invoke(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._open()
        assert self._db is not None
        return fn(self._db)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._invoke, fn)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close)
        finally:
            self._executor.shutdown(wait=False)


class SqliteConnectionRepository:
    """The repository port on a SQLite file; bound to one connection inside a transaction."""

    def __init__(
        self,
        path: str | Path,
        *,
        pool_size: int = 4,
        busy_timeout: float = 10.0,
        clock: Clock = utc_now,
    ) -> None:
        if pool_size < 1:
            raise InvalidArgumentError("pool_size must be at least 1")
        self._path = str(path)
        self._clock = clock
        self._workers = [_Worker(self._path, busy_timeout) for _ in range(pool_size)]
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        for worker in self._workers:
            self._idle.put_nowait(worker)
        self._bound: _Worker | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path, *, pool_size: int = 4, clock: Clock = utc_now) -> Self:
        """Open the database file, created mode 0600 if absent; raises DatabaseUnavailableError."""
        _create_private(str(path))
        repo = cls(path, pool_size=pool_size, clock=clock)
        try:
            await repo._call(f"opening the SQLite database {path}", _probe)
        except BaseException:
            await repo.close()
            raise
        return repo

    def _bind(self, worker: _Worker) -> SqliteConnectionRepository:
        bound = object.__new__(SqliteConnectionRepository)
        bound._path = self._path
        bound._clock = self._clock
        bound._workers = []
        bound._idle = self._idle
        bound._bound = worker
        bound._closed = False
        return bound

    async def close(self) -> None:
        if self._bound is not None or self._closed:
            return
        self._closed = True
        for worker in self._workers:
            await worker.close()

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

    async def _call(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._bound is not None:
            try:
                return await self._bound.run(fn)
            except Exception as exc:
                raise translate_error(exc, operation) from exc
        if self._closed:
            raise DatabaseError(f"{operation} failed: the store is closed")
        worker = await self._idle.get()
        try:
            return await worker.run(fn)
        except Exception as exc:
            raise translate_error(exc, operation) from exc
        finally:
            self._idle.put_nowait(worker)

    async def _many(self, operation: str, query: str, *args: Any) -> list[ProviderConnection]:
        rows = await self._call(operation, lambda db: db.execute(query, args).fetchall())
        return [row_to_connection(r) for r in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteConnectionRepository]:
        """A unit of work: everything done through the yielded repository commits together."""
        if self._bound is not None:
            name = f"lv_{id(object())}"
            await self._call("beginning a savepoint", lambda db: db.execute(f"SAVEPOINT {name}"))
            try:
                yield self
            except BaseException:
                await self._call(
                    "rolling back a savepoint",
                    lambda db: db.execute(f"ROLLBACK TO {name}").execute(f"RELEASE {name}"),
                )
                raise
            await self._call("releasing a savepoint", lambda db: db.execute(f"RELEASE {name}"))
            return
        if self._closed:
            raise DatabaseError("beginning a transaction failed: the store is closed")
        worker = await self._idle.get()
        try:
            bound = self._bind(worker)
            # IMMEDIATE takes the write lock up front: a read lock upgraded later can fail
            # with SQLITE_BUSY that no busy timeout resolves.
            await bound._call("beginning a transaction", lambda db: db.execute("BEGIN IMMEDIATE"))
            try:
                yield bound
            except BaseException:
                await bound._call("rolling back", _rollback)
                raise
            try:
                await bound._call("committing a transaction", lambda db: db.execute("COMMIT"))
            except BaseException:
                await bound._call("rolling back", _rollback)
                raise
        finally:
            self._idle.put_nowait(worker)

    # --- the port ------------------------------------------------------------

    async def find_by_id(self, connection_id: UUID) -> ProviderConnection | None:
        query, key = _Q["find_by_id"], connection_id.bytes
        row = await self._call("find_by_id", lambda db: db.execute(query, (key,)).fetchone())
        return None if row is None else row_to_connection(row)

    async def find_by_user_id(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._many("find_by_user_id", _Q["find_by_user_id"], user_id.bytes)

    async def find_by_user_and_provider(
        self, user_id: UUID, provider_id: UUID
    ) -> list[ProviderConnection]:
        return await self._many(
            "find_by_user_and_provider",
            _Q["find_by_user_and_provider"],
            user_id.bytes,
            provider_id.bytes,
        )

    async def find_active_by_user(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._many("find_active_by_user", _Q["find_active_by_user"], user_id.bytes)

    async def save(self, connection: ProviderConnection) -> None:
        params = connection_params(connection)
        expected = connection.version
        if expected == 0:
            query, args = _Q["insert"], params
        else:
            query, args = _Q["update"], (*params, expected)

        def run(db: sqlite3.Connection) -> int | None:
            row = db.execute(query, args).fetchone()
            return None if row is None else int(row[0])

        version = await self._call("save", run)
        if version is None:
            raise StaleConnectionError(connection.id, expected)
        connection.version = version

    async def delete(self, connection_id: UUID) -> None:
        query, key = _Q["delete"], connection_id.bytes
        row = await self._call("delete", lambda db: db.execute(query, (key,)).fetchone())
        if row is None:
            raise NotFoundError(connection_id)

    async def find_expiring_soon(self, minutes: int = 30) -> list[ProviderConnection]:
        horizon = self._clock() + timedelta(minutes=check_minutes(minutes))
        return await self._many("find_expiring_soon", _Q["find_expiring_soon"], to_micros(horizon))

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
            f.user_id.bytes if f.user_id else None,
            f.provider_id.bytes if f.provider_id else None,
            f.status.value if f.status else None,
            to_micros(f.expiring_before),
            after.bytes if after else None,
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
        skip = json.dumps(list(paused))
        lost_q, due_q = _Q["claim_lost"], _Q["claim_due"]
        until = to_micros(now + lease)
        lost_args = (to_micros(now), max_failures, limit, owner, until, skip)

        def claim(db: sqlite3.Connection) -> list[Any]:
            rows = db.execute(lost_q, lost_args).fetchall()
            rows.sort(key=lambda r: r[16])
            if len(rows) < limit:
                args = (to_micros(now + horizon), to_micros(now), max_failures)
                more = db.execute(due_q, (*args, limit - len(rows), owner, until, skip)).fetchall()
                more.sort(key=lambda r: r[9])
                rows.extend(more)
            return rows

        def run(db: sqlite3.Connection) -> list[Any]:
            if db.in_transaction:
                return claim(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = claim(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return rows

        return [_claim(r) for r in await self._call("claim_due", run)]

    async def claim_connection(
        self, connection_id: UUID, owner: str, *, lease: timedelta
    ) -> Claim | None:
        """Lease one ACTIVE connection now; None when absent, not active, or leased elsewhere."""
        now = self._clock()
        query = _Q["claim_connection"]
        args = (connection_id.bytes, check_owner(owner), to_micros(now), to_micros(now + lease))
        row = await self._call("claim_connection", lambda db: db.execute(query, args).fetchone())
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
        args = (
            connection_id.bytes,
            owner,
            to_micros(now),
            to_micros(now + lease),
            fingerprint,
            credentials,
        )
        row = await self._call("begin_attempt", lambda db: db.execute(query, args).fetchone())
        return None if row is None else from_micros(row[0])

    async def extend_lease(self, connection_id: UUID, owner: str, *, lease: timedelta) -> bool:
        """Heartbeat: extend a lease `owner` still holds; False when it is gone."""
        now = self._clock()
        query = _Q["extend_lease"]
        args = (connection_id.bytes, owner, to_micros(now), to_micros(now + lease))
        row = await self._call("extend_lease", lambda db: db.execute(query, args).fetchone())
        return row is not None

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
            connection_id.bytes,
            owner,
            started_from,
            credentials.encrypted_data,
            to_micros(credentials.expires_at),
            to_micros(self._clock()),
            to_micros(next_refresh_at),
        )
        row = await self._call("complete_refresh", lambda db: db.execute(query, args).fetchone())
        return row is not None

    async def record_lost(self, connection_id: UUID, owner: str, *, how: str, error: str) -> bool:
        """A request whose answer never came: keep its record, hand the row back for a replay."""
        query, args = _Q["record_lost"], (connection_id.bytes, owner, how, error)
        row = await self._call("record_lost", lambda db: db.execute(query, args).fetchone())
        return row is not None

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
        args = (connection_id.bytes, owner, succeeded, to_micros(next_attempt_at), error)
        row = await self._call("finish_claim", lambda db: db.execute(query, args).fetchone())
        return None if row is None else int(row[0])

    async def release_claims(self, connection_ids: Sequence[UUID], owner: str) -> None:
        """Hand back leases never started, keeping their schedule."""
        query = _Q["release_claims"]
        ids = json.dumps([i.bytes.hex().upper() for i in connection_ids])
        await self._call("release_claims", lambda db: db.execute(query, (ids, owner)))

    async def refresh_backlog(
        self, horizon: timedelta, *, max_failures: int | None = None
    ) -> RefreshBacklog:
        """Due connections (below `max_failures` if given): all, unleased, and the oldest expiry."""
        now = self._clock()
        query = _Q["refresh_backlog"]
        args = (to_micros(now + horizon), to_micros(now), max_failures)
        row = await self._call("refresh_backlog", lambda db: db.execute(query, args).fetchone())
        return RefreshBacklog(int(row[0]), int(row[1]), from_micros(row[2]))

    async def open_circuits(self) -> dict[str, datetime]:
        """Providers whose circuit is open now, and until when."""
        query, now = _Q["open_circuits"], to_micros(self._clock())
        rows = await self._call("open_circuits", lambda db: db.execute(query, (now,)).fetchall())
        return {r[0]: _EPOCH + r[1] * _MICROSECOND for r in rows}

    async def circuit_failure(
        self, provider_slug: str, *, window: timedelta, error: str
    ) -> CircuitCount:
        """Count a failure at a provider (failures older than `window` start afresh)."""
        now = self._clock()
        query = _Q["circuit_failure"]
        args = (provider_slug, to_micros(now), to_micros(now - window), error[:500])
        row = await self._call("circuit_failure", lambda db: db.execute(query, args).fetchone())
        return CircuitCount(int(row[0]), int(row[1]), from_micros(row[2]))

    async def open_circuit(self, provider_slug: str, *, until: datetime, opened: int) -> bool:
        """Open a provider's circuit until `until`, unless another worker just did."""
        query = _Q["open_circuit"]
        args = (provider_slug, to_micros(until), opened, to_micros(self._clock()))
        row = await self._call("open_circuit", lambda db: db.execute(query, args).fetchone())
        return row is not None

    async def close_circuit(self, provider_slug: str) -> bool:
        """Close a provider's circuit after a success; False when it was not failing."""
        query = _Q["close_circuit"]
        row = await self._call(
            "close_circuit", lambda db: db.execute(query, (provider_slug,)).fetchone()
        )
        return row is not None

    async def find_sealed_outside(
        self, prefix: bytes, *, after: UUID | None = None, limit: int = 500
    ) -> list[ProviderConnection]:
        """Connections holding credentials whose blob does not start with `prefix`, in id order."""
        return await self._many(
            "find_sealed_outside",
            _Q["find_sealed_outside"],
            prefix,
            after.bytes if after else None,
            check_limit(limit),
        )

    async def count_sealed_outside(self, prefixes: Sequence[bytes]) -> int:
        """How many connections hold credentials starting with none of `prefixes`."""
        query = _Q["count_sealed_outside"]
        headers = json.dumps([p.hex().upper() for p in prefixes])
        row = await self._call(
            "count_sealed_outside", lambda db: db.execute(query, (headers,)).fetchone()
        )
        return int(row[0])

    async def count_states_sealed_with(self, prefix: bytes) -> int:
        """How many unexpired pending authorizations were sealed under the key of `prefix`."""
        query, args = _Q["count_states_sealed_with"], (prefix, to_micros(self._clock()))
        row = await self._call(
            "count_states_sealed_with", lambda db: db.execute(query, args).fetchone()
        )
        return int(row[0])

    async def count_sealed_with(self, prefix: bytes) -> int:
        """How many connections hold credentials whose blob starts with `prefix`."""
        query = _Q["count_sealed_with"]
        row = await self._call(
            "count_sealed_with", lambda db: db.execute(query, (prefix,)).fetchone()
        )
        return int(row[0])

    async def put_state(self, pending: PendingAuthorization) -> None:
        """Keep a pending authorization until its callback (or its expiry)."""
        p = pending
        args = (
            p.state_hash,
            p.connection_id.bytes,
            p.sealed_verifier,
            p.redirect_uri,
            p.return_to,
            to_micros(p.created_at),
            to_micros(p.expires_at),
        )
        put, purge = _Q["put_state"], _Q["purge_states"]

        def run(db: sqlite3.Connection) -> None:
            db.execute(purge, (to_micros(p.created_at),))
            db.execute(put, args)

        await self._call("put_state", run)

    async def take_state(self, state_hash: bytes) -> PendingAuthorization | None:
        """Remove and return the pending authorization with this state hash (single use)."""
        query = _Q["take_state"]
        row = await self._call("take_state", lambda db: db.execute(query, (state_hash,)).fetchone())
        if row is None:
            return None
        created, expires = from_micros(row[4]), from_micros(row[5])
        assert created is not None
        assert expires is not None
        return PendingAuthorization(
            state_hash, UUID(bytes=row[0]), row[1], row[2], row[3], created, expires
        )

    # --- schema --------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply pending migrations in one write transaction; returns the versions applied."""

        def run(db: sqlite3.Connection) -> list[int]:
            applied: list[int] = []
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
                )
                done = {r[0] for r in db.execute(f"SELECT version FROM {SCHEMA_TABLE}")}
                for migration in load_migrations("sqlite"):
                    if migration.version in done:
                        continue
                    for statement in split_statements(migration.sql):
                        db.execute(statement)
                    db.execute(
                        f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES (?, ?)",
                        (migration.version, migration.name),
                    )
                    applied.append(migration.version)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return applied

        return await self._call("migrate", run)

    async def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""

        def run(db: sqlite3.Connection) -> int:
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SCHEMA_TABLE,)
            ).fetchone()
            if exists is None:
                return 0
            row = db.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}").fetchone()
            return int(row[0])

        return await self._call("reading the schema version", run)

    async def check_schema(self) -> None:
        """Raise SchemaError unless every migration of this linkvault has been applied."""
        current, needed = await self.schema_version(), latest_version("sqlite")
        if current < needed:
            raise SchemaError(
                f"the database schema is at version {current}, this linkvault needs {needed}: "
                "run `linkvault migrate`"
            )


def _create_private(path: str) -> None:
    # sqlite3 would create the file with the umask's mode (0644): credentials stay owner-only.
    # The WAL and shared-memory files SQLite adds later take the database file's mode.
    if path == ":memory:" or path.startswith("file:"):
        return
    # It exists already, or sqlite3 reports (translated) why it cannot be opened.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _probe(db: sqlite3.Connection) -> None:
    db.execute("SELECT 1").fetchone()


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")
