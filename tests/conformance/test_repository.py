from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
)
from linkvault.errors import InvalidArgumentError, NotFoundError, StaleConnectionError
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock
from tests.factories import PLAID, SCHWAB, creds, make, saved

# --- reads -------------------------------------------------------------------


async def test_unknown_id_gives_none(store: ConnectionStore) -> None:
    assert await store.find_by_id(uuid4()) is None


async def test_find_by_user_id_returns_every_status_including_disconnected(
    store: ConnectionStore, clock: FakeClock
) -> None:
    user = uuid4()
    expiry = clock.now + timedelta(hours=1)
    for status in ConnectionStatus:
        await saved(store, make(clock, user_id=user, status=status, expires_at=expiry))
    await saved(store, make(clock, status=ConnectionStatus.ACTIVE, expires_at=expiry))

    found = await store.find_by_user_id(user)

    assert sorted(c.status.value for c in found) == sorted(s.value for s in ConnectionStatus)
    assert all(c.user_id == user for c in found)


async def test_find_by_user_id_of_a_user_without_connections_is_empty(
    store: ConnectionStore,
) -> None:
    assert await store.find_by_user_id(uuid4()) == []


async def test_one_user_may_hold_several_accounts_at_one_provider(
    store: ConnectionStore, clock: FakeClock
) -> None:
    user = uuid4()
    first = await saved(store, make(clock, user_id=user, alias="Brokerage"))
    clock.advance(seconds=1)
    second = await saved(store, make(clock, user_id=user, alias="IRA"))
    await saved(store, make(clock, user_id=user, provider_id=PLAID))
    await saved(store, make(clock, provider_id=SCHWAB))

    found = await store.find_by_user_and_provider(user, SCHWAB)

    assert [c.id for c in found] == [first.id, second.id]
    assert [c.alias for c in found] == ["Brokerage", "IRA"]


async def test_find_active_by_user_returns_only_active_connections(
    store: ConnectionStore, clock: FakeClock
) -> None:
    user = uuid4()
    expiry = clock.now + timedelta(hours=1)
    by_status = {
        status: await saved(store, make(clock, user_id=user, status=status, expires_at=expiry))
        for status in ConnectionStatus
    }
    await saved(store, make(clock, status=ConnectionStatus.ACTIVE, expires_at=expiry))

    found = await store.find_active_by_user(user)

    assert [c.id for c in found] == [by_status[ConnectionStatus.ACTIVE].id]


async def test_lists_come_back_in_creation_order(store: ConnectionStore, clock: FakeClock) -> None:
    user = uuid4()
    ids = []
    for _ in range(5):
        ids.append((await saved(store, make(clock, user_id=user))).id)
        clock.advance(minutes=1)

    assert [c.id for c in await store.find_by_user_id(user)] == ids


# --- save --------------------------------------------------------------------


async def test_save_creates_then_updates(store: ConnectionStore, clock: FakeClock) -> None:
    conn = make(clock, alias="Main")
    await store.save(conn)
    assert conn.version == 1
    created = await store.find_by_id(conn.id)
    assert created == conn

    clock.advance(minutes=5)
    conn.mark_connected(creds(clock.now + timedelta(minutes=30)), now=clock.now)
    conn.rename("Retirement", now=clock.now)
    await store.save(conn)

    assert conn.version == 2
    updated = await store.find_by_id(conn.id)
    assert updated == conn
    assert updated is not None
    assert updated.status is ConnectionStatus.ACTIVE
    assert updated.alias == "Retirement"
    assert len(await store.find_by_user_id(conn.user_id)) == 1


