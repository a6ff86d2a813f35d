"""PostgreSQL's feed is in transaction order, not in each connection's sequence order: a
delivery still waits for an earlier event of its connection that the fan-out has not reached."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from linkvault.domain import uuid7
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import FakeClock
from linkvault.webhooks import DeliveryResult, DeliveryStatus, WebhookEndpoint
from tests.factories import feed_shows, make, refresh_failed, saved

LEASE = timedelta(seconds=30)


async def test_a_later_sequence_fanned_out_first_waits_for_the_earlier_one(
    postgres_store: PostgresConnectionRepository, clock: FakeClock
) -> None:
    store = postgres_store
    e = WebhookEndpoint(
        uuid7(), "https://a.example", frozenset(), b"x", True, None, clock.now, clock.now
    )
    await store.add_webhook_endpoint(e)
    a = await saved(store, make(clock))
    # T1 starts first (it writes, so it holds a transaction id), T2 starts and commits sequence
    # 2 of `a`, then T1 writes sequence 3 of `a` and commits: the feed lists T1's events first.
    async with store.transaction() as t1:
        b = await saved(t1, make(clock))
        assert await store.append_events(a.id, [refresh_failed(clock, a.id)])
        assert await t1.append_events(a.id, [refresh_failed(clock, a.id)])
    await feed_shows(store, a.id, b.id)
    feed = [(ev.event.connection_id, ev.sequence) for ev in await store.read_events(limit=100)]
    assert feed.index((a.id, 3)) < feed.index((a.id, 2))

    await store.fan_out_events(limit=feed.index((a.id, 3)) + 1)  # up to sequence 3, not 2
    order = await deliver_all(store)
    assert (a.id, 3) not in order  # sequence 2 is not even fanned out yet
    while await store.fan_out_events(limit=100):
        pass
    order += await deliver_all(store)

    assert [s for c, s in order if c == a.id] == [1, 2, 3]


async def deliver_all(store: PostgresConnectionRepository) -> list[tuple[UUID, int]]:
    """Claim and mark delivered until nothing is claimable; what was delivered, in order."""
    order = []
    while claims := await store.claim_deliveries("w", lease=LEASE, limit=10):
        for c in claims:
            order.append((c.delivery.connection_id, c.delivery.sequence))
            await store.finish_delivery(
                c.delivery.id,
                "w",
                DeliveryResult(DeliveryStatus.DELIVERED, 0, status_code=200),
            )
    return order
