"""Leases held only while work is live, lost answers replayed, schedules that fit the token,
and a provider circuit: the refresh worker in one process, against every store and the sandbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from linkvault.credentials import OAuth2Tokens, open_credentials, seal_credentials
from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.domain import ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import ConfigurationError
from linkvault.oauth import HttpxTokenClient
from linkvault.providers import Provider, ProviderRegistry, load_registry
from linkvault.services.refresh import Outcome, RefreshPolicy, RefreshWorker, token_fingerprint
from linkvault.stores.common import AttemptStart, ClaimRequest
from linkvault.stores.sqlite import SqliteConnectionRepository
from linkvault.testing import FaultKind, RunningSandbox, sandbox_in_thread
from tests.refreshing import POLICY, Bench, WatchedTokenClient


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def with_grace(registry: ProviderRegistry, seconds: int) -> ProviderRegistry:
    provider = registry.get("sandbox")
    grace = timedelta(seconds=seconds)
    return registry.replace(dataclasses.replace(provider, refresh_token_reuse_grace=grace))


# --- configuration -----------------------------------------------------------------------


def test_a_lease_that_cannot_outlast_a_connect_and_a_heartbeat_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigurationError, match="too short") as caught:
        RefreshPolicy(lease=timedelta(seconds=5), connect_timeout=5.0).check()
    assert "LINKVAULT_REFRESH_LEASE_SECONDS" in str(caught.value)
    with pytest.raises(ConfigurationError, match="twice per lease"):
        RefreshPolicy(lease=timedelta(seconds=10), heartbeat=timedelta(seconds=6)).check()
    RefreshPolicy(lease=timedelta(seconds=5)).check()  # the defaults fit a 5-second lease


async def test_a_worker_refuses_to_start_on_a_lease_it_cannot_keep(bench: Bench) -> None:
    with pytest.raises(ConfigurationError):
        bench.worker(RefreshPolicy(lease=timedelta(seconds=3), connect_timeout=3.0))


# --- fencing -----------------------------------------------------------------------------


async def test_a_worker_whose_lease_was_taken_over_sends_nothing(bench: Bench) -> None:
    conn = await bench.connection()
    slow, fast = bench.worker(owner="slow"), bench.worker(owner="fast")
    [stale_claim] = await bench.store.claim_due(
        "slow", ClaimRequest(POLICY.horizon, POLICY.lease, limit=10, max_failures=3)
    )
    bench.clock.advance(seconds=POLICY.lease.total_seconds() + 1)
    [live_claim] = await bench.store.claim_due(
        "fast", ClaimRequest(POLICY.horizon, POLICY.lease, limit=10, max_failures=3)
    )

    assert await slow.refresh_one(stale_claim) is Outcome.LEASE_LOST
    assert bench.refresh_requests() == 0
    assert await fast.refresh_one(live_claim) is Outcome.REFRESHED
    assert bench.refresh_requests() == 1
    assert (await bench.tokens_of(conn.id)).refresh_token == bench.grant()["refresh_token"]


async def test_success_stores_the_tokens_and_closes_the_lease_together(bench: Bench) -> None:
    conn = await bench.connection(alias="kept")
    worker = bench.worker()

    assert await worker.run_once() == 1

    stored = await bench.stored(conn.id)
    assert (stored.alias, stored.version) == ("kept", conn.version + 1)
    assert await bench.store.claim_connection(conn.id, "other", lease=POLICY.lease) is not None


# --- lost answers --------------------------------------------------------------------------


async def lose_one_answer(bench: Bench) -> RefreshWorker:
    """One refresh whose answer comes after the client gave up; the sandbox served it."""
    bench.running.sandbox.inject_fault(FaultKind.SLOW, count=1, delay=0.4)
    async with WatchedTokenClient(timeout=0.1) as impatient:
        worker = bench.worker(tokens=impatient)
        assert await worker.run_once() == 1
    assert worker.metrics.outcomes[Outcome.ANSWER_LOST] == 1
    await until(lambda: bench.grant()["refreshes"] == 1)
    return worker


async def test_a_lost_answer_is_not_a_failure_and_is_replayed_at_once(bench: Bench) -> None:
    conn = await bench.connection()
    await lose_one_answer(bench)

    stored = await bench.stored(conn.id)
    assert (stored.status, stored.status_reason) == (ConnectionStatus.ACTIVE, None)
    [claim] = await bench.store.claim_due(
        "next", ClaimRequest(POLICY.horizon, POLICY.lease, limit=10, max_failures=1)
    )
    assert claim.failures == 0
    assert claim.lost is not None
    assert claim.lost.how == "read timeout"
    spent = (await bench.tokens_of(conn.id)).refresh_token
    assert spent is not None
    assert claim.lost.fingerprint == token_fingerprint(spent)
    assert spent not in repr(claim)


async def test_a_replay_inside_the_providers_grace_gets_the_lost_tokens(bench: Bench) -> None:
    bench.running.sandbox.settings.update({"refresh_token_reuse_grace": 30})
    bench.registry = with_grace(bench.registry, 30)
    conn = await bench.connection()
    await lose_one_answer(bench)

    worker = bench.worker()
    assert await worker.run_once() == 1

    assert worker.metrics.refreshed == 1
    grant = bench.grant()
    assert (grant["refreshes"], grant["grace_replays"], grant["revoked"]) == (1, 1, False)
    tokens = await bench.tokens_of(conn.id)
    assert (tokens.access_token, tokens.refresh_token) == (
        grant["access_token"],
        grant["refresh_token"],
    )


async def test_a_replay_the_provider_refuses_expires_the_connection_naming_the_lost_answer(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await bench.connection()
    await lose_one_answer(bench)

    with caplog.at_level(logging.INFO, logger="linkvault.refresher"):
        assert await bench.worker().run_once() == 1

    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.EXPIRED
    assert stored.status_reason == (
        "refresh answer lost because of a read timeout; the provider allows no replay: reconnect"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(stored.status_reason in m for m in warnings)
    assert not any("concurrent change" in r.getMessage() for r in caplog.records)


async def test_a_worker_that_stopped_mid_request_leaves_a_replay_for_the_next_one(
    bench: Bench,
) -> None:
    conn = await bench.connection()
    await bench.store.claim_due(
        "crashed", ClaimRequest(POLICY.horizon, POLICY.lease, limit=10, max_failures=3)
    )
    current = await bench.tokens_of(conn.id)
    assert current.refresh_token is not None
    assert conn.credentials is not None
    attempt = AttemptStart(
        conn.id, token_fingerprint(current.refresh_token), conn.credentials.encrypted_data
    )
    assert await bench.store.begin_attempts("crashed", lease=POLICY.lease, attempts=[attempt])
    # The request reaches the provider; its answer dies with the worker.
    await bench.tokens.refresh(bench.provider, refresh_token=current.refresh_token)
    bench.clock.advance(seconds=POLICY.lease.total_seconds() + 1)

    assert await bench.worker().run_once() == 1

    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.EXPIRED
    assert stored.status_reason == (
        "refresh answer lost when a worker stopped; the provider allows no replay: reconnect"
    )


# --- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", [120, 300])
async def test_each_token_is_refreshed_once_in_its_life_and_before_it_expires(
    bench: Bench, lifetime: int
) -> None:
    bench.running.sandbox.settings.update({"access_token_ttl": lifetime})
    conns = [
        await bench.connection(f"user-{n}", expires_in=timedelta(seconds=lifetime))
        for n in range(10)
    ]
    worker = bench.worker()
    step, total = 5, 30 * 60
    refreshed_at: dict[object, list[float]] = {c.id: [0.0] for c in conns}
    expiry = {c.id: float(lifetime) for c in conns}
    for elapsed in range(step, total + 1, step):
        bench.clock.advance(seconds=step)
        await worker.run_once()
        for c in conns:
            tokens = await bench.tokens_of(c.id)
            assert tokens.expires_at is not None
            new_expiry = (
                tokens.expires_at - (bench.clock.now - timedelta(seconds=elapsed))
            ).total_seconds()
            if new_expiry != expiry[c.id]:
                assert elapsed < expiry[c.id], "refreshed only after the token expired"
                refreshed_at[c.id].append(elapsed)
                expiry[c.id] = new_expiry

    for times in refreshed_at.values():
        # A grant saved from outside carries no issue time: it is due by the horizon alone, so
        # its first refresh may come at once. From then on, each token has its own schedule.
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert min(gaps) >= 0.75 * lifetime - step, f"refreshed in a loop: {gaps}"
        assert max(gaps) <= 0.85 * lifetime + step
        refreshes = len(times) - 1
        assert total / (0.85 * lifetime) - 1 <= refreshes <= total / (0.75 * lifetime) + 1
    assert bench.stats()["refused_total"] == 0


# --- the provider's circuit ------------------------------------------------------------------


async def test_a_failing_provider_opens_a_circuit_that_pauses_it_without_using_attempts(
    bench: Bench,
) -> None:
    conns = [await bench.connection(f"user-{n}") for n in range(8)]
    bench.running.sandbox.inject_fault(FaultKind.SERVER_ERROR, count=None, status=503)
    policy = dataclasses.replace(POLICY, concurrency=2, max_attempts=3, circuit_threshold=3)
    worker = bench.worker(policy)

    handled = await worker.run_once()

    assert handled == 8
    assert worker.metrics.outcomes[Outcome.UNAVAILABLE] == 3
    assert worker.metrics.outcomes[Outcome.PAUSED] == 5
    assert worker.metrics.circuits_opened == 1
    circuits = await bench.store.open_circuits()
    assert set(circuits) == {"sandbox"}
    assert await worker.run_once() == 0, "an open circuit pauses every claim for the provider"
    other = bench.worker(policy, owner="other-worker")
    assert await other.run_once() == 0, "every worker sees the circuit"

    bench.running.sandbox.clear_faults()
    bench.clock.advance(seconds=policy.backoff_max.total_seconds())
    while await worker.run_once():
        bench.clock.advance(seconds=1)

    assert await bench.store.open_circuits() == {}
    for c in conns:
        stored = await bench.stored(c.id)
        assert stored.status is ConnectionStatus.ACTIVE
    assert worker.metrics.refreshed == 8
    assert bench.refreshes_issued() == 8


async def test_a_failed_probe_reopens_the_circuit_for_longer(bench: Bench) -> None:
    await bench.connection("a")
    await bench.connection("b")
    bench.running.sandbox.inject_fault(FaultKind.SERVER_ERROR, count=None, status=503)
    policy = dataclasses.replace(POLICY, concurrency=1, max_attempts=5, circuit_threshold=1)
    worker = bench.worker(policy)

    await worker.run_once()
    first = (await bench.store.open_circuits())["sandbox"]
    bench.clock.now = first + timedelta(seconds=1)
    bench.clock.advance(seconds=policy.backoff_max.total_seconds())
    await worker.run_once()
    second = (await bench.store.open_circuits())["sandbox"]

    assert second - bench.clock.now >= policy.circuit_open * 2 - timedelta(seconds=1)
    assert worker.metrics.circuits_opened == 2


# --- heartbeats, on a real clock ---------------------------------------------------------------


@pytest.fixture
async def real_clock_store(tmp_path: Path) -> AsyncIterator[SqliteConnectionRepository]:
    store = await SqliteConnectionRepository.open(tmp_path / "leases.db")
    async with store:
        await store.migrate()
        yield store


async def seed_one(
    store: SqliteConnectionRepository, running: RunningSandbox, cipher: AesGcmCipher
) -> ProviderConnection:
    provider = load_registry(env=running.env()).get("sandbox")
    return await seed_due(store, running, provider, cipher, utc_now() + timedelta(minutes=5))


SHORT = RefreshPolicy(lease=timedelta(seconds=2), connect_timeout=0.5, idle_poll=0.05)


async def test_a_heartbeat_keeps_the_lease_of_a_request_slower_than_the_lease(
    real_clock_store: SqliteConnectionRepository, running_sandbox: RunningSandbox
) -> None:
    cipher = AesGcmCipher(KeyRing([Key.generate("k1")]))
    conn = await seed_one(real_clock_store, running_sandbox, cipher)
    running_sandbox.sandbox.inject_fault(FaultKind.SLOW, count=1, delay=3.0)
    registry = load_registry(env=running_sandbox.env())
    async with HttpxTokenClient() as tokens:
        worker = RefreshWorker(real_clock_store, registry, tokens, cipher, policy=SHORT)
        [claim] = await real_clock_store.claim_due(
            worker.owner, ClaimRequest(SHORT.horizon, SHORT.lease, limit=1, max_failures=8)
        )
        refreshing = asyncio.create_task(worker.refresh_one(claim))
        rival_got = []
        while not refreshing.done():
            rival_got.append(
                await real_clock_store.claim_connection(conn.id, "rival", lease=SHORT.lease)
            )
            await asyncio.sleep(0.2)

    assert refreshing.result() is Outcome.REFRESHED
    assert len(rival_got) >= 10
    assert all(got is None for got in rival_got), "the lease lapsed under a live request"
    [grant] = running_sandbox.sandbox.grants(running_sandbox.sandbox.grants()[0]["subject"])
    assert grant["refreshes"] == 1
    stored = await real_clock_store.find_by_id(conn.id)
    assert stored is not None
    assert stored.credentials is not None
    opened = open_credentials(
        stored.credentials, connection_id=conn.id, cipher=cipher, expect=OAuth2Tokens
    )
    assert opened.refresh_token == grant["refresh_token"]


async def test_a_worker_that_loses_its_lease_abandons_the_request_and_leaves_a_replay(
    real_clock_store: SqliteConnectionRepository,
    running_sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    cipher = AesGcmCipher(KeyRing([Key.generate("k1")]))
    conn = await seed_one(real_clock_store, running_sandbox, cipher)
    running_sandbox.sandbox.inject_fault(FaultKind.SLOW, count=1, delay=4.0)
    registry = load_registry(env=running_sandbox.env())
    async with HttpxTokenClient() as tokens:
        worker = RefreshWorker(real_clock_store, registry, tokens, cipher, policy=SHORT)
        [claim] = await real_clock_store.claim_due(
            worker.owner, ClaimRequest(SHORT.horizon, SHORT.lease, limit=1, max_failures=8)
        )
        refreshing = asyncio.create_task(worker.refresh_one(claim))
        await until(lambda: running_sandbox.sandbox.stats()["faults"].get("slow", 0) == 1)
        # Another party takes the row behind the worker's back (an operator, a split brain).
        with sqlite3.connect(tmp_path / "leases.db") as db:
            db.execute("UPDATE provider_connections SET refresh_lease_owner = 'thief'")
        outcome = await asyncio.wait_for(refreshing, timeout=3.0)

    assert outcome is Outcome.LEASE_LOST
    with sqlite3.connect(tmp_path / "leases.db") as db:
        db.execute("UPDATE provider_connections SET refresh_lease_until = 0")
    [next_claim] = await real_clock_store.claim_due(
        "next", ClaimRequest(SHORT.horizon, SHORT.lease, limit=1, max_failures=8)
    )
    assert next_claim.connection.id == conn.id
    assert next_claim.lost is not None
    assert next_claim.lost.how is None  # the worker that sent it stopped waiting


# --- one slow provider does not hold the others up ---------------------------------------


async def test_a_slow_provider_keeps_a_short_queue_and_leaves_the_slots_to_the_others(
    real_clock_store: SqliteConnectionRepository, running_sandbox: RunningSandbox
) -> None:
    cipher = AesGcmCipher(KeyRing([Key.generate("k1")]))
    with sandbox_in_thread() as slow_bank:
        # The slow bank serves one token request at a time, 0.4 s each.
        slow_bank.sandbox.settings.update({"capacity": 1, "service_time": 0.4})
        fast = load_registry(env=running_sandbox.env()).get("sandbox")
        slow = dataclasses.replace(fast, slug="slow-bank", id=uuid4(), base_url=slow_bank.url)
        registry = ProviderRegistry([*load_registry(env=running_sandbox.env()), slow])
        due = utc_now() + timedelta(minutes=1)
        early = due - timedelta(seconds=30)
        # The slow bank's connections come due first, so a first-come claim takes them all.
        slow_ids = [
            (await seed_due(real_clock_store, slow_bank, slow, cipher, early)).id for _ in range(20)
        ]
        fast_ids = [
            (await seed_due(real_clock_store, running_sandbox, fast, cipher, due)).id
            for _ in range(24)
        ]
        policy = dataclasses.replace(SHORT, concurrency=8)
        async with HttpxTokenClient() as tokens:
            worker = RefreshWorker(real_clock_store, registry, tokens, cipher, policy=policy)
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            try:
                await until(lambda: refreshed(running_sandbox) == 24, 20.0)
                slow_done_meanwhile = refreshed(slow_bank)
                await until(lambda: refreshed(slow_bank) == 20, 30.0)
            finally:
                stop.set()
                await running
        slow_grants = slow_bank.sandbox.grants()

    # Without per-provider queues the eight slots fill with slow-bank claims waiting in line
    # and the fast provider starts only once most of them are served.
    assert slow_done_meanwhile <= 5, f"the fast provider waited for {slow_done_meanwhile}"
    assert all(grant["refreshes"] == 1 for grant in slow_grants)
    assert refreshed(running_sandbox) == 24
    for conn_id in [*slow_ids, *fast_ids]:
        stored = await real_clock_store.find_by_id(conn_id)
        assert stored is not None
        assert stored.status is ConnectionStatus.ACTIVE


def refreshed(running: RunningSandbox) -> int:
    issued: int = running.sandbox.stats()["issued"].get("refresh_token", 0)
    return issued


async def seed_due(
    store: SqliteConnectionRepository,
    running: RunningSandbox,
    provider: Provider,
    cipher: AesGcmCipher,
    expires_at: datetime,
) -> ProviderConnection:
    [grant] = running.sandbox.seed_grants([f"user-{uuid4()}"])
    now = utc_now()
    conn = ProviderConnection(
        user_id=uuid4(),
        provider_id=provider.id,
        provider_slug=provider.slug,
        created_at=now,
        updated_at=now,
    )
    tokens = OAuth2Tokens(
        access_token=grant["access_token"],
        refresh_token=grant["refresh_token"],
        expires_at=expires_at,
    )
    conn.mark_connected(seal_credentials(tokens, connection_id=conn.id, cipher=cipher), now=now)
    await store.save(conn)
    return conn
