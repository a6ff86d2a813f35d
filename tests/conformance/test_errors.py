"""Database failures reach the caller as linkvault's errors, the same way on both databases.

What only one database can do (a server restart, a read-only role, a locked or corrupt file)
is tested in tests/integration/test_postgres_errors.py and test_sqlite_errors.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaError,
    StaleConnectionError,
)
from linkvault.stores import ConnectionStore
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.stores.sqlite import SqliteConnectionRepository
from tests.factories import PORT_CALLS, active, assert_translated, raised_by

if TYPE_CHECKING:
    from tests.conftest import PostgresServer

CLOSED_PORT_URL = "postgresql://postgres@127.0.0.1:1/postgres"
SECRET_ALIAS = "alias-7f3c9e-do-not-leak"
SECRET_BLOB = b"blob-51d0a2-do-not-leak"


class Postgres:
    """A throwaway PostgreSQL database, the driver's errors, and a raw client beside the store."""

    unreachable_cause: type[BaseException] = OSError
    missing_table_cause: type[BaseException] = asyncpg.UndefinedTableError
    missing_column_cause: type[BaseException] = asyncpg.UndefinedColumnError
    check_cause: type[BaseException] = asyncpg.CheckViolationError
    unique_cause: type[BaseException] = asyncpg.UniqueViolationError

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.url = ""

    @asynccontextmanager
    async def store(self, *, migrated: bool = True) -> AsyncIterator[ConnectionStore]:
        self.url = await self.server.create_database(migrated=migrated)
        size = 2 if migrated else 1
        async with await PostgresConnectionRepository.connect(self.url, max_size=size) as repo:
            yield repo

    @asynccontextmanager
    async def unreachable(self) -> AsyncIterator[ConnectionStore]:
        pool = await asyncpg.create_pool(CLOSED_PORT_URL, min_size=0, max_size=1, timeout=2)
        try:
            yield PostgresConnectionRepository(pool)
        finally:
            await pool.close()

    def openings(self) -> list[Callable[[], Awaitable[object]]]:
        return [lambda: PostgresConnectionRepository.connect(CLOSED_PORT_URL)]

    async def execute(self, sql: str, *args: Any) -> None:
        conn = await asyncpg.connect(self.url, timeout=5)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def insert_foreign_row(self, connection_id: UUID) -> None:
        await self.execute(
            "INSERT INTO provider_connections (id, user_id, provider_id, provider_slug, alias,"
            " status, created_at, updated_at, version)"
            " VALUES ($1, $2, $3, 'other', 'theirs', 'pending', now(), now(), 7)",
            connection_id,
            uuid4(),
            uuid4(),
        )

    async def alias_and_version(self, connection_id: UUID) -> tuple[object, object]:
        conn = await asyncpg.connect(self.url, timeout=5)
        try:
            row = await conn.fetchrow(
                "SELECT alias, version FROM provider_connections WHERE id = $1", connection_id
            )
        finally:
            await conn.close()
        assert row is not None
        return (row["alias"], row["version"])


