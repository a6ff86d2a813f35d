from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from linkvault.credentials import OAuth2Tokens, seal_credentials
from linkvault.domain import ConnectionStatus
from linkvault.errors import InvalidGrantError
from linkvault.services.refresh import Outcome, RefreshPolicy, refresh_now
from linkvault.testing import FaultKind
from tests.refreshing import POLICY, Bench

# --- what a refresh stores ---------------------------------------------------------------


async def test_a_refresh_stores_the_issued_tokens_and_recomputes_expiry_from_expires_in(
    bench: Bench,
) -> None:
    bench.running.sandbox.settings.update({"access_token_ttl": 900})
    conn = await bench.connection()
    bench.clock.advance(minutes=1)
    worker = bench.worker()

    assert await worker.run_once() == 1

    grant = bench.grant()
    tokens = await bench.tokens_of(conn.id)
    assert (tokens.access_token, tokens.refresh_token) == (
        grant["access_token"],
        grant["refresh_token"],
    )
    assert tokens.expires_at == bench.clock.now + timedelta(seconds=900)
    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE
    assert stored.credentials is not None
    assert stored.credentials.expires_at == tokens.expires_at
    assert worker.metrics.refreshed == 1
    # Due again at 75-85% of the new token's own life, not at the 10-minute horizon.
    bench.clock.advance(seconds=0.75 * 900 - 1)
    assert await worker.run_once() == 0
    bench.clock.advance(seconds=0.10 * 900 + 2)
    assert await worker.run_once() == 1
    assert bench.grant()["refreshes"] == 2
    assert bench.stats()["refused_total"] == 0


async def test_a_provider_that_sends_no_refresh_token_keeps_the_stored_one_working(
    bench: Bench,
) -> None:
    bench.running.sandbox.settings.update(
        {"rotate_refresh_tokens": False, "echo_refresh_token": False}
    )
    conn = await bench.connection()
    original = (await bench.tokens_of(conn.id)).refresh_token
    worker = bench.worker()

    assert await worker.run_once() == 1

    tokens = await bench.tokens_of(conn.id)
    assert tokens.refresh_token == original
    assert tokens.access_token == bench.grant()["access_token"]
    assert bench.grant()["refresh_token"] == original
    bench.clock.advance(minutes=30)
    assert await worker.run_once() == 1
    assert (await bench.tokens_of(conn.id)).refresh_token == original
    assert bench.grant()["refreshes"] == 2
    assert bench.stats()["refused_total"] == 0


async def test_a_rotated_refresh_token_replaces_the_old_one_which_the_provider_then_refuses(
    bench: Bench,
) -> None:
    bench.running.sandbox.settings.update({"revoke_family_on_reuse": False})
    conn = await bench.connection()
    original = (await bench.tokens_of(conn.id)).refresh_token
    assert original is not None
    worker = bench.worker()

    assert await worker.run_once() == 1

    rotated = (await bench.tokens_of(conn.id)).refresh_token
    assert rotated == bench.grant()["refresh_token"]
    assert rotated != original
    with pytest.raises(InvalidGrantError):
        await bench.tokens.refresh(bench.provider, refresh_token=original)
    bench.clock.advance(minutes=30)
    assert await worker.run_once() == 1
    assert worker.metrics.refreshed == 2
    assert (await bench.tokens_of(conn.id)).refresh_token == bench.grant()["refresh_token"]
    assert bench.stats()["refused"]["refresh_token"] == {"refresh_token_reused": 1}


# --- races with the user -----------------------------------------------------------------


async def test_a_disconnect_between_claim_and_save_discards_the_new_tokens_for_good(
    bench: Bench,
) -> None:
    conn = await bench.connection()

    async def disconnect() -> None:
        current = await bench.stored(conn.id)
        current.mark_disconnected(now=bench.clock.now)
        await bench.store.save(current)

    bench.tokens.meanwhile = disconnect
    worker = bench.worker()

    assert await worker.run_once() == 1

    assert worker.metrics.outcomes[Outcome.LOST_RACE] == 1
    assert worker.metrics.refreshed == 0
    assert bench.refreshes_issued() == 1
    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.DISCONNECTED
    assert stored.credentials is None
    bench.tokens.meanwhile = None
    bench.clock.advance(hours=1)
    assert await worker.run_once() == 0
    assert await refresh_now(worker, conn.id) is None
    assert (await bench.stored(conn.id)).status is ConnectionStatus.DISCONNECTED


