"""SQLite store over the standard sqlite3 module: the embedded default.

Writes, units of work and larger reads run on connections that live on threads of their
own, so no query that may wait for a lock ever blocks the event loop. Point reads (one
connection, or one user's few) run on the event loop's own thread through a read-only
connection that never waits: in WAL mode a reader takes no lock a writer holds, and with
no busy timeout the rare SQLITE_BUSY (a WAL index being rebuilt) sends the read to a
thread instead. A thread hop costs more than reading a cached page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar
from uuid import UUID, SafeUUID

from linkvault.domain import Clock, ProviderConnection, ProviderCredentials, utc_now
from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    LinkvaultError,
    SchemaError,
)
from linkvault.stores.common import AttemptStart, EventRow
from linkvault.stores.engine import Row, Statement, StoreEngine
from linkvault.stores.migrations import SCHEMA_TABLE, load_migrations

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def from_micros(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + value * _MICROSECOND


def _uuid(value: bytes) -> UUID:
    # UUID(bytes=...) re-validates what the schema's length checks already guarantee.
    uuid = object.__new__(UUID)
    object.__setattr__(uuid, "int", int.from_bytes(value, "big"))
    object.__setattr__(uuid, "is_safe", SafeUUID.unknown)
    return uuid


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


def row_to_connection(row: Row) -> ProviderConnection:
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


def _switch_to_wal(db: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode, waiting up to `timeout` for processes opening it at once.

    The switch needs an exclusive lock, and where two connections would deadlock upgrading
    their locks SQLite answers SQLITE_BUSY at once, without calling the busy handler; so
    the wait is ours."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        else:
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work` in a write transaction: the caller's if one is open, else one of its own."""
    if db.in_transaction:
        return work(db)
    # IMMEDIATE takes the write lock up front: a read lock upgraded later can fail with
    # SQLITE_BUSY that no busy timeout resolves.
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


class _LoopReader:
    """A read-only connection used on one thread (the event loop's), never waiting on a lock.

    `fetch` answers None when the database is busy (or it is called from another thread):
    the caller then reads through a worker thread as any other query.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._thread: int | None = None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA query_only = ON")
            db.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            db.close()
            raise
        self._db = db
        self._thread = threading.get_ident()
        return db

    def fetch(self, query: str, args: tuple[Any, ...]) -> list[Any] | None:
        db = self._db
        if db is None:
            db = self._open()
        elif self._thread != threading.get_ident():
            return None
        try:
            # fetchall: the statement is done and its read snapshot released at once.
            return db.execute(query, args).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


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
            _switch_to_wal(db, self._busy_timeout)
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


class SqliteConnectionRepository(StoreEngine):
    """The repository port on a SQLite file; bound to one connection inside a transaction."""

    _dialect = "sqlite"

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
        self._reader = _LoopReader(self._path)

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
        bound._reader = self._reader
        return bound

    async def close(self) -> None:
        if self._bound is not None or self._closed:
            return
        self._closed = True
        self._reader.close()
        for worker in self._workers:
            await worker.close()

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

    # --- the dialect's primitives -------------------------------------------

    def _read_here(self, operation: str, query: str, args: tuple[Any, ...]) -> list[Any] | None:
        """The rows of a point read done on this thread; None when it must go to a worker
        (inside a unit of work, a query that is not a point read, a busy database)."""
        if self._bound is not None or query not in _LOOP_READS or self._closed:
            return None
        try:
            return self._reader.fetch(query, args)
        except Exception as exc:
            raise translate_error(exc, operation) from exc

    async def _fetch(self, operation: str, query: str, args: tuple[Any, ...]) -> Sequence[Row]:
        rows = self._read_here(operation, query, args)
        if rows is not None:
            return rows
        return await self._call(operation, lambda db: db.execute(query, args).fetchall())

    async def _fetchrow(self, operation: str, query: str, args: tuple[Any, ...]) -> Row | None:
        rows = self._read_here(operation, query, args)
        if rows is not None:
            return rows[0] if rows else None
        return await self._call(operation, lambda db: db.execute(query, args).fetchone())

    def _fetchval(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Any]:
        return self._call(operation, lambda db: _first(db.execute(query, args).fetchone()))

    def _execute(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[None]:
        return self._call(operation, lambda db: _run(db, ((query, args),)))

    def _execute_all(self, operation: str, statements: Sequence[Statement]) -> Awaitable[None]:
        return self._call(operation, lambda db: _run(db, statements))

    def _claim_rows(
        self, lost: Statement, due: Callable[[int], Statement], limit: int
    ) -> Awaitable[Sequence[Row]]:
        def claim(db: sqlite3.Connection) -> list[Any]:
            # RETURNING gives no order: lost attempts oldest first, then by expiry.
            rows = db.execute(*lost).fetchall()
            rows.sort(key=lambda r: r[16])
            if len(rows) < limit:
                more = db.execute(*due(limit - len(rows))).fetchall()
                more.sort(key=lambda r: r[9])
                rows.extend(more)
            return rows

        return self._call("claim_due", lambda db: _in_transaction(db, claim))

    def _fence_rows(
        self, owner: str, now: Any, until: Any, attempts: Sequence[AttemptStart]
    ) -> Awaitable[Sequence[Row]]:
        fence = self._q["begin_attempts"]

        def run(db: sqlite3.Connection) -> list[Any]:
            rows = []
            for a in attempts:
                args = (a.connection_id.bytes, owner, now, until, a.fingerprint, a.credentials)
                row = db.execute(fence, args).fetchone()
                if row is not None:
                    rows.append(row)
            return rows

        if len(attempts) == 1:  # one statement commits on its own
            return self._call("begin_attempts", run)
        return self._call("begin_attempts", lambda db: _in_transaction(db, run))

    def _logged(
        self, operation: str, name: str, args: tuple[Any, ...], events: Sequence[EventRow]
    ) -> Awaitable[Any]:
        change, insert = self._q[name], self._q["insert_event"]

        def write(db: sqlite3.Connection) -> Any:
            row = db.execute(change, args).fetchone()
            if row is None:
                return None
            value, last, connection_id, user_id, slug, was = row
            first = last - len(events)
            db.executemany(
                insert,
                [
                    (eid.bytes, connection_id, user_id, slug, first + n, kind,
                     from_status or was, to_status, reason, data, to_micros(at))
                    for n, (eid, kind, from_status, to_status, reason, data, at)
                    in enumerate(events, 1)
                ],
            )  # fmt: skip
            return value

        return self._call(operation, lambda db: _in_transaction(db, write))

    _row_to_connection = staticmethod(row_to_connection)

    @staticmethod
    def _key(value: UUID) -> bytes:
        return value.bytes

    _time = staticmethod(to_micros)
    _uuid = staticmethod(_uuid)

    @staticmethod
    def _at(value: int) -> datetime:
        return _EPOCH + value * _MICROSECOND

    @staticmethod
    def _list(values: Sequence[Any]) -> str:
        # JSON for json_each(): keys and byte strings as the hex() of their bytes.
        return json.dumps([v.hex().upper() if isinstance(v, bytes) else v for v in values])

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


def _first(row: Sequence[Any] | None) -> Any:
    return None if row is None else row[0]


def _run(db: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    for query, args in statements:
        db.execute(query, args)


# Reads of a few rows by key, run on the event loop's thread (see the module's docstring).
_LOOP_READS = frozenset(
    SqliteConnectionRepository._q[name]
    for name in (
        "find_by_id",
        "find_by_user_id",
        "find_by_user_and_provider",
        "find_active_by_user",
        "connection_health",
    )
)
