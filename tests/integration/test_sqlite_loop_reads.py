"""SQLite point reads on the event loop's thread: they never wait for a writer or a worker."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from linkvault.domain import ConnectionStatus
from linkvault.stores.sqlite import SqliteConnectionRepository
from tests.factories import active


async def test_a_point_read_is_answered_while_a_unit_of_work_holds_the_only_worker(
    sqlite_file: Path,
) -> None:
    async with await SqliteConnectionRepository.open(sqlite_file, pool_size=1) as store:
        await store.migrate()
        conn = active()
        await store.save(conn)
        saved = await store.find_by_id(conn.id)
        assert saved is not None
        async with store.transaction() as tx:
            saved.mark_disconnected()
            await tx.save(saved)  # the write lock and the pool's one worker are held
            # Served on this thread from the last commit: not the uncommitted change.
            seen = await asyncio.wait_for(store.find_by_id(conn.id), timeout=5)
            assert seen is not None
            assert seen.status is ConnectionStatus.ACTIVE
            mine = await asyncio.wait_for(store.find_active_by_user(conn.user_id), timeout=5)
            assert [c.id for c in mine] == [conn.id]
            # Inside the unit of work, reads see its own writes.
            inside = await tx.find_by_id(conn.id)
            assert inside is not None
            assert inside.status is ConnectionStatus.DISCONNECTED
        after = await store.find_by_id(conn.id)
        assert after is not None
        assert after.status is ConnectionStatus.DISCONNECTED


async def test_a_point_read_does_not_wait_on_another_process_holding_the_write_lock(
    sqlite_file: Path,
) -> None:
    async with await SqliteConnectionRepository.open(sqlite_file) as store:
        await store.migrate()
        conn = active()
        await store.save(conn)
    holder = sqlite3.connect(sqlite_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE provider_connections SET alias = 'held' WHERE id = ?", (conn.id.bytes,))
    try:
        async with await SqliteConnectionRepository.open(sqlite_file) as store:
            found = await asyncio.wait_for(store.find_by_id(conn.id), timeout=5)
            assert found is not None
            assert found.alias == conn.alias  # the holder's change is not committed
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_store_used_from_another_thread_reads_through_its_workers(
    sqlite_file: Path,
) -> None:
    async with await SqliteConnectionRepository.open(sqlite_file) as store:
        await store.migrate()
        conn = active()
        await store.save(conn)
        assert await store.find_by_id(conn.id) is not None  # the reader now lives here
        found: list[object] = []

        def elsewhere() -> None:
            async def read() -> None:
                found.append(await store.find_by_id(conn.id))

            asyncio.run(read())

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(10)
        assert len(found) == 1
        assert found[0] is not None
