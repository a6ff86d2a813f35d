"""Webhook endpoints and deliveries, in every store: fan-out, claims, order, attempts."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from linkvault.domain import ConnectionStatus, uuid7
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock
from linkvault.webhooks import Delivery, DeliveryResult, DeliveryStatus, WebhookEndpoint
from tests.factories import feed_shows, make, refresh_failed, saved

LEASE = timedelta(seconds=30)


async def endpoint(
    store: ConnectionStore, clock: FakeClock, *types: str, url: str = "https://example.com/hook"
) -> WebhookEndpoint:
    e = WebhookEndpoint(
        uuid7(), url, frozenset(types), b"sealed-secret-bytes", True, None, clock.now, clock.now
    )
    await store.add_webhook_endpoint(e)
    return e


async def deliveries(store: ConnectionStore, e: WebhookEndpoint) -> list[Delivery]:
    return sorted(await store.webhook_deliveries(e.id, limit=1000), key=lambda d: d.sequence)


async def fan_out_all(store: ConnectionStore, *connections: UUID) -> int:
    await feed_shows(store, *connections)
    total = 0
    while moved := await store.fan_out_events(limit=7):
        total += moved
    return total


async def test_an_endpoint_round_trips_is_disabled_with_a_reason_and_removed(
    store: ConnectionStore, clock: FakeClock
) -> None:
    e = await endpoint(store, clock, "connection.expired", "connection.revoked")

    assert await store.webhook_endpoint(e.id) == e
    assert await store.webhook_endpoints() == [e]
    assert "sealed-secret-bytes" not in repr(e)

    clock.advance(seconds=5)
    assert await store.set_webhook_endpoint_enabled(e.id, False, "gave up after 30 attempts")
    off = await store.webhook_endpoint(e.id)
    assert off is not None
    assert (off.enabled, off.disabled_reason, off.updated_at) == (
        False,
        "gave up after 30 attempts",
        clock.now,
    )
    assert await store.delete_webhook_endpoint(e.id)
    assert await store.webhook_endpoint(e.id) is None
    assert not await store.delete_webhook_endpoint(e.id)
    assert not await store.set_webhook_endpoint_enabled(e.id, True)


async def test_events_fan_out_once_to_the_enabled_endpoints_that_subscribed(
    store: ConnectionStore, clock: FakeClock
) -> None:
    before = await saved(store, make(clock))  # before any endpoint: delivered to none
    clock.advance(seconds=1)
    every = await endpoint(store, clock)
    deletes = await endpoint(store, clock, "connection.deleted")
    off = await endpoint(store, clock)
    await store.set_webhook_endpoint_enabled(off.id, False, "test")
    conn = await saved(store, make(clock))
    await store.delete(conn.id)

    assert await fan_out_all(store, before.id, conn.id) == 3  # created (before), created, deleted
    assert await store.fan_out_events() == 0

    got = await deliveries(store, every)
    assert [(d.event_type, d.sequence) for d in got] == [
        ("connection.created", 1),
        ("connection.deleted", 2),
    ]
    assert {d.connection_id for d in got} == {conn.id}
    assert [d.event_type for d in await deliveries(store, deletes)] == ["connection.deleted"]
    assert await deliveries(store, off) == []
    events = await store.connection_events(conn.id)
    assert [d.event_id for d in got] == [e.id for e in events]
    assert [json.loads(d.payload) for d in got] == [e.payload() for e in events]
    assert all(d.status is DeliveryStatus.PENDING and d.attempts == 0 for d in got)
    assert before.id not in {d.connection_id for d in got}


async def test_concurrent_fan_outs_neither_skip_nor_repeat_an_event(
    store: ConnectionStore, clock: FakeClock
) -> None:
    e = await endpoint(store, clock)
    conns = [(await saved(store, make(clock))).id for _ in range(30)]
    await feed_shows(store, *conns)

    moved = await asyncio.gather(*(store.fan_out_events(limit=4) for _ in range(12)))
    moved_after = await fan_out_all(store)

    assert sum(moved) + moved_after == 30
    assert len(await deliveries(store, e)) == 30


async def test_a_rolled_back_change_is_never_fanned_out(
    store: ConnectionStore, clock: FakeClock
) -> None:
    e = await endpoint(store, clock)

    async def fails() -> None:
        async with store.transaction() as tx:
            await tx.save(make(clock))
            raise RuntimeError("the unit of work fails")

    with pytest.raises(RuntimeError):
        await fails()
    kept = await saved(store, make(clock))
    await fan_out_all(store, kept.id)

    assert [d.connection_id for d in await deliveries(store, e)] == [kept.id]


async def test_only_the_head_of_each_connection_s_chain_is_claimed_and_leases_exclude(
    store: ConnectionStore, clock: FakeClock
) -> None:
    e = await endpoint(store, clock)
    a = await saved(store, make(clock))
    b = await saved(store, make(clock))
    assert await store.append_events(
        a.id, [refresh_failed(clock, a.id), refresh_failed(clock, a.id)]
    )
    await fan_out_all(store, a.id, b.id)

    first = await store.claim_deliveries("w1", lease=LEASE, limit=10)
    assert sorted((c.delivery.connection_id, c.delivery.sequence) for c in first) == sorted(
        [(a.id, 1), (b.id, 1)]
    )
    assert {c.endpoint.id for c in first} == {e.id}
    assert await store.claim_deliveries("w2", lease=LEASE, limit=10) == []

    head_a = next(c.delivery for c in first if c.delivery.connection_id == a.id)
    done = await store.finish_delivery(
        head_a.id,
        "w1",
        DeliveryResult(DeliveryStatus.DELIVERED, 0, status_code=204),
    )
    assert done
    second = await store.claim_deliveries("w2", lease=LEASE, limit=10)
    assert [(c.delivery.connection_id, c.delivery.sequence) for c in second] == [(a.id, 2)]

    clock.advance(seconds=31)  # w1's lease on b's head lapsed: another worker takes it
    third = await store.claim_deliveries("w3", lease=LEASE, limit=10)
    assert sorted(c.delivery.connection_id for c in third) == sorted([a.id, b.id])
    late = next(c.delivery for c in first if c.delivery.connection_id == b.id)
    assert not await store.finish_delivery(
        late.id,
        "w1",
        DeliveryResult(DeliveryStatus.DELIVERED, 0, status_code=200),
    )


async def test_failed_attempts_are_recorded_retried_when_due_and_a_give_up_disables(
    store: ConnectionStore, clock: FakeClock
) -> None:
    e = await endpoint(store, clock)
    conn = await saved(store, make(clock))
    assert await store.append_events(conn.id, [refresh_failed(clock, conn.id)])
    await fan_out_all(store, conn.id)
    [claim] = await store.claim_deliveries("w1", lease=LEASE, limit=10)
    d = claim.delivery

    retry_at = clock.now + timedelta(seconds=5)
    await store.finish_delivery(
        d.id,
        "w1",
        DeliveryResult(
            DeliveryStatus.PENDING, 1, next_attempt_at=retry_at, status_code=500, error="HTTP 500"
        ),
    )
    assert await store.claim_deliveries("w1", lease=LEASE, limit=10) == []  # not due, and n+1 waits
    clock.advance(seconds=5)
    [again] = await store.claim_deliveries("w1", lease=LEASE, limit=10)
    assert (again.delivery.id, again.delivery.attempts) == (d.id, 1)
    await store.finish_delivery(
        d.id,
        "w1",
        DeliveryResult(
            DeliveryStatus.FAILED,
            2,
            error="ConnectError\x00: refused",
            disable_reason="gave up: refused",
        ),
    )

    after = await store.webhook_delivery(d.id)
    assert after is not None
    assert (after.status, after.attempts, after.last_error) == (
        DeliveryStatus.FAILED,
        2,
        "ConnectError : refused",
    )
    attempts = await store.delivery_attempts([d.id])
    assert [(a.status_code, a.error) for a in attempts] == [
        (500, "HTTP 500"),
        (None, "ConnectError : refused"),
    ]
    off = await store.webhook_endpoint(e.id)
    assert off is not None
    assert (off.enabled, off.disabled_reason) == (False, "gave up: refused")
    assert await store.claim_deliveries("w1", lease=LEASE, limit=10) == []  # disabled

    assert await store.replay_delivery(e.id, d.id)
    assert not await store.replay_delivery(uuid4(), d.id)
    await store.set_webhook_endpoint_enabled(e.id, True)
    [replayed] = await store.claim_deliveries("w1", lease=LEASE, limit=10)
    assert (replayed.delivery.id, replayed.delivery.attempts) == (d.id, 0)

    assert await store.delete_webhook_endpoint(e.id)
    assert await store.webhook_delivery(d.id) is None
    assert await store.delivery_attempts([d.id]) == []


async def test_a_given_up_head_lets_the_next_sequence_go(
    store: ConnectionStore, clock: FakeClock
) -> None:
    await endpoint(store, clock)
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    assert await store.append_events(conn.id, [refresh_failed(clock, conn.id)])
    await fan_out_all(store, conn.id)
    [head] = await store.claim_deliveries("w1", lease=LEASE, limit=10)
    await store.finish_delivery(
        head.delivery.id,
        "w1",
        DeliveryResult(DeliveryStatus.FAILED, 30, status_code=500, error="HTTP 500"),
    )

    [nxt] = await store.claim_deliveries("w1", lease=LEASE, limit=10)

    assert nxt.delivery.sequence == head.delivery.sequence + 1
