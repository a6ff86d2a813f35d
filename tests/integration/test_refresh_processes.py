from __future__ import annotations

import ast
import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from linkvault.crypto import generate_key
from linkvault.sandbox import SandboxAdmin, sandbox_in_subprocess
from tests.refresh_fleet import (
    BlackHole,
    Fleet,
    WorkerProcess,
    grants_by_subject,
    lease_rows,
    refreshed_count,
    schedule_summary,
    seed_due,
    stale_connections,
    stored_tokens,
    worker_env,
)

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
async def test_four_worker_processes_refresh_five_thousand_connections_exactly_once(
    postgres_url: str, provider: SandboxAdmin, keys: str, tmp_path: Path
) -> None:
    count = 5000
    seeded = await seed_due(postgres_url, provider, keys, count)
    env = worker_env(postgres_url, keys, provider.url)

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
    assert (left["leased"], left["failing"], left["scheduled"]) == (0, 0, 0)


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
            return hole.accepted >= 16 and bool(await lease_rows(postgres_url))

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
    assert len(leases) == victim_batch
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
    assert (left["leased"], left["failing"], left["scheduled"]) == (0, 0, 0)


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_refreshes_and_hands_back_unstarted_leases(
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
            return int(provider.stats()["faults"].get("slow", 0)) >= concurrency

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
    assert terminated.summary() == (concurrency, "none")
    assert issued_by_terminated == concurrency
    assert terminated.released() == count - concurrency
    assert leased_after_exit == []
    assert successor_code == 0
    after = successor.summary()
    assert after is not None
    assert after[0] == count - concurrency
    assert only_retried_blips(after[1])
    stats = provider.stats()
    assert stats["issued"] == {"refresh_token": count}
    assert stats["refused_total"] == 0
    grants = grants_by_subject(provider)
    assert Counter(grants[str(cid)]["refreshes"] for cid in seeded.ids) == {1: count}
    assert stale_connections(await stored_tokens(postgres_url, keys), grants) == []
    assert refreshed_by([terminated, successor]) == Counter({str(c): 1 for c in seeded.ids})
