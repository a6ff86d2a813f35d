from __future__ import annotations

import ast
import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from linkvault.crypto import generate_key
from linkvault.testing import SandboxAdmin, sandbox_in_subprocess
from linkvault.testing.fleet import (
    BlackHole,
    Fleet,
    Relay,
    WorkerProcess,
    bank_provider,
    bank_providers_file,
    circuit_rows,
    grants_by_subject,
    in_flight_of,
    lease_rows,
    refreshed_count,
    schedule_summary,
    seed_due,
    stale_connections,
    status_reasons,
    stored_tokens,
    worker_env,
)
from tests.conftest import through_pooler

pytestmark = pytest.mark.postgres


@pytest.fixture
def provider() -> Iterator[SandboxAdmin]:
    with sandbox_in_subprocess() as admin:
        settings = admin.update_settings(rotate_refresh_tokens=True, revoke_family_on_reuse=True)
        assert settings["rotate_refresh_tokens"]
        assert settings["revoke_family_on_reuse"]
        yield admin


@pytest.fixture
def keys() -> str:
    return generate_key("fleet")


async def eventually(what: str, check: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def only_retried_blips(other_outcomes: str) -> bool:
    # A transient failure is retried after a backoff; the counts above prove the retry
    # neither reused a spent refresh token nor lost the grant.
    if other_outcomes == "none":
        return True
    found = ast.literal_eval(other_outcomes)
    return isinstance(found, dict) and set(found) <= {"unavailable", "rate_limited"}


def refreshed_by(workers: list[WorkerProcess]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for w in workers:
        seen.update(str(cid) for cid in w.refreshed_ids())
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("through", ["direct", "pooler"])
async def test_four_worker_processes_refresh_five_thousand_connections_exactly_once(
    postgres_url: str,
    provider: SandboxAdmin,
    keys: str,
    tmp_path: Path,
    through: str,
) -> None:
    """The workers reach PostgreSQL directly, or through PgBouncer in transaction mode."""
    count = 5000
    seeded = await seed_due(postgres_url, provider, keys, count)
    workers_url = postgres_url if through == "direct" else through_pooler(postgres_url)
    env = worker_env(workers_url, keys, provider.url)

    with Fleet(env, tmp_path) as fleet:
        workers = [
            fleet.start(f"worker-{n}", "--until-idle", "--batch-size", "50", "--idle-poll", "0.2")
            for n in range(4)
        ]
        codes = await asyncio.to_thread(fleet.wait_all, workers, 110)

    assert codes == [0, 0, 0, 0]
    stats = provider.stats()
    assert stats["issued"] == {"refresh_token": count}
    assert stats["refused_total"] == 0
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    stored = await stored_tokens(postgres_url, keys)
    assert set(stored) == set(seeded.ids)
    assert stale_connections(stored, grants) == []
    summaries = [w.summary() for w in workers]
    assert all(s is not None and only_retried_blips(s[1]) for s in summaries), summaries
    done = [s[0] for s in summaries if s is not None]
    assert sum(done) == count
    assert all(n > 0 for n in done), f"each worker must do some of the work: {done}"
    assert refreshed_by(workers) == Counter({str(cid): 1 for cid in seeded.ids})
    left = await schedule_summary(postgres_url)
    assert (left["leased"], left["failing"], left["lost"]) == (0, 0, 0)


@pytest.mark.slow
async def test_a_killed_workers_leases_lapse_and_other_processes_refresh_them_once(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count, victim_batch, lease_seconds = 3000, 1000, 5
    seeded = await seed_due(postgres_url, provider, keys, count)
    env = worker_env(postgres_url, keys, provider.url)

    with BlackHole() as hole, Fleet(env, tmp_path) as fleet:
        victim = fleet.start(
            "victim",
            "--batch-size",
            str(victim_batch),
            "--concurrency",
            "16",
            "--lease-seconds",
            str(lease_seconds),
            env=worker_env(postgres_url, keys, hole.url),
        )

        async def claimed_and_in_flight() -> bool:
            return hole.accepted >= 1 and len(await lease_rows(postgres_url)) >= 16

        await eventually("the victim to claim and send its requests", claimed_and_in_flight, 30)
        leases = {r["id"]: r for r in await lease_rows(postgres_url)}
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        assert provider.stats()["issued_total"] == 0

        workers = [fleet.start(f"worker-{n}", "--idle-poll", "0.2") for n in range(4)]

        async def all_refreshed() -> bool:
            assert all(w.running() for w in workers), "a worker exited early"
            return await refreshed_count(postgres_url, seeded.at) == count

        await eventually("every connection to be refreshed", all_refreshed, 90)
        for w in workers:
            w.signal(signal.SIGTERM)
        codes = await asyncio.to_thread(fleet.wait_all, workers, 30)

    assert codes == [0, 0, 0, 0]
    # A worker leases only what it can start: its 16 slots, not its 1,000-row batch size.
    assert len(leases) == 16
    assert {r["refresh_lease_owner"] for r in leases.values()} == {victim.owner()}
    assert hole.bytes_read > 0
    stats = provider.stats()
    assert stats["issued"] == {"refresh_token": count}
    assert stats["refused_total"] == 0
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    stored = await stored_tokens(postgres_url, keys)
    assert stale_connections(stored, grants) == []
    by = refreshed_by(workers)
    assert by == Counter({str(cid): 1 for cid in seeded.ids})
    taken_early = [
        cid for cid, r in leases.items() if stored[cid].updated_at < r["refresh_lease_until"]
    ]
    assert taken_early == []
    takers = [w.name for w in workers if set(w.refreshed_ids()) & leases.keys()]
    assert takers, "nobody took the victim's connections over"
    left = await schedule_summary(postgres_url)
    assert (left["leased"], left["failing"], left["lost"]) == (0, 0, 0)


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_refreshes_and_leaves_no_lease_behind(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count, concurrency, delay = 200, 8, 3.0
    seeded = await seed_due(postgres_url, provider, keys, count)
    env = worker_env(postgres_url, keys, provider.url)
    provider.inject_fault("slow", count=None, delay=delay, grant_type="refresh_token")

    with Fleet(env, tmp_path) as fleet:
        terminated = fleet.start(
            "terminated", "--batch-size", str(count), "--concurrency", str(concurrency)
        )

        async def in_flight() -> bool:
            return int(provider.stats()["faults"].get("slow", 0)) >= 4

        await eventually("the first requests to reach the provider", in_flight, 30)
        terminated.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(terminated.wait, delay + 10)
        took = time.monotonic() - signalled
        leased_after_exit = await lease_rows(postgres_url)
        issued_by_terminated = provider.stats()["issued_total"]
        provider.clear_faults()

        successor = fleet.start("successor", "--until-idle", "--idle-poll", "0.2")
        successor_code = await asyncio.to_thread(successor.wait, 60)

    assert code == 0
    assert took < delay + 5
    summary = terminated.summary()
    assert summary is not None
    sent = summary[0]
    assert sent == issued_by_terminated >= 4
    # Only live work was leased: what had not been sent when the signal came (at most the
    # worker's slots) was handed back.
    assert terminated.released() <= concurrency
    assert leased_after_exit == []
    assert successor_code == 0
    after = successor.summary()
    assert after is not None
    assert after[0] == count - sent
    assert only_retried_blips(after[1])
    stats = provider.stats()
    assert stats["issued"] == {"refresh_token": count}
    assert stats["refused_total"] == 0
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    assert stale_connections(await stored_tokens(postgres_url, keys), grants) == []
    assert refreshed_by([terminated, successor]) == Counter({str(c): 1 for c in seeded.ids})


# --- faults: crashes, a saturated provider, an outage (issue 8) ---------------------------------


def saturate(admin: SandboxAdmin, *, capacity: int, service_time: float, grace: int = 0) -> None:
    """The sandbox serves `capacity` requests at a time, `service_time` each; the rest queue."""
    settings = admin.update_settings(
        capacity=capacity, service_time=service_time, refresh_token_reuse_grace=grace
    )
    assert (settings["capacity"], settings["refresh_token_reuse_grace"]) == (capacity, grace)


async def all_settled(database_url: str, since: datetime, count: int) -> bool:
    """Every connection written since the seed, or ended, and nothing leased or lost."""
    reasons = await status_reasons(database_url)
    ended = sum(1 for status, _ in reasons.values() if status != "active")
    left = await schedule_summary(database_url)
    written = await refreshed_count(database_url, since)
    return written + ended >= count and left["leased"] == 0 and left["lost"] == 0


async def kill_mid_run(
    postgres_url: str, fleet: Fleet, victim: WorkerProcess, *, after_refreshes: int
) -> set[UUID]:
    """SIGKILL `victim` once it refreshed some and has requests in flight; those requests.

    It waits for requests recorded as sent a while ago, so that they have reached the
    provider (which serves what it received even if the client is gone) and not only the
    database. The victim is stopped (SIGSTOP) while the database is read, so the requests
    seen in flight cannot be answered before the kill."""
    owner: list[str] = []

    async def busy() -> bool:
        found = victim.owner()
        if found is None or len(victim.refreshed_ids()) < after_refreshes:
            return False
        owner[:] = [found]
        # Frozen while we look, so that what is in flight now is still in flight at the kill.
        victim.signal(signal.SIGSTOP)
        sent = await in_flight_of(postgres_url, found, sent_for=timedelta(milliseconds=50))
        if len(sent) >= 2:
            return True
        victim.signal(signal.SIGCONT)
        return False

    await eventually("the victim to have requests in flight", busy, 60)
    victim.signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    return await in_flight_of(postgres_url, owner[0])


@pytest.mark.slow
async def test_a_worker_killed_mid_run_loses_nothing_on_a_provider_with_reuse_grace(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count = 5000
    saturate(provider, capacity=16, service_time=0.01, grace=30)
    providers_file = bank_providers_file(tmp_path, provider.url, grace=30)
    seeded = await seed_due(
        postgres_url, provider, keys, count, provider=bank_provider(providers_file)
    )
    env = worker_env(postgres_url, keys, provider.url, providers_file=str(providers_file))

    with Fleet(env, tmp_path) as fleet:
        workers = [fleet.start(f"worker-{n}", "--idle-poll", "0.2") for n in range(4)]
        in_flight = await kill_mid_run(postgres_url, fleet, workers[0], after_refreshes=200)
        survivors = workers[1:]
        await eventually(
            "every connection to be refreshed",
            lambda: all_settled(postgres_url, seeded.at, count),
            120,
        )
        for w in survivors:
            w.signal(signal.SIGTERM)
        await asyncio.to_thread(fleet.wait_all, survivors, 30)

    assert in_flight, "the kill must catch requests in flight, or it proves nothing"
    stats = provider.stats()
    assert stats["refused_total"] == 0
    assert stats["grace_replays"] >= 1
    grants = grants_by_subject(provider)
    # No token family rotated more than once: lost answers were replayed inside the grace.
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    replayed = {UUID(s) for s, g in grants.items() if g["grace_replays"]}
    assert replayed <= in_flight
    stored = await stored_tokens(postgres_url, keys)
    assert stale_connections(stored, grants) == []


@pytest.mark.slow
async def test_without_reuse_grace_only_the_killed_workers_in_flight_refreshes_are_lost(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count = 3000
    saturate(provider, capacity=16, service_time=0.01, grace=0)
    providers_file = bank_providers_file(tmp_path, provider.url, grace=0)
    seeded = await seed_due(
        postgres_url, provider, keys, count, provider=bank_provider(providers_file)
    )
    env = worker_env(postgres_url, keys, provider.url, providers_file=str(providers_file))

    with Fleet(env, tmp_path) as fleet:
        workers = [fleet.start(f"worker-{n}", "--idle-poll", "0.2") for n in range(4)]
        in_flight = await kill_mid_run(postgres_url, fleet, workers[0], after_refreshes=200)
        survivors = workers[1:]
        await eventually(
            "every connection to settle", lambda: all_settled(postgres_url, seeded.at, count), 120
        )
        for w in survivors:
            w.signal(signal.SIGTERM)
        await asyncio.to_thread(fleet.wait_all, survivors, 30)

    reasons = await status_reasons(postgres_url)
    lost = {cid for cid, (status, _) in reasons.items() if status != "active"}
    assert lost, "the kill must lose the answers in flight, or it proves nothing"
    assert lost <= in_flight
    expected = "refresh answer lost when a worker stopped; the provider allows no replay: reconnect"
    assert {reasons[cid] for cid in lost} == {("expired", expected)}
    grants = grants_by_subject(provider)
    assert all(grants[str(cid)]["refreshes"] == 1 for cid in lost), "lost without being served"
    stored = await stored_tokens(postgres_url, keys)
    kept = {cid: row for cid, row in stored.items() if cid not in lost}
    assert len(kept) == count - len(lost)
    assert stale_connections(kept, grants) == []
    logs = "".join(w.output() for w in survivors)
    assert expected in logs
    assert "concurrent change" not in logs


@pytest.mark.slow
async def test_short_leases_against_a_saturated_provider_refresh_each_connection_once(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count = 120
    saturate(provider, capacity=2, service_time=0.5)
    seeded = await seed_due(postgres_url, provider, keys, count)
    env = worker_env(postgres_url, keys, provider.url, refresh_lease_seconds="5")

    with Fleet(env, tmp_path) as fleet:
        workers = [
            fleet.start(f"worker-{n}", "--until-idle", "--idle-poll", "0.2") for n in range(8)
        ]
        codes = await asyncio.to_thread(fleet.wait_all, workers, 150)

    assert codes == [0] * 8
    stats = provider.stats()
    assert stats["token_latency"]["max"] >= 2.0, "the provider was not saturated"
    assert stats["issued"] == {"refresh_token": count}
    assert stats["refused_total"] == 0
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    assert stale_connections(await stored_tokens(postgres_url, keys), grants) == []
    assert refreshed_by(workers) == Counter({str(c): 1 for c in seeded.ids})


@pytest.mark.slow
async def test_eight_workers_keep_the_queue_short_at_a_provider_serving_fifty_a_second(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count = 1500
    saturate(provider, capacity=5, service_time=0.1)
    seeded = await seed_due(postgres_url, provider, keys, count)
    env = worker_env(postgres_url, keys, provider.url)

    with Fleet(env, tmp_path) as fleet:
        workers = [
            fleet.start(f"worker-{n}", "--until-idle", "--idle-poll", "0.2") for n in range(8)
        ]
        codes = await asyncio.to_thread(fleet.wait_all, workers, 180)

    assert codes == [0] * 8
    summaries = [w.summary() for w in workers]
    assert all(s is not None and s[1] == "none" for s in summaries), summaries
    stats = provider.stats()
    assert stats["issued"] == {"refresh_token": count}
    assert stats["refused_total"] == 0
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    assert stale_connections(await stored_tokens(postgres_url, keys), grants) == []
    latencies = sorted(ms for w in workers for ms in w.request_ms())
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(
        f"\n8 workers, provider serving 50/s: token request p50 "
        f"{latencies[len(latencies) // 2]:.0f} ms, p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms; "
        f"provider-side p99 {stats['token_latency']['p99'] * 1000:.0f} ms, "
        f"peak queue {stats['queue']['peak_waiting']}"
    )
    assert latencies[-1] < 60_000, "a request waited as long as the read timeout"


@pytest.mark.slow
async def test_an_outage_opens_the_circuit_and_no_connection_uses_up_its_attempts(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count = 300
    seeded = await seed_due(postgres_url, provider, keys, count)
    target = int(provider.url.rsplit(":", 1)[1])

    with (
        Relay(target) as relay,
        Fleet(worker_env(postgres_url, keys, relay.url), tmp_path) as fleet,
    ):
        relay.down()  # connection refused
        workers = [fleet.start(f"worker-{n}", "--idle-poll", "0.2") for n in range(4)]
        await asyncio.sleep(60)
        relay.up()
        provider.inject_fault("server_error", count=None, status=503, grant_type="refresh_token")
        await asyncio.sleep(60)
        during = await schedule_summary(postgres_url)
        circuits = await circuit_rows(postgres_url)
        assert provider.stats()["issued_total"] == 0
        provider.clear_faults()
        await eventually(
            "every connection to be refreshed after the outage",
            lambda: all_settled(postgres_url, seeded.at, count),
            150,
        )
        for w in workers:
            w.signal(signal.SIGTERM)
        await asyncio.to_thread(fleet.wait_all, workers, 30)

    assert [c["provider_slug"] for c in circuits] == ["sandbox"]
    assert during["most_failures"] < 8, "a connection used up its attempts during the outage"
    reasons = await status_reasons(postgres_url)
    assert {status for status, _ in reasons.values()} == {"active"}
    opened = "".join(w.output() for w in workers).count("refreshes to it pause until")
    assert opened >= 2
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    assert stale_connections(await stored_tokens(postgres_url, keys), grants) == []


@pytest.mark.slow
async def test_until_idle_drains_what_a_killed_peer_held(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count = 1000
    saturate(provider, capacity=8, service_time=0.02, grace=30)
    providers_file = bank_providers_file(tmp_path, provider.url, grace=30)
    seeded = await seed_due(
        postgres_url, provider, keys, count, provider=bank_provider(providers_file)
    )
    env = worker_env(postgres_url, keys, provider.url, providers_file=str(providers_file))

    with Fleet(env, tmp_path) as fleet:
        victim = fleet.start("victim", "--until-idle", "--idle-poll", "0.2")
        survivor = fleet.start("survivor", "--until-idle", "--idle-poll", "0.2")
        in_flight = await kill_mid_run(postgres_url, fleet, victim, after_refreshes=100)
        code = await asyncio.to_thread(survivor.wait, 120)

    assert in_flight
    assert code == 0
    assert await all_settled(postgres_url, seeded.at, count)
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    assert stale_connections(await stored_tokens(postgres_url, keys), grants) == []
    assert in_flight <= set(survivor.refreshed_ids())
