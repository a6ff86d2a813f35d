from __future__ import annotations

import os
from datetime import timedelta
from uuid import uuid4

import pytest

from linkvault.domain import ConnectionStatus
from linkvault.errors import ConstraintViolationError
from linkvault.stores import ConnectionStore
from linkvault.stores.common import PendingAuthorization
from linkvault.testing import FakeClock
from tests.factories import make, saved


def pending_for(connection_id: object, clock: FakeClock, minutes: int = 10) -> PendingAuthorization:
    return PendingAuthorization(
        state_hash=os.urandom(32),
        connection_id=connection_id,  # type: ignore[arg-type]
        sealed_verifier=os.urandom(80),
        redirect_uri="http://127.0.0.1:8000/v1/oauth/callback",
        return_to="https://app.example/settings",
        created_at=clock.now,
        expires_at=clock.now + timedelta(minutes=minutes),
    )


async def test_a_state_is_taken_exactly_once(store: ConnectionStore, clock: FakeClock) -> None:
    conn = await saved(store, make(clock))
    kept = pending_for(conn.id, clock)
    await store.put_state(kept)

    taken = await store.take_state(kept.state_hash)

    assert taken == kept
    assert await store.take_state(kept.state_hash) is None


async def test_an_unknown_state_gives_none(store: ConnectionStore) -> None:
    assert await store.take_state(os.urandom(32)) is None


async def test_expired_states_are_kept_a_day_then_purged_when_new_ones_arrive(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    old = pending_for(conn.id, clock, minutes=10)
    recent = pending_for(conn.id, clock, minutes=10)
    await store.put_state(old)
    await store.put_state(recent)
    clock.advance(minutes=11)
    await store.put_state(pending_for(conn.id, clock))
    # Expired, but kept: a late callback is told it expired, the worker fails its connection.
    assert await store.take_state(recent.state_hash) == recent

    clock.advance(days=1)
    await store.put_state(pending_for(conn.id, clock))

    assert await store.take_state(old.state_hash) is None


async def test_lapsed_authorizations_are_pending_connections_with_no_live_state(
    store: ConnectionStore, clock: FakeClock
) -> None:
    lapsed = await saved(store, make(clock))
    await store.put_state(pending_for(lapsed.id, clock, minutes=10))
    retried = await saved(store, make(clock))  # an earlier try lapsed, a new one is live
    await store.put_state(pending_for(retried.id, clock, minutes=10))
    await store.put_state(pending_for(retried.id, clock, minutes=30))
    reconnecting = await saved(store, make(clock, status=ConnectionStatus.EXPIRED))
    await store.put_state(pending_for(reconnecting.id, clock, minutes=10))
    await saved(store, make(clock))  # pending without any authorization: not ours to judge

    clock.advance(minutes=10)
    assert await store.lapsed_authorizations() == []  # valid up to its expiry, inclusive
    clock.advance(seconds=1)

    assert await store.lapsed_authorizations() == [lapsed.id]
    clock.advance(minutes=20)
    assert sorted(await store.lapsed_authorizations()) == sorted([lapsed.id, retried.id])
    assert len(await store.lapsed_authorizations(limit=1)) == 1


async def test_deleting_the_connection_drops_its_states(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    kept = pending_for(conn.id, clock)
    await store.put_state(kept)

    await store.delete(conn.id)

    assert await store.take_state(kept.state_hash) is None


async def test_a_state_for_a_missing_connection_is_refused(
    store: ConnectionStore, clock: FakeClock
) -> None:
    with pytest.raises(ConstraintViolationError):
        await store.put_state(pending_for(uuid4(), clock))


async def test_the_pending_authorization_repr_hides_the_verifier(clock: FakeClock) -> None:
    kept = pending_for(uuid4(), clock)
    assert kept.sealed_verifier.hex() not in repr(kept)
    assert kept.state_hash.hex() not in repr(kept)


async def test_a_state_written_inside_a_transaction_survives_its_commit(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = make(clock)
    kept = pending_for(conn.id, clock)

    async with store.transaction() as repo:
        await repo.save(conn)
        await repo.put_state(kept)

    assert await store.take_state(kept.state_hash) == kept


async def test_a_state_written_inside_a_rolled_back_transaction_is_gone(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    kept = pending_for(conn.id, clock)

    with pytest.raises(RuntimeError, match="abort"):  # noqa: PT012
        async with store.transaction() as repo:
            await repo.put_state(kept)
            raise RuntimeError("abort")

    assert await store.take_state(kept.state_hash) is None
