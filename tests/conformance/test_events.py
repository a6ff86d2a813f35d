"""The event log, in every store: written with the change it describes, or not at all."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from linkvault.domain import ConnectionStatus
from linkvault.errors import InvalidArgumentError, NotFoundError, StaleConnectionError
from linkvault.events import ConnectionEvent, EventType, StoredEvent
from linkvault.stores import ConnectionStore
from linkvault.stores.common import ClaimRequest, ClaimResult, Refreshed
from linkvault.testing import FakeClock
from tests.factories import MARKER_USER, creds, make, read_all, saved, settled_log

LEASE = timedelta(minutes=5)


def kinds(events: list[StoredEvent]) -> list[str]:
    return [e.event.type.value for e in events]


def note(clock: FakeClock, conn_id: UUID, kind: EventType, **data: object) -> ConnectionEvent:
    return ConnectionEvent(
        type=kind,
        connection_id=conn_id,
        user_id=uuid4(),  # the store takes the row's user: this one is ignored
        provider_slug="ignored",
        occurred_at=clock.now,
        reason="provider unavailable",
        data=data,
    )


async def test_a_connection_s_life_is_logged_in_order_with_from_and_to_status(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    clock.advance(seconds=1)
    conn.mark_connected(creds(clock.now + timedelta(hours=1)), now=clock.now)
    await store.save(conn)
    conn.mark_expired("refresh token expired", now=clock.now)
    conn.mark_disconnected(now=clock.now)
    await store.save(conn)
    await store.delete(conn.id)

    events = await store.connection_events(conn.id)

    assert kinds(events) == [
        "connection.created",
        "connection.activated",
        "connection.expired",
        "connection.disconnected",
        "connection.deleted",
    ]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert [(e.event.from_status, e.event.to_status) for e in events] == [
        (None, "pending"),
        ("pending", "active"),
        ("active", "expired"),
        ("expired", "disconnected"),
        ("disconnected", None),
    ]
    assert events[2].event.reason == "refresh token expired"
    assert {e.event.user_id for e in events} == {conn.user_id}
    assert {e.event.provider_slug for e in events} == {"schwab"}
    assert len({e.id for e in events}) == 5
    assert conn.pending_events() == ()


async def test_a_save_that_is_stale_writes_no_event_and_keeps_them_pending(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    stale = await store.find_by_id(conn.id)
    assert stale is not None
    conn.mark_revoked("revoked by the user", now=clock.now)
    await store.save(conn)
    stale.mark_expired("refresh token expired", now=clock.now)

    with pytest.raises(StaleConnectionError):
        await store.save(stale)

    assert kinds(await store.connection_events(conn.id))[-1] == "connection.revoked"
    assert [e.type for e in stale.pending_events()] == [EventType.EXPIRED]


async def test_a_rolled_back_unit_of_work_leaves_no_event(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    before = await settled_log(store)

    async def fails() -> None:
        async with store.transaction() as tx:
            loaded = await tx.find_by_id(conn.id)
            assert loaded is not None
            loaded.mark_revoked("revoked", now=clock.now)
            await tx.save(loaded)
            await tx.save(make(clock))
            assert await tx.append_events(conn.id, [note(clock, conn.id, EventType.REFRESH_FAILED)])
            raise RuntimeError("the unit of work fails")

    with pytest.raises(RuntimeError):
        await fails()

    assert await settled_log(store) == before
    assert kinds(await store.connection_events(conn.id)) == [
        "connection.created",
        "connection.activated",
    ]


async def test_a_committed_unit_of_work_has_all_its_events(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))

    async with store.transaction() as tx:
        loaded = await tx.find_by_id(conn.id)
        assert loaded is not None
        loaded.mark_revoked("revoked", now=clock.now)
        await tx.save(loaded)
        other = await saved(tx, make(clock))

    assert kinds(await store.connection_events(conn.id))[-1] == "connection.revoked"
    assert kinds(await store.connection_events(other.id)) == ["connection.created"]


async def test_events_outlive_their_connection_and_a_missing_one_logs_nothing(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    await store.delete(conn.id)
    before = await settled_log(store)

    with pytest.raises(NotFoundError):
        await store.delete(conn.id)
    assert not await store.append_events(conn.id, [note(clock, conn.id, EventType.NEEDS_ATTENTION)])

    assert await settled_log(store) == before
    assert kinds(await store.connection_events(conn.id)) == [
        "connection.created",
        "connection.deleted",
    ]


async def test_appended_events_take_the_row_s_user_and_provider_and_keep_their_data(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    at = clock.now + timedelta(minutes=5)

    assert await store.append_events(
        conn.id,
        [
            note(clock, conn.id, EventType.REFRESH_FAILED, attempt=2, next_attempt_at=at),
            note(clock, conn.id, EventType.NEEDS_ATTENTION),
        ],
    )

    failed, attention = (await store.connection_events(conn.id))[-2:]
    assert (failed.sequence, attention.sequence) == (3, 4)
    assert failed.event.user_id == conn.user_id
    assert failed.event.provider_slug == "schwab"
    assert dict(failed.event.data) == {"attempt": 2, "next_attempt_at": at.isoformat()}
    assert failed.event.occurred_at == clock.now
    assert failed.payload()["data"]["attempt"] == 2


async def test_the_refresh_statements_write_their_events_only_while_the_lease_is_held(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE, expires_at=clock.now))
    assert await store.claim_due(
        "w1", ClaimRequest(timedelta(minutes=10), LEASE, limit=10, max_failures=5)
    )
    failed = note(clock, conn.id, EventType.REFRESH_FAILED, attempt=1)

    failure = ClaimResult(succeeded=False, events=[failed])
    assert await store.finish_claim(conn.id, "w2", failure) is None
    assert await store.finish_claim(conn.id, "w1", failure) == 1
    assert kinds(await store.connection_events(conn.id))[-1] == "connection.refresh_failed"

    clock.advance(minutes=1)
    assert await store.claim_due(
        "w1", ClaimRequest(timedelta(minutes=10), LEASE, limit=10, max_failures=5)
    )
    assert conn.credentials is not None
    recovered = note(clock, conn.id, EventType.RECOVERED)
    renewed = creds(clock.now + timedelta(hours=1), data=b"renewed")
    from_other = Refreshed(b"other", renewed, next_refresh_at=None, events=[recovered])
    assert not await store.complete_refresh(conn.id, "w1", from_other)
    from_held = dataclasses.replace(from_other, started_from=conn.credentials.encrypted_data)
    assert await store.complete_refresh(conn.id, "w1", from_held)

    assert kinds(await store.connection_events(conn.id)) == [
        "connection.created",
        "connection.activated",
        "connection.refresh_failed",
        "connection.recovered",
    ]


async def test_the_log_reads_in_pages_and_a_cursor_continues_where_it_stopped(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conns = [await saved(store, make(clock)) for _ in range(5)]
    everything = await settled_log(store)

    first = await store.read_events(limit=3)
    rest = await read_all(store, first[-1].cursor)
    shown = [e for e in first + rest if e.event.user_id != MARKER_USER]

    assert len(first) == 3
    assert shown == everything
    assert [e.event.connection_id for e in shown][-5:] == [c.id for c in conns]
    assert len({e.id for e in shown}) == len(shown)
    positions = [e.position for e in shown]
    assert positions == sorted(positions)
    end = rest[-1].cursor
    assert await store.read_events(end) == []

    later = await saved(store, make(clock))
    assert [e.event.connection_id for e in await settled_log(store, end)] == [later.id]


async def test_one_connection_s_events_page_by_sequence(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    conn.mark_connected(creds(), now=clock.now)
    conn.mark_disconnected(now=clock.now)
    await store.save(conn)

    assert [e.sequence for e in await store.connection_events(conn.id, limit=2)] == [1, 2]
    assert [e.sequence for e in await store.connection_events(conn.id, after=2)] == [3]
    assert await store.connection_events(uuid4()) == []


@pytest.mark.parametrize(
    "cursor",
    ["", "1", "a.1", "1.-1", "1.2.3", " 1.2", "1" * 21 + ".1", f"1.{2**63}", f"{2**64}.1"],
)
async def test_a_malformed_cursor_is_refused(store: ConnectionStore, cursor: str) -> None:
    with pytest.raises(InvalidArgumentError, match="cursor"):
        await store.read_events(cursor)


@pytest.mark.parametrize("after", [-1, True, 1.5, 2**63])
async def test_a_bad_sequence_is_refused(store: ConnectionStore, after: object) -> None:
    with pytest.raises(InvalidArgumentError, match="sequence"):
        await store.connection_events(uuid4(), after=after)  # type: ignore[arg-type]