class Sqlite:
    """A SQLite file in a temporary folder, the driver's errors, and a raw sqlite3 beside it."""

    unreachable_cause: type[BaseException] = sqlite3.OperationalError
    missing_table_cause: type[BaseException] = sqlite3.OperationalError
    missing_column_cause: type[BaseException] = sqlite3.OperationalError
    check_cause: type[BaseException] = sqlite3.IntegrityError
    unique_cause: type[BaseException] = sqlite3.IntegrityError

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "linkvault.db"

    @asynccontextmanager
    async def store(self, *, migrated: bool = True) -> AsyncIterator[ConnectionStore]:
        size = 2 if migrated else 4
        async with await SqliteConnectionRepository.open(self.path, pool_size=size) as repo:
            if migrated:
                await repo.migrate()
            yield repo

    @asynccontextmanager
    async def unreachable(self) -> AsyncIterator[ConnectionStore]:
        async with SqliteConnectionRepository(self.folder / "missing" / "linkvault.db") as repo:
            yield repo

    def openings(self) -> list[Callable[[], Awaitable[object]]]:
        missing_folder = self.folder / "missing" / "linkvault.db"
        return [
            lambda: SqliteConnectionRepository.open(missing_folder),
            lambda: SqliteConnectionRepository.open(self.folder),  # a folder, not a file
        ]

    async def execute(self, sql: str, *args: Any) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(sql, args)
        finally:
            conn.close()

    async def insert_foreign_row(self, connection_id: UUID) -> None:
        await self.execute(
            "INSERT INTO provider_connections (id, user_id, provider_id, provider_slug, alias,"
            " status, created_at, updated_at, version)"
            " VALUES (?, ?, ?, 'other', 'theirs', 'pending', 0, 0, 7)",
            connection_id.bytes,
            uuid4().bytes,
            uuid4().bytes,
        )

    async def alias_and_version(self, connection_id: UUID) -> tuple[object, object]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            row = conn.execute(
                "SELECT alias, version FROM provider_connections WHERE id = ?",
                (connection_id.bytes,),
            ).fetchone()
        finally:
            conn.close()
        assert row is not None
        return (row[0], row[1])


Database = Postgres | Sqlite