async def test_a_saved_object_can_be_changed_and_saved_again_many_times(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    for n in range(2, 7):
        clock.advance(minutes=1)
        conn.record_sync(now=clock.now)
        await store.save(conn)
        assert conn.version == n

    stored = await store.find_by_id(conn.id)
    assert stored is not None
    assert stored.version == 6
    assert stored.last_sync_at == clock.now


async def test_a_stale_copy_is_rejected_and_the_stored_row_is_unchanged(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    first = await store.find_by_id(conn.id)
    second = await store.find_by_id(conn.id)
    assert first is not None
    assert second is not None

    first.mark_disconnected(now=clock.now)
    await store.save(first)
    second.rename("refreshed meanwhile", now=clock.now)

    with pytest.raises(StaleConnectionError) as raised:
        await store.save(second)

    assert raised.value.connection_id == conn.id
    assert second.version == 1
    stored = await store.find_by_id(conn.id)
    assert stored == first
    assert stored is not None
    assert stored.status is ConnectionStatus.DISCONNECTED


async def test_a_new_entity_reusing_a_stored_id_is_rejected(
    store: ConnectionStore, clock: FakeClock
) -> None:
    original = await saved(store, make(clock, alias="original"))
    impostor = make(clock, alias="impostor")
    impostor.id = original.id

    with pytest.raises(StaleConnectionError):
        await store.save(impostor)

    stored = await store.find_by_id(original.id)
    assert stored is not None
    assert stored.alias == "original"
    assert impostor.version == 0


async def test_saving_a_loaded_copy_after_a_hard_delete_does_not_resurrect_it(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    await store.delete(conn.id)
    conn.record_sync(now=clock.now)

    with pytest.raises(StaleConnectionError):
        await store.save(conn)

    assert await store.find_by_id(conn.id) is None


async def test_of_two_concurrent_saves_of_one_version_exactly_one_wins(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    copies = [await store.find_by_id(conn.id) for _ in range(8)]
    for n, copy in enumerate(copies):
        assert copy is not None
        copy.rename(f"writer {n}", now=clock.now)

    results = await asyncio.gather(
        *(store.save(c) for c in copies if c is not None), return_exceptions=True
    )

    winners = [n for n, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, StaleConnectionError) for r in results if r is not None)
    stored = await store.find_by_id(conn.id)
    assert stored is not None
    assert stored.alias == f"writer {winners[0]}"
    assert stored.version == 2


async def test_returned_entities_are_independent_of_the_store(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, alias="kept"))
    loaded = await store.find_by_id(conn.id)
    assert loaded is not None
    loaded.rename("changed but not saved", now=clock.now)
    conn.rename("also not saved", now=clock.now)

    again = await store.find_by_id(conn.id)
    assert again is not None
    assert again.alias == "kept"


@pytest.mark.parametrize("status", list(ConnectionStatus))
async def test_every_status_and_its_reason_round_trip(
    store: ConnectionStore, clock: FakeClock, status: ConnectionStatus
) -> None:
    conn = await saved(store, make(clock, status=status, expires_at=clock.now + timedelta(hours=2)))

    stored = await store.find_by_id(conn.id)

    assert stored == conn
    assert stored is not None
    assert stored.status is status
    assert stored.status_reason == conn.status_reason


# --- delete ------------------------------------------------------------------


async def test_delete_removes_the_connection(store: ConnectionStore, clock: FakeClock) -> None:
    conn = await saved(store, make(clock))
    other = await saved(store, make(clock, user_id=conn.user_id))

    await store.delete(conn.id)

    assert await store.find_by_id(conn.id) is None
    assert [c.id for c in await store.find_by_user_id(conn.user_id)] == [other.id]


async def test_delete_of_a_missing_id_raises_not_found(store: ConnectionStore) -> None:
    missing = uuid4()
    with pytest.raises(NotFoundError) as raised:
        await store.delete(missing)
    assert raised.value.connection_id == missing


async def test_delete_twice_raises_not_found_the_second_time(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    await store.delete(conn.id)
    with pytest.raises(NotFoundError):
        await store.delete(conn.id)


# --- find_expiring_soon --------------------------------------------------------


async def test_find_expiring_soon_at_its_boundaries(
    store: ConnectionStore, clock: FakeClock
) -> None:
    now = clock.now

    def active(expires_at: datetime | None) -> ProviderConnection:
        return make(clock, status=ConnectionStatus.ACTIVE, expires_at=expires_at)

    at_threshold = await saved(store, active(now + timedelta(minutes=30)))
    inside = await saved(store, active(now + timedelta(minutes=10)))
    already_past = await saved(store, active(now - timedelta(hours=3)))
    at_now = await saved(store, active(now))
    just_beyond = await saved(store, active(now + timedelta(minutes=30, microseconds=1)))
    never = await saved(store, active(None))
    expired = await saved(
        store, make(clock, status=ConnectionStatus.EXPIRED, expires_at=now + timedelta(minutes=1))
    )
    revoked = await saved(
        store, make(clock, status=ConnectionStatus.REVOKED, expires_at=now + timedelta(minutes=1))
    )

    due = {c.id for c in await store.find_expiring_soon()}

    assert due == {at_threshold.id, inside.id, already_past.id, at_now.id}
    assert not due & {just_beyond.id, never.id, expired.id, revoked.id}


async def test_find_expiring_soon_with_zero_minutes_returns_what_is_due_now(
    store: ConnectionStore, clock: FakeClock
) -> None:
    now = clock.now
    at_now = await saved(store, make(clock, status=ConnectionStatus.ACTIVE, expires_at=now))
    past = await saved(
        store,
        make(clock, status=ConnectionStatus.ACTIVE, expires_at=now - timedelta(seconds=1)),
    )
    await saved(
        store,
        make(clock, status=ConnectionStatus.ACTIVE, expires_at=now + timedelta(seconds=1)),
    )

    due = await store.find_expiring_soon(minutes=0)

    assert {c.id for c in due} == {at_now.id, past.id}


async def test_find_expiring_soon_follows_the_clock(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(
        store,
        make(clock, status=ConnectionStatus.ACTIVE, expires_at=clock.now + timedelta(hours=2)),
    )
    assert await store.find_expiring_soon(minutes=60) == []

    clock.advance(minutes=61)

    assert [c.id for c in await store.find_expiring_soon(minutes=60)] == [conn.id]


async def test_find_expiring_soon_orders_the_most_urgent_first(
    store: ConnectionStore, clock: FakeClock
) -> None:
    later = await saved(
        store,
        make(clock, status=ConnectionStatus.ACTIVE, expires_at=clock.now + timedelta(minutes=20)),
    )
    sooner = await saved(
        store,
        make(clock, status=ConnectionStatus.ACTIVE, expires_at=clock.now + timedelta(minutes=2)),
    )

    assert [c.id for c in await store.find_expiring_soon()] == [sooner.id, later.id]


@pytest.mark.parametrize("minutes", [-1, True, 1.5, "30", 10**9])
async def test_find_expiring_soon_rejects_a_bad_window(
    store: ConnectionStore, minutes: object
) -> None:
    with pytest.raises(InvalidArgumentError):
        await store.find_expiring_soon(minutes=minutes)  # type: ignore[arg-type]


# --- values round trip ---------------------------------------------------------


async def test_datetimes_come_back_as_equal_timezone_aware_utc(
    store: ConnectionStore, clock: FakeClock
) -> None:
    kolkata = timezone(timedelta(hours=5, minutes=30))
    stamp = datetime(2026, 7, 14, 23, 59, 58, 123456, tzinfo=kolkata)
    conn = ProviderConnection(
        user_id=uuid4(),
        provider_id=SCHWAB,
        provider_slug="schwab",
        created_at=stamp,
        updated_at=stamp + timedelta(microseconds=1),
    )
    conn.mark_connected(creds(datetime(2030, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)), now=stamp)
    conn.record_sync(now=stamp + timedelta(days=400))
    await store.save(conn)

    stored = await store.find_by_id(conn.id)

    assert stored is not None
    for value in (
        stored.created_at,
        stored.updated_at,
        stored.connected_at,
        stored.last_sync_at,
        stored.credentials.expires_at if stored.credentials else None,
    ):
        assert value is not None
        assert value.utcoffset() == timedelta(0)
    assert stored.created_at == stamp
    assert stored.connected_at == stamp
    assert stored.last_sync_at == stamp + timedelta(days=400)
    assert stored.credentials is not None
    assert stored.credentials.expires_at == datetime(2030, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)


@pytest.mark.parametrize(
    "payload",
    [
        bytes(range(256)) * 4,
        b"\x00" * 17,
        os.urandom(600),
        os.urandom(64 * 1024),
    ],
    ids=["every-byte-value", "nul-bytes", "600-bytes", "64-KiB"],
)
async def test_credential_bytes_round_trip_byte_for_byte(
    store: ConnectionStore, clock: FakeClock, payload: bytes
) -> None:
    conn = make(clock)
    conn.mark_connected(creds(data=payload, kind=CredentialType.API_KEY), now=clock.now)
    await store.save(conn)

    stored = await store.find_by_id(conn.id)

    assert stored is not None
    assert stored.credentials is not None
    assert stored.credentials.encrypted_data == payload
    assert stored.credentials.credential_type is CredentialType.API_KEY
    assert stored.credentials.expires_at is None


@pytest.mark.parametrize(
    "alias",
    [
        "Épargne retraite",
        "招商证券 主账户",
        "💼 Brokerage 🇺🇸",
        "حساب التداول",
        "e\u0301\u0301",
        "'; --",
    ],
)
async def test_unicode_aliases_round_trip(
    store: ConnectionStore, clock: FakeClock, alias: str
) -> None:
    conn = await saved(store, make(clock, alias=alias))

    stored = await store.find_by_id(conn.id)

    assert stored is not None
    assert stored.alias == alias


# --- transactions --------------------------------------------------------------


async def test_a_transaction_commits_everything_together(
    store: ConnectionStore, clock: FakeClock
) -> None:
    kept = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    new = make(clock)

    async with store.transaction() as repo:
        await repo.save(new)
        await repo.delete(kept.id)
        assert await repo.find_by_id(new.id) is not None

    assert await store.find_by_id(new.id) == new
    assert await store.find_by_id(kept.id) is None


async def test_a_transaction_rolls_everything_back_when_the_block_raises(
    store: ConnectionStore, clock: FakeClock
) -> None:
    kept = await saved(store, make(clock, status=ConnectionStatus.ACTIVE, alias="before"))
    new = make(clock)

    class BoomError(Exception):
        pass

    with pytest.raises(BoomError):  # noqa: PT012
        async with store.transaction() as repo:
            await repo.save(new)
            loaded = await repo.find_by_id(kept.id)
            assert loaded is not None
            loaded.rename("after", now=clock.now)
            await repo.save(loaded)
            await repo.delete(kept.id)
            raise BoomError

    assert await store.find_by_id(new.id) is None
    stored = await store.find_by_id(kept.id)
    assert stored is not None
    assert stored.alias == "before"
    assert stored.version == 1


async def test_a_stale_save_inside_a_transaction_rolls_back_the_whole_unit(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    stale = await store.find_by_id(conn.id)
    assert stale is not None
    conn.rename("newer", now=clock.now)
    await store.save(conn)
    sibling = make(clock, user_id=conn.user_id)

    with pytest.raises(StaleConnectionError):  # noqa: PT012
        async with store.transaction() as repo:
            await repo.save(sibling)
            stale.rename("older", now=clock.now)
            await repo.save(stale)

    assert await store.find_by_id(sibling.id) is None
    stored = await store.find_by_id(conn.id)
    assert stored is not None
    assert stored.alias == "newer"
