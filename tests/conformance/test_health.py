"""The refresh worker's record of each connection, and the needs-user-action listing."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.errors import InvalidArgumentError
from linkvault.stores import ConnectionStore
from linkvault.stores.common import ClaimResult, ConnectionFilter, ConnectionHealth, Page
from linkvault.testing import FakeClock
from tests.factories import creds, make, saved

LEASE = timedelta(minutes=5)
S = ConnectionStatus


async def fail_refresh(store: ConnectionStore, conn: ProviderConnection, times: int = 1) -> None:
    """Record `times` failed refreshes of an active connection, as the worker does."""
    for n in range(times):
        assert await store.claim_connection(conn.id, "w1", lease=LEASE) is not None
        retry_at = conn.created_at + timedelta(minutes=n + 1)
        await store.finish_claim(
            conn.id,
            "w1",
            ClaimResult(succeeded=False, next_attempt_at=retry_at, error=f"unavailable: {n}"),
        )


async def test_health_reads_each_connection_s_failures_next_try_and_last_error_at_once(
    store: ConnectionStore, clock: FakeClock
) -> None:
    failing = await saved(store, make(clock, status=S.ACTIVE, expires_at=clock.now))
    fine = await saved(store, make(clock, status=S.ACTIVE, expires_at=clock.now))
    await fail_refresh(store, failing, times=2)

    found = await store.connection_health([failing.id, fine.id, uuid4()])

    assert found == {
        failing.id: ConnectionHealth(
            failing.id, 2, clock.now + timedelta(minutes=2), "unavailable: 1"
        ),
        fine.id: ConnectionHealth(fine.id, 0, None, None),
    }
    assert await store.connection_health([]) == {}


async def test_a_success_clears_the_record(store: ConnectionStore, clock: FakeClock) -> None:
    conn = await saved(store, make(clock, status=S.ACTIVE, expires_at=clock.now))
    await fail_refresh(store, conn)
    await store.claim_connection(conn.id, "w1", lease=LEASE)

    await store.finish_claim(conn.id, "w1", ClaimResult(succeeded=True))

    assert (await store.connection_health([conn.id]))[conn.id] == ConnectionHealth(conn.id)


async def test_new_credentials_clear_the_record_and_a_rename_keeps_it(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=S.ACTIVE, expires_at=clock.now))
    await fail_refresh(store, conn, times=3)
    fresh = await store.find_by_id(conn.id)
    assert fresh is not None

    fresh.rename("kept", now=clock.now)
    await store.save(fresh)
    kept = (await store.connection_health([conn.id]))[conn.id]
    fresh.update_credentials(creds(clock.now + timedelta(hours=1), data=b"new"), now=clock.now)
    await store.save(fresh)

    assert (kept.refresh_failures, kept.last_refresh_error) == (3, "unavailable: 2")
    assert (await store.connection_health([conn.id]))[conn.id] == ConnectionHealth(conn.id)


async def needing_user(
    store: ConnectionStore, clock: FakeClock
) -> tuple[set[UUID], set[UUID], UUID]:
    """Connections that need the user (expired, revoked, failed, 3 failures) and the others."""
    need: set[UUID] = set()
    others: set[UUID] = set()
    for status in (S.EXPIRED, S.REVOKED, S.FAILED):
        need.add((await saved(store, make(clock, status=status))).id)
    for status in (S.PENDING, S.ACTIVE, S.DISCONNECTED):
        others.add((await saved(store, make(clock, status=status, expires_at=clock.now))).id)
    gave_up = await saved(store, make(clock, status=S.ACTIVE, expires_at=clock.now))
    retrying = await saved(store, make(clock, status=S.ACTIVE, expires_at=clock.now))
    await fail_refresh(store, gave_up, times=3)
    await fail_refresh(store, retrying, times=2)
    need.add(gave_up.id)
    others.add(retrying.id)
    return need, others, gave_up.id


async def test_the_needs_user_action_filter_keeps_or_leaves_out_what_only_the_user_can_fix(
    store: ConnectionStore, clock: FakeClock
) -> None:
    need, others, gave_up = await needing_user(store, clock)

    def where(flag: bool | None) -> ConnectionFilter:
        return ConnectionFilter(needs_user_action=flag, max_attempts=3)

    assert {c.id for c in await store.list_connections(where(True))} == need
    assert {c.id for c in await store.list_connections(where(False))} == others
    assert len(await store.list_connections(where(None))) == len(need | others)
    three_more = ConnectionFilter(needs_user_action=True, max_attempts=4)
    assert {c.id for c in await store.list_connections(three_more)} == need - {gave_up}


async def test_needs_user_action_pages_are_full_and_walk_every_match_once(
    store: ConnectionStore, clock: FakeClock
) -> None:
    user = uuid4()
    need: set[UUID] = set()
    for n in range(12):
        status = S.EXPIRED if n % 3 == 0 else S.ACTIVE
        conn = await saved(store, make(clock, user_id=user, status=status, expires_at=clock.now))
        if status is S.EXPIRED:
            need.add(conn.id)
    for by_user in (None, user):
        where = ConnectionFilter(user_id=by_user, needs_user_action=True)
        pages: list[list[UUID]] = []
        after = None
        while page := await store.list_connections(where, Page(after=after, limit=3)):
            pages.append([c.id for c in page])
            after = page[-1].id

        assert [len(p) for p in pages] == [3, 1]
        assert {i for p in pages for i in p} == need


@pytest.mark.parametrize("attempts", [0, -1, True])
async def test_a_bad_attempts_threshold_is_refused(store: ConnectionStore, attempts: int) -> None:
    with pytest.raises(InvalidArgumentError):
        await store.list_connections(
            ConnectionFilter(needs_user_action=True, max_attempts=attempts)
        )