async def test_a_rename_between_claim_and_save_is_kept_and_the_refresh_reapplied(
    bench: Bench,
) -> None:
    conn = await bench.connection(alias="before")

    async def rename() -> None:
        current = await bench.stored(conn.id)
        current.rename("after", now=bench.clock.now)
        await bench.store.save(current)

    bench.tokens.meanwhile = rename
    worker = bench.worker()

    assert await worker.run_once() == 1

    assert worker.metrics.refreshed == 1
    stored = await bench.stored(conn.id)
    assert (stored.status, stored.alias) == (ConnectionStatus.ACTIVE, "after")
    assert (await bench.tokens_of(conn.id)).refresh_token == bench.grant()["refresh_token"]


async def test_a_reconnect_between_claim_and_save_keeps_the_new_grant(bench: Bench) -> None:
    conn = await bench.connection("alice")
    [fresh_grant] = bench.running.sandbox.seed_grants(["alice-again"])

    async def reconnect() -> None:
        current = await bench.stored(conn.id)
        current.mark_expired("refresh refused", now=bench.clock.now)
        tokens = OAuth2Tokens(
            access_token=fresh_grant["access_token"],
            refresh_token=fresh_grant["refresh_token"],
            expires_at=bench.clock.now + timedelta(hours=1),
        )
        sealed = seal_credentials(tokens, connection_id=conn.id, cipher=bench.cipher)
        current.mark_connected(sealed, now=bench.clock.now)
        await bench.store.save(current)

    bench.tokens.meanwhile = reconnect
    worker = bench.worker()

    assert await worker.run_once() == 1

    assert worker.metrics.outcomes[Outcome.LOST_RACE] == 1
    stored_tokens = await bench.tokens_of(conn.id)
    assert stored_tokens.refresh_token == fresh_grant["refresh_token"]
    assert (await bench.stored(conn.id)).status is ConnectionStatus.ACTIVE


# --- concurrency, shutdown, refresh now -----------------------------------------------


async def test_a_worker_never_has_more_refreshes_in_flight_than_its_concurrency(
    bench: Bench,
) -> None:
    conns = [await bench.connection(f"user-{n}") for n in range(12)]
    bench.running.sandbox.inject_fault(FaultKind.SLOW, count=None, delay=0.05)
    worker = bench.worker(RefreshPolicy(concurrency=3, max_attempts=3))

    assert await worker.run_once() == 12

    assert bench.tokens.peak == 3
    assert worker.metrics.refreshed == 12
    assert bench.refreshes_issued() == 12
    for n, conn in enumerate(conns):
        tokens = await bench.tokens_of(conn.id)
        assert tokens.refresh_token == bench.grant(f"user-{n}")["refresh_token"]


async def test_stop_lets_in_flight_refreshes_finish_and_leaves_nothing_leased(
    bench: Bench,
) -> None:
    conns = {(await bench.connection(f"user-{n}")).id: f"user-{n}" for n in range(6)}
    seeded = {cid: (await bench.tokens_of(cid)).refresh_token for cid in conns}
    bench.running.sandbox.inject_fault(FaultKind.SLOW, count=None, delay=0.3)
    worker = bench.worker(RefreshPolicy(batch_size=6, concurrency=2, idle_poll=0.01))
    stop = asyncio.Event()

    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(bench.tokens.until_in_flight(2), timeout=5)
    stop.set()
    await asyncio.wait_for(running, timeout=5)

    # Only live work is leased: every claim was either refreshed, or handed back unstarted when
    # the stop came; none was held beyond the worker's two slots.
    m = worker.metrics
    sent = bench.refreshes_issued()
    assert m.refreshed == sent >= 2
    assert m.claimed == m.refreshed + m.outcomes[Outcome.RELEASED]
    assert m.claimed - sent <= 2
    refreshed, untouched = set(), set()
    for cid, subject in conns.items():
        stored = (await bench.tokens_of(cid)).refresh_token
        grant = bench.grant(subject)
        if grant["refreshes"] == 1:
            assert stored == grant["refresh_token"] != seeded[cid]
            refreshed.add(cid)
        else:
            assert (grant["refreshes"], stored) == (0, seeded[cid])
            untouched.add(cid)
    assert len(refreshed) == sent
    assert await bench.claimable() == untouched


