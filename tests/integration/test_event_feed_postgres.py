"""PostgreSQL's event feed never lets a cursor pass an event that commits late.

Positions come from a sequence when a row is inserted, not when its transaction commits, so
a transaction that wrote first and commits last leaves a hole behind a reader's cursor. The
feed holds back events of transactions not older than every running one.
"""

from __future__ import annotations

import asyncio

from linkvault.events import StoredEvent
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import FakeClock
from tests.factories import make, saved, settled_log


async def test_an_event_that_commits_after_a_later_one_is_not_skipped(
    postgres_store: PostgresConnectionRepository, clock: FakeClock
) -> None:
    start = await postgres_store.read_events(limit=1000)
    cursor = start[-1].cursor if start else None
    slow_saved, slow_may_commit = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        async with postgres_store.transaction() as tx:
            await saved(tx, make(clock, alias="slow"))
            slow_saved.set()
            await slow_may_commit.wait()

    slow_task = asyncio.create_task(slow())
    try:
        await slow_saved.wait()
        fast = await saved(postgres_store, make(clock, alias="fast"))

        # The fast event is committed, with a higher position than the slow one still open:
        # handing it out now would move the cursor past the slow one.
        held_back = await postgres_store.read_events(cursor)
    finally:
        slow_may_commit.set()
        await slow_task
    assert held_back == []
    events = await settled_log(postgres_store, cursor)

    assert [e.event.type.value for e in events] == ["connection.created"] * 2
    assert events[-1].event.connection_id == fast.id
    assert events[0].position < events[1].position


async def test_a_cursor_taken_mid_way_resumes_without_gaps_or_repeats(
    postgres_store: PostgresConnectionRepository, clock: FakeClock
) -> None:
    start = await postgres_store.read_events(limit=1000)
    cursor = start[-1].cursor if start else None

    async def writer(n: int) -> None:
        for _ in range(n):
            async with postgres_store.transaction() as tx:
                await saved(tx, make(clock))
                await asyncio.sleep(0)

    seen: list[StoredEvent] = []
    writers = asyncio.gather(*(writer(25) for _ in range(4)))
    while True:
        finished = writers.done()
        page = await postgres_store.read_events(cursor, limit=7)
        if page:
            seen.extend(page)
            cursor = page[-1].cursor
        elif finished:
            break
        else:
            await asyncio.sleep(0.001)
    await writers
    seen += await settled_log(postgres_store, cursor)

    assert len(seen) == 100
    assert len({e.id for e in seen}) == 100
