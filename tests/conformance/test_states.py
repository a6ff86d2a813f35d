from __future__ import annotations

import os
from datetime import timedelta
from uuid import uuid4

import pytest

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


async def test_expired_states_are_purged_when_new_ones_arrive(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock))
    old = pending_for(conn.id, clock, minutes=10)
    await store.put_state(old)
    clock.advance(minutes=11)

    await store.put_state(pending_for(conn.id, clock))

    assert await store.take_state(old.state_hash) is None


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
