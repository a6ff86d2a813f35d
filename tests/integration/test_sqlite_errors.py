"""Failures only SQLite has: a file locked by another process, a file that is no database.

The failures both databases share are tested in tests/conformance/test_errors.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    SchemaError,
)
from linkvault.stores.sqlite import SqliteConnectionRepository
from tests.factories import active, assert_translated, raised_by


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