async def test_refresh_now_refreshes_one_connection_unless_another_worker_holds_it(
    bench: Bench,
) -> None:
    conn = await bench.connection(expires_in=timedelta(days=1))
    worker = bench.worker()

    assert await refresh_now(worker, conn.id) is Outcome.REFRESHED
    assert (await bench.tokens_of(conn.id)).access_token == bench.grant()["access_token"]
    assert await bench.store.claim_connection(conn.id, "worker-2", lease=POLICY.lease)
    assert await refresh_now(worker, conn.id) is None
    assert await refresh_now(worker, uuid4()) is None
    assert bench.refreshes_issued() == 1


# --- observability -------------------------------------------------------------------


def record_texts(records: Sequence[logging.LogRecord]) -> list[str]:
    texts = []
    for record in records:
        texts += [record.getMessage(), repr(record.args)]
        texts += [repr(value) for value in vars(record).values()]
    return texts


async def test_a_mixed_run_logs_one_line_per_refresh_without_tokens_and_counts_outcomes(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ok = [await bench.connection(f"ok-{n}") for n in range(3)]
    bad = await bench.connection("bad", expires_in=timedelta(minutes=4))
    bench.running.sandbox.revoke_subject("bad")
    flaky = await bench.connection("flaky", expires_in=timedelta(hours=-1))
    leased = await bench.connection("leased", expires_in=timedelta(hours=-2))
    await bench.store.claim_connection(leased.id, "worker-2", lease=POLICY.lease)
    later = await bench.connection("later", expires_in=timedelta(hours=2))
    # Claims run in expiry order; one lane sends the most overdue (flaky) first into the fault.
    bench.running.sandbox.inject_fault(FaultKind.SERVER_ERROR, status=500)
    worker = bench.worker(RefreshPolicy(concurrency=1, max_attempts=3))

    assert await worker.run_once() == 5
    await worker.update_gauges()

    assert worker.metrics.refreshed == 3
    assert worker.metrics.failed_by_class() == {"expired": 1, "unavailable": 1}
    assert worker.metrics.due_unclaimed == 1
    assert worker.metrics.oldest_overdue_seconds == 3600.0
    lines = [
        r
        for r in caplog.records
        if r.name == "linkvault.refresher" and r.getMessage().startswith("refresh connection_id=")
    ]
    expected = {str(c.id): "refreshed" for c in ok}
    expected |= {str(bad.id): "expired", str(flaky.id): "unavailable"}
    assert {vars(r)["connection_id"]: vars(r)["outcome"] for r in lines} == expected
    assert len(lines) == 5
    for line in lines:
        assert vars(line)["provider"] == "sandbox"
        assert isinstance(vars(line)["duration_ms"], float)
        assert vars(line)["duration_ms"] >= 0
        assert vars(line)["connection_id"] in line.getMessage()
        assert f"outcome={vars(line)['outcome']}" in line.getMessage()
    assert later.id not in {UUID(cid) for cid in expected}
    secrets = {
        g[k]
        for g in [*bench.seeded, *bench.running.sandbox.grants()]
        for k in ("access_token", "refresh_token")
    }
    assert len(secrets) == 2 * (7 + 3)
    texts = record_texts(caplog.records)
    assert all(secret not in text for secret in secrets for text in texts)
