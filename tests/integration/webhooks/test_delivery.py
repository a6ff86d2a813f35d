"""Deliveries to a real receiver on loopback: signed, in order per connection, at least once."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from uuid import UUID

import pytest

from linkvault.services.webhooks import WebhookDispatcher, WebhookService
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock, FaultKind
from linkvault.webhooks import RETRY_DELAYS, DeliveryStatus
from tests.factories import feed_shows, make, refresh_failed, saved
from tests.integration.webhooks.conftest import Receiver
from tests.refreshing import POLICY as REFRESH_POLICY
from tests.refreshing import Bench


async def drain(dispatcher: WebhookDispatcher, *connections: UUID) -> None:
    """Work until nothing is due at the current (fake) time.

    PostgreSQL's feed holds an event back while any older transaction of the server is still
    running (another test's, another database's): wait until it shows these connections' events.
    """
    await feed_shows(dispatcher.store, *connections)
    while await dispatcher.run_once():
        pass


async def test_every_event_reaches_the_receiver_signed_with_the_event_id(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await service.register(receiver.url)
    receiver.secret = created.secret
    conn = await saved(store, make(clock))
    await store.delete(conn.id)

    await drain(dispatcher, conn.id)

    events = await store.connection_events(conn.id)
    assert [(r.webhook_id, r.body) for r in receiver.received] == [
        (str(e.id), e.payload()) for e in events
    ]
    assert all(r.verified for r in receiver.received)
    records = await service.deliveries(created.endpoint.id)
    assert [r.delivery.status for r in records] == [DeliveryStatus.DELIVERED] * 2
    assert [(a.status_code, a.error) for a in records[0].attempts] == [(204, None)]
    # The secret is in no log line, repr, event or delivery record.
    secret, key = created.secret, created.secret.removeprefix("whsec_")
    seen = caplog.text + repr(records) + repr(created) + repr(await store.read_events(limit=100))
    seen += repr(await service.list_endpoints())
    assert secret not in seen
    assert key not in seen
    assert "secret" not in repr(created)


async def test_a_cookie_a_receiver_sets_is_never_sent_back(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    created = await service.register(receiver.url)
    receiver.secret = created.secret
    receiver.set_cookie = "session=receiver-secret; Path=/"
    conn = await saved(store, make(clock))
    await store.delete(conn.id)

    await drain(dispatcher, conn.id)

    assert len(receiver.received) == 2
    assert [r.cookie for r in receiver.received] == [None, None]


async def test_a_receiver_down_then_failing_then_back_gets_everything_in_order(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    created = await service.register(receiver.url)
    receiver.secret = created.secret
    receiver.stop()  # the port is closed: connection refused
    a = await saved(store, make(clock))
    b = await saved(store, make(clock))
    assert await store.append_events(
        a.id, [refresh_failed(clock, a.id), refresh_failed(clock, a.id)]
    )
    assert await store.append_events(b.id, [refresh_failed(clock, b.id)])

    await drain(dispatcher, a.id, b.id)
    assert receiver.received == []
    receiver.start()
    receiver.answers = [500, 500, 503]
    # Through the retry schedule on the fake clock, a step (and its jitter) at a time.
    for delay in RETRY_DELAYS[:4]:
        clock.advance(seconds=delay.total_seconds() * 1.2 + 1)
        await drain(dispatcher, a.id, b.id)

    expected = {c.id: [str(e.id) for e in await store.connection_events(c.id)] for c in (a, b)}
    delivered: dict[str, list[str]] = defaultdict(list)
    for r in receiver.delivered():
        delivered[r.connection_id].append(r.webhook_id)
    assert {UUID(k): v for k, v in delivered.items()} == expected
    assert all(r.verified for r in receiver.received)
    assert sum(r.answered >= 500 for r in receiver.received) == 3
    # Every attempt of one event carried the same webhook-id, and body.
    by_id: dict[str, set[str]] = defaultdict(set)
    for r in receiver.received:
        by_id[r.webhook_id].add(repr(r.body))
    assert all(len(bodies) == 1 for bodies in by_id.values())
    records = await service.deliveries(created.endpoint.id)
    first_a = next(r for r in records if r.delivery.event_id == UUID(expected[a.id][0]))
    codes = [x.status_code for x in first_a.attempts]
    assert codes[0] is None  # refused
    assert first_a.attempts[0].error is not None
    assert codes[-1] == 204
    assert all(r.delivery.status is DeliveryStatus.DELIVERED for r in records)


async def test_a_receiver_that_never_answers_2xx_is_given_up_and_its_endpoint_disabled(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    created = await service.register(receiver.url)
    receiver.secret = created.secret
    receiver.answers = [500] * 100
    conn = await saved(store, make(clock))

    await drain(dispatcher, conn.id)
    for delay in RETRY_DELAYS:
        clock.advance(seconds=delay.total_seconds() * 1.2 + 1)
        await drain(dispatcher)

    [record] = await service.deliveries(created.endpoint.id)
    assert record.delivery.status is DeliveryStatus.FAILED
    assert len(record.attempts) == len(RETRY_DELAYS) + 1
    assert {a.status_code for a in record.attempts} == {500}
    endpoint = await service.get(created.endpoint.id)
    assert not endpoint.enabled
    assert endpoint.disabled_reason is not None
    assert "gave up" in endpoint.disabled_reason
    assert "HTTP 500" in endpoint.disabled_reason
    # A disabled endpoint gets nothing of what happens meanwhile; a replay enables it again.
    sent = len(receiver.received)
    assert await store.append_events(conn.id, [refresh_failed(clock, conn.id)])
    clock.advance(hours=2)
    await drain(dispatcher, conn.id)
    assert len(receiver.received) == sent

    replayed = await service.replay(created.endpoint.id, record.delivery.id)
    assert replayed.status is DeliveryStatus.PENDING
    receiver.answers = []
    await drain(dispatcher)
    assert [r.sequence for r in receiver.delivered()] == [1]
    assert (await service.get(created.endpoint.id)).enabled
    assert await store.append_events(conn.id, [refresh_failed(clock, conn.id)])
    await drain(dispatcher, conn.id)
    assert [r.sequence for r in receiver.delivered()] == [1, 3]


async def test_a_rolled_back_transaction_delivers_nothing(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    created = await service.register(receiver.url)
    receiver.secret = created.secret
    kept = make(clock)
    dropped = make(clock)

    async def fails() -> None:
        async with store.transaction() as tx:
            await tx.save(dropped)
            raise RuntimeError("the unit of work fails")

    with pytest.raises(RuntimeError):
        await fails()
    await store.save(kept)
    await drain(dispatcher, kept.id, dropped.id)

    assert {r.connection_id for r in receiver.received} == {str(kept.id)}


async def test_a_refresh_that_fails_then_succeeds_delivers_refresh_failed_then_recovered(
    bench: Bench,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
) -> None:
    created = await service.register(
        receiver.url, ["connection.refresh_failed", "connection.recovered"]
    )
    receiver.secret = created.secret
    conn = await bench.connection()
    bench.running.sandbox.inject_fault(FaultKind.SERVER_ERROR, count=1, status=503)
    worker = bench.worker()

    assert await worker.run_once() == 1
    bench.clock.advance(seconds=REFRESH_POLICY.backoff_base.total_seconds() * 2 + 1)
    assert await worker.run_once() == 1
    await drain(dispatcher, conn.id)

    got = [(r.body["type"], r.connection_id) for r in receiver.delivered()]
    assert got == [
        ("connection.refresh_failed", str(conn.id)),
        ("connection.recovered", str(conn.id)),
    ]
    assert all(r.verified for r in receiver.received)


async def test_n_plus_one_waits_for_n_even_when_n_plus_one_is_due_first(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    created = await service.register(receiver.url)
    receiver.secret = created.secret
    receiver.answers = [500]
    conn = await saved(store, make(clock))
    assert await store.append_events(conn.id, [refresh_failed(clock, conn.id)])

    await drain(dispatcher, conn.id)  # 1 fails and waits its retry; 2 must not overtake it
    assert [r.sequence for r in receiver.received] == [1]
    clock.advance(seconds=timedelta(seconds=7).total_seconds())
    await drain(dispatcher)

    assert [r.sequence for r in receiver.received] == [1, 1, 2]