DATABASES = [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"]


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "postgres":
        return Postgres(request.getfixturevalue("postgres_server"))
    return Sqlite(tmp_path)


def migrated(database: Database) -> AbstractAsyncContextManager[ConnectionStore]:
    return database.store(migrated=True)


# --- a database that cannot be reached ---------------------------------------


async def test_opening_an_unreachable_database_raises_database_unavailable(
    database: Database,
) -> None:
    for opening in database.openings():
        started = time.monotonic()

        exc = await raised_by(opening())

        cause = assert_translated(exc, DatabaseUnavailableError)
        assert isinstance(cause, database.unreachable_cause)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("method", PORT_CALLS)
async def test_every_port_method_on_an_unreachable_database_raises_database_unavailable(
    method: str, database: Database
) -> None:
    async with database.unreachable() as repo:
        exc = await raised_by(PORT_CALLS[method](repo))

    cause = assert_translated(exc, DatabaseUnavailableError)
    assert isinstance(cause, database.unreachable_cause)


# --- a missing schema --------------------------------------------------------


@pytest.mark.parametrize("method", PORT_CALLS)
async def test_every_port_method_on_an_unmigrated_database_raises_schema_error(
    method: str, database: Database
) -> None:
    async with database.store(migrated=False) as repo:
        exc = await raised_by(PORT_CALLS[method](repo))

    assert isinstance(assert_translated(exc, SchemaError), database.missing_table_cause)


async def test_checking_the_schema_of_an_unmigrated_database_raises_schema_error(
    database: Database,
) -> None:
    async with database.store(migrated=False) as repo:
        with pytest.raises(SchemaError):
            await repo.check_schema()


async def test_a_dropped_column_raises_schema_error(database: Database) -> None:
    async with migrated(database) as repo:
        await database.execute("ALTER TABLE provider_connections DROP COLUMN status_reason")

        for method in ("find_by_id", "save (insert)", "save (update)"):
            exc = await raised_by(PORT_CALLS[method](repo))
            cause = assert_translated(exc, SchemaError)
            assert isinstance(cause, database.missing_column_cause)


# --- a violated constraint ---------------------------------------------------


async def test_an_empty_provider_slug_that_bypassed_the_domain_violates_a_check(
    database: Database,
) -> None:
    connection = active()
    connection.provider_slug = ""  # the domain would refuse it; the CHECK must too
    async with migrated(database) as repo:
        exc = await raised_by(repo.save(connection))

        assert isinstance(assert_translated(exc, ConstraintViolationError), database.check_cause)
        assert connection.version == 0
        assert await repo.find_by_id(connection.id) is None


async def test_an_active_connection_without_credentials_violates_a_check_on_update(
    database: Database,
) -> None:
    connection = active()
    async with migrated(database) as repo:
        await repo.save(connection)
        connection.credentials = None

        exc = await raised_by(repo.save(connection))

        assert isinstance(assert_translated(exc, ConstraintViolationError), database.check_cause)
        stored = await repo.find_by_id(connection.id)
        assert stored is not None
        assert stored.credentials is not None
        assert stored.version == connection.version == 1


async def test_a_unique_index_added_outside_linkvault_raises_constraint_violation(
    database: Database,
) -> None:
    async with migrated(database) as repo:
        await database.execute(
            "CREATE UNIQUE INDEX one_alias ON provider_connections (user_id, provider_id, alias)"
        )
        first = active("shared")
        await repo.save(first)
        second = active("shared")
        second.user_id, second.provider_id = first.user_id, first.provider_id

        exc = await raised_by(repo.save(second))

    assert isinstance(assert_translated(exc, ConstraintViolationError), database.unique_cause)


async def test_a_row_inserted_by_another_client_between_build_and_save_is_not_overwritten(
    database: Database,
) -> None:
    mine = active("mine")
    async with migrated(database) as repo:
        await database.insert_foreign_row(mine.id)

        with pytest.raises(StaleConnectionError):
            await repo.save(mine)

        assert await database.alias_and_version(mine.id) == ("theirs", 7)


# --- secrets stay out of messages -------------------------------------------


def _leaks(message: str) -> list[str]:
    forms = [SECRET_ALIAS, SECRET_BLOB.decode(), SECRET_BLOB.hex(), repr(SECRET_BLOB)]
    return [form for form in forms if form in message]


async def _check_violation(database: Database, repo: ConnectionStore) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    connection.provider_slug = ""
    await repo.save(connection)


async def _unique_violation(database: Database, repo: ConnectionStore) -> None:
    await database.execute(
        "CREATE UNIQUE INDEX one_alias ON provider_connections (user_id, provider_id, alias)"
    )
    first = active(SECRET_ALIAS, SECRET_BLOB)
    await repo.save(first)
    second = active(SECRET_ALIAS, SECRET_BLOB)
    second.user_id, second.provider_id = first.user_id, first.provider_id
    await repo.save(second)


async def _unencodable_value(database: Database, repo: ConnectionStore) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    assert connection.credentials is not None
    # A caller that bypassed the value object: the driver cannot encode the value.
    object.__setattr__(connection.credentials, "encrypted_data", SECRET_BLOB.decode())
    await repo.save(connection)


async def _unencodable_alias(database: Database, repo: ConnectionStore) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    connection.alias = SECRET_ALIAS.encode()  # type: ignore[assignment]
    await repo.save(connection)


async def _unbindable_alias(database: Database, repo: ConnectionStore) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    connection.alias = [SECRET_ALIAS]  # type: ignore[assignment]
    await repo.save(connection)


Failure = Callable[[Database, ConnectionStore], Awaitable[None]]
# sqlite3 stores a str in a BLOB column and bytes in a TEXT one: only a list fails to bind.
FAILURES: dict[str, list[Failure]] = {
    "postgres": [_check_violation, _unique_violation, _unencodable_value, _unencodable_alias],
    "sqlite": [_check_violation, _unique_violation, _unbindable_alias],
}


@pytest.mark.parametrize(
    ("database", "failure"),
    [
        pytest.param(name, failure, id=f"{name}-{failure.__name__}", marks=marks)
        for name, marks in (("postgres", [pytest.mark.postgres]), ("sqlite", []))
        for failure in FAILURES[name]
    ],
    indirect=["database"],
)
async def test_no_database_error_message_contains_parameter_values(
    database: Database, failure: Failure
) -> None:
    async with migrated(database) as repo:
        exc = await raised_by(failure(database, repo))

    assert_translated(exc, DatabaseError)
    assert _leaks(str(exc)) == [], str(exc)
    assert _leaks(repr(exc)) == []
