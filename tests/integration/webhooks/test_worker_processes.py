"""`linkvault worker` processes delivering webhooks on PostgreSQL, one of them SIGKILLed."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from linkvault.crypto import AesGcmCipher, generate_key, parse_keys
from linkvault.domain import utc_now
from linkvault.services.webhooks import WebhookService
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import FakeClock
from linkvault.testing.fleet import Fleet, worker_env
from tests.factories import make, refresh_failed
from tests.integration.webhooks.conftest import Receiver

CONNECTIONS = 40
EVENTS_EACH = 3  # connection.created and two refresh_failed


async def seed(url: str, keys: str, receiver: Receiver) -> set[str]:
    """An endpoint at the receiver and the events it should get; the event ids."""
    async with await PostgresConnectionRepository.connect(url) as store:
        service = WebhookService(store, AesGcmCipher(parse_keys(keys)), allow_http_loopback=True)
        created = await service.register(receiver.url)
        receiver.secret = created.secret
        ids: set[str] = set()
        for _ in range(CONNECTIONS):
            conn = make(FakeClock(utc_now()))
            await store.save(conn)
            failed = refresh_failed(FakeClock(conn.created_at), conn.id)
            assert await store.append_events(conn.id, [failed, failed])
            ids |= {str(e.id) for e in await store.connection_events(conn.id)}
        return ids


async def held_by(url: str, owner: str | None) -> int:
    """Deliveries still leased to `owner` and not delivered."""
    assert owner is not None
    conn = await asyncpg.connect(url)
    try:
        query = (
            "SELECT count(*) FROM webhook_deliveries WHERE lease_owner = $1 AND status = 'pending'"
        )
        return int(await conn.fetchval(query, owner))
    finally:
        await conn.close()


async def eventually(what: str, check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_worker_killed_mid_delivery_loses_no_event_and_repeats_only_with_the_same_id(
    postgres_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    keys = generate_key("fleet")
    expected = await seed(postgres_url, keys, receiver)
    assert len(expected) == CONNECTIONS * EVENTS_EACH
    receiver.delay = 0.05
    env = worker_env(
        postgres_url,
        keys,
        "http://127.0.0.1:9",
        webhook_timeout_seconds="2",
        webhook_lease_seconds="7",
    )

    def delivered_ids() -> set[str]:
        return {r.webhook_id for r in receiver.delivered()}

    with Fleet(env, tmp_path) as fleet:
        victim = fleet.start("victim")
        await eventually("the victim delivers", lambda: len(receiver.received) >= 10, 60)
        others = [fleet.start(f"worker-{n}") for n in (1, 2)]
        await eventually(
            "a third delivered", lambda: len(delivered_ids()) >= len(expected) // 3, 60
        )
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        orphaned = await held_by(postgres_url, victim.owner())
        assert orphaned > 0  # killed mid-batch: its leased deliveries must lapse and be retaken
        await eventually("every event delivered", lambda: delivered_ids() >= expected, 120)
        assert all(w.running() for w in others), [w.output()[-2000:] for w in others]

    assert delivered_ids() == expected
    assert all(r.verified for r in receiver.received)
    bodies: dict[str, set[str]] = defaultdict(set)
    for r in receiver.received:
        bodies[r.webhook_id].add(repr(r.body))
    assert all(len(b) == 1 for b in bodies.values())  # a repeat is the same message
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for r in receiver.received:
        if r.webhook_id not in seen:
            seen.add(r.webhook_id)
            first_seen[r.connection_id].append(r.sequence)
    assert all(seqs == sorted(seqs) for seqs in first_seen.values()), first_seen
