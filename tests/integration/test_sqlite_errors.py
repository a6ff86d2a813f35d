"""Failures only SQLite has: a file locked by another process, a file that is no database.

The failures both databases share are tested in tests/conformance/test_errors.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    SchemaError,
)
from linkvault.stores.sqlite import SqliteConnectionRepository, _switch_to_wal
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


def test_switching_a_new_file_to_wal_waits_out_a_lock_sqlite_answers_busy_at_once(
    tmp_path: Path,
) -> None:
    # Two processes opening one new file at once can each hold a lock the other needs;
    # SQLite then answers SQLITE_BUSY without calling its busy handler. Opened with no busy
    # timeout here so every busy answer is immediate: the switch itself must wait.
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    opener = sqlite3.connect(path, isolation_level=None, timeout=0)
    release = threading.Timer(0.3, holder.execute, ["COMMIT"])
    try:
        holder.execute("BEGIN EXCLUSIVE")
        release.start()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            opener.execute("PRAGMA journal_mode = WAL")

        _switch_to_wal(opener, timeout=5.0)

        assert opener.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        release.join()
        opener.close()
        holder.close()


def test_switching_to_wal_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    opener = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _switch_to_wal(opener, timeout=0.2)
        assert time.monotonic() - started >= 0.2
    finally:
        opener.close()
        holder.close()
