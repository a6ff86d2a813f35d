from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    LinkvaultError,
    SchemaError,
    StaleConnectionError,
)
from linkvault.stores.sqlite import SqliteConnectionRepository

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET_ALIAS = "alias-7f3c9e-do-not-leak"
SECRET_BLOB = b"blob-51d0a2-do-not-leak"

PortCall = Callable[[SqliteConnectionRepository], Awaitable[object]]


def active(alias: str | None = "main", blob: bytes = b"sealed") -> ProviderConnection:
    return ProviderConnection(
        user_id=uuid4(),
        provider_id=uuid4(),
        provider_slug="schwab",
        alias=alias,
        status=ConnectionStatus.ACTIVE,
        credentials=ProviderCredentials(blob, CredentialType.OAUTH2, NOW),
        connected_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


def stored_copy(connection: ProviderConnection) -> ProviderConnection:
    copy = active(connection.alias)
    copy.id = connection.id
    copy.version = 1
    return copy


PORT_CALLS: dict[str, PortCall] = {
    "find_by_id": lambda r: r.find_by_id(uuid4()),
    "find_by_user_id": lambda r: r.find_by_user_id(uuid4()),
    "find_by_user_and_provider": lambda r: r.find_by_user_and_provider(uuid4(), uuid4()),
    "find_active_by_user": lambda r: r.find_active_by_user(uuid4()),
    "find_expiring_soon": lambda r: r.find_expiring_soon(30),
    "save (insert)": lambda r: r.save(active()),
    "save (update)": lambda r: r.save(stored_copy(active())),
    "delete": lambda r: r.delete(uuid4()),
}


def assert_translated(exc: BaseException, expected: type[DatabaseError]) -> BaseException:
    assert isinstance(exc, expected), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    assert cause is not None, "the driver's error must be chained as __cause__"
    assert not isinstance(cause, LinkvaultError)
    return cause


async def raised_by(call: Awaitable[object]) -> BaseException:
    try:
        await call
    except BaseException as exc:
        return exc
    raise AssertionError("the call did not fail")


@pytest.fixture
async def repo(sqlite_file: Path) -> AsyncIterator[SqliteConnectionRepository]:
    async with await SqliteConnectionRepository.open(sqlite_file, pool_size=2) as repo:
        await repo.migrate()
        yield repo


@pytest.fixture
def raw(repo: SqliteConnectionRepository, sqlite_file: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(sqlite_file, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


# --- a file that cannot be opened --------------------------------------------


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
async def test_opening_a_file_that_cannot_exist_raises_database_unavailable(
    where: str, tmp_path: Path
) -> None:
    path = tmp_path / "missing" / "linkvault.db" if where == "missing folder" else tmp_path

    exc = await raised_by(SqliteConnectionRepository.open(path))

    assert isinstance(assert_translated(exc, DatabaseUnavailableError), sqlite3.OperationalError)


@pytest.mark.parametrize("method", PORT_CALLS)
async def test_every_port_method_on_a_file_in_a_missing_folder_raises_database_unavailable(
    method: str, tmp_path: Path
) -> None:
    async with SqliteConnectionRepository(tmp_path / "missing" / "linkvault.db") as repo:
        exc = await raised_by(PORT_CALLS[method](repo))

    assert isinstance(assert_translated(exc, DatabaseUnavailableError), sqlite3.OperationalError)


# --- a missing schema --------------------------------------------------------


@pytest.mark.parametrize("method", PORT_CALLS)
async def test_every_port_method_on_an_unmigrated_file_raises_schema_error(
    method: str, sqlite_file: Path
) -> None:
    async with await SqliteConnectionRepository.open(sqlite_file) as repo:
        exc = await raised_by(PORT_CALLS[method](repo))

    assert isinstance(assert_translated(exc, SchemaError), sqlite3.OperationalError)


async def test_checking_the_schema_of_an_unmigrated_file_raises_schema_error(
    sqlite_file: Path,
) -> None:
    async with await SqliteConnectionRepository.open(sqlite_file) as repo:
        with pytest.raises(SchemaError):
            await repo.check_schema()


async def test_a_dropped_column_raises_schema_error(
    repo: SqliteConnectionRepository, raw: sqlite3.Connection
) -> None:
    raw.execute("ALTER TABLE provider_connections DROP COLUMN status_reason")

    for method in ("find_by_id", "save (insert)", "save (update)"):
        exc = await raised_by(PORT_CALLS[method](repo))
        assert isinstance(assert_translated(exc, SchemaError), sqlite3.OperationalError)


# --- a violated constraint ---------------------------------------------------


async def test_an_empty_provider_slug_that_bypassed_the_domain_violates_a_check(
    repo: SqliteConnectionRepository,
) -> None:
    connection = active()
    connection.provider_slug = ""  # the domain would refuse it; the CHECK must too

    exc = await raised_by(repo.save(connection))

    assert isinstance(assert_translated(exc, ConstraintViolationError), sqlite3.IntegrityError)
    assert connection.version == 0
    assert await repo.find_by_id(connection.id) is None


async def test_an_active_connection_without_credentials_violates_a_check_on_update(
    repo: SqliteConnectionRepository,
) -> None:
    connection = active()
    await repo.save(connection)
    connection.credentials = None

    exc = await raised_by(repo.save(connection))

    assert isinstance(assert_translated(exc, ConstraintViolationError), sqlite3.IntegrityError)
    stored = await repo.find_by_id(connection.id)
    assert stored is not None
    assert stored.credentials is not None
    assert stored.version == connection.version == 1


async def test_a_unique_index_added_outside_linkvault_raises_constraint_violation(
    repo: SqliteConnectionRepository, raw: sqlite3.Connection
) -> None:
    raw.execute(
        "CREATE UNIQUE INDEX one_alias ON provider_connections (user_id, provider_id, alias)"
    )
    first = active("shared")
    await repo.save(first)
    second = active("shared")
    second.user_id, second.provider_id = first.user_id, first.provider_id

    exc = await raised_by(repo.save(second))

    assert isinstance(assert_translated(exc, ConstraintViolationError), sqlite3.IntegrityError)


async def test_a_row_inserted_by_another_client_between_build_and_save_is_not_overwritten(
    repo: SqliteConnectionRepository, raw: sqlite3.Connection
) -> None:
    mine = active("mine")
    raw.execute(
        "INSERT INTO provider_connections (id, user_id, provider_id, provider_slug, alias,"
        " status, created_at, updated_at, version)"
        " VALUES (?, ?, ?, 'other', 'theirs', 'pending', 0, 0, 7)",
        (mine.id.bytes, uuid4().bytes, uuid4().bytes),
    )

    with pytest.raises(StaleConnectionError):
        await repo.save(mine)

    row = raw.execute(
        "SELECT alias, version FROM provider_connections WHERE id = ?", (mine.id.bytes,)
    ).fetchone()
    assert row == ("theirs", 7)


# --- a locked or broken file -------------------------------------------------


async def test_a_write_on_a_database_locked_by_another_process_raises_a_database_error(
    repo: SqliteConnectionRepository, raw: sqlite3.Connection, sqlite_file: Path
) -> None:
    connection = active()
    await repo.save(connection)
    raw.execute("BEGIN EXCLUSIVE")
    async with SqliteConnectionRepository(sqlite_file, busy_timeout=0.2) as impatient:
        try:
            connection.rename("while locked")
            started = time.monotonic()
            exc = await raised_by(impatient.save(connection))
            elapsed = time.monotonic() - started

            async def in_transaction() -> None:
                async with impatient.transaction() as tx:
                    await tx.find_by_id(connection.id)

            tx_exc = await raised_by(in_transaction())
        finally:
            raw.execute("ROLLBACK")

        connection.rename("after the lock")
        await impatient.save(connection)

    for error in (exc, tx_exc):
        cause = assert_translated(error, DatabaseError)
        assert isinstance(cause, sqlite3.OperationalError)
        assert "locked" in str(cause)
        assert not isinstance(error, SchemaError | ConstraintViolationError)
    assert elapsed < 3
    assert connection.version == 2


def overwrite_pages(path: Path) -> None:
    """Fill every page after the first (the header's) with garbage, the header kept intact."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size:] = b"\xa5" * (len(data) - page_size)
    path.write_bytes(bytes(data))


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, only garbage bytes\x00\xff" * 200)


async def test_a_file_that_is_not_a_database_raises_a_database_error(sqlite_file: Path) -> None:
    write_garbage(sqlite_file)

    exc = await raised_by(SqliteConnectionRepository.open(sqlite_file))

    assert isinstance(assert_translated(exc, DatabaseError), sqlite3.DatabaseError)


async def test_a_database_with_corrupt_pages_raises_a_database_error(sqlite_file: Path) -> None:
    async with await SqliteConnectionRepository.open(sqlite_file) as repo:
        await repo.migrate()
        connection = active()
        await repo.save(connection)
    overwrite_pages(sqlite_file)

    async with SqliteConnectionRepository(sqlite_file) as broken:
        exc = await raised_by(broken.find_by_id(connection.id))

    assert isinstance(assert_translated(exc, DatabaseError), sqlite3.DatabaseError)


# --- secrets stay out of messages -------------------------------------------


def _leaks(message: str) -> list[str]:
    forms = [SECRET_ALIAS, SECRET_BLOB.decode(), SECRET_BLOB.hex(), repr(SECRET_BLOB)]
    return [form for form in forms if form in message]


async def _check_violation(repo: SqliteConnectionRepository, raw: sqlite3.Connection) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    connection.provider_slug = ""
    await repo.save(connection)


async def _unique_violation(repo: SqliteConnectionRepository, raw: sqlite3.Connection) -> None:
    raw.execute(
        "CREATE UNIQUE INDEX one_alias ON provider_connections (user_id, provider_id, alias)"
    )
    first = active(SECRET_ALIAS, SECRET_BLOB)
    await repo.save(first)
    second = active(SECRET_ALIAS, SECRET_BLOB)
    second.user_id, second.provider_id = first.user_id, first.provider_id
    await repo.save(second)


async def _unbindable_alias(repo: SqliteConnectionRepository, raw: sqlite3.Connection) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    connection.alias = [SECRET_ALIAS]  # type: ignore[assignment]
    await repo.save(connection)


@pytest.mark.parametrize("failure", [_check_violation, _unique_violation, _unbindable_alias])
async def test_no_database_error_message_contains_parameter_values(
    failure: Callable[[SqliteConnectionRepository, sqlite3.Connection], Awaitable[None]],
    repo: SqliteConnectionRepository,
    raw: sqlite3.Connection,
) -> None:
    exc = await raised_by(failure(repo, raw))

    assert_translated(exc, DatabaseError)
    assert _leaks(str(exc)) == [], str(exc)
    assert _leaks(repr(exc)) == []
