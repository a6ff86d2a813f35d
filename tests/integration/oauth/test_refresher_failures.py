from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest

from linkvault.credentials import OAuth2Tokens, seal_credentials
from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.domain import ConnectionStatus
from linkvault.services.refresh import Outcome, RefreshPolicy
from linkvault.stores.common import ClaimRequest
from linkvault.testing import FaultKind
from tests.refreshing import POLICY, Bench, WatchedTokenClient

SEED = 11


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        (FaultKind.INVALID_GRANT, ConnectionStatus.EXPIRED, "invalid_grant"),
        (FaultKind.UNAUTHORIZED_CLIENT, ConnectionStatus.EXPIRED, "unauthorized_client"),
        (FaultKind.REVOKED, ConnectionStatus.REVOKED, "revoked"),
    ],
)
async def test_a_refused_grant_ends_the_connection_with_its_reason_and_is_never_retried(
    bench: Bench, fault: FaultKind, status: ConnectionStatus, error: str
) -> None:
    conn = await bench.connection()
    bench.running.sandbox.inject_fault(fault)
    worker = bench.worker()

    assert await worker.run_once() == 1

    stored = await bench.stored(conn.id)
    assert stored.status is status
    assert stored.status_reason is not None
    assert error in stored.status_reason
    assert stored.credentials == conn.credentials
    assert worker.metrics.outcomes[Outcome(status.value)] == 1
    bench.clock.advance(days=2)
    assert await worker.run_once() == 0
    assert await bench.claimable() == set()
    assert bench.refresh_requests() == 1


async def test_a_grant_the_user_revoked_at_the_provider_expires_the_connection(
    bench: Bench,
) -> None:
    conn = await bench.connection("alice")
    bench.running.sandbox.revoke_subject("alice")
    worker = bench.worker()

    assert await worker.run_once() == 1

    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.EXPIRED
    assert stored.status_reason is not None
    assert "invalid_grant" in stored.status_reason
    assert "revoked" in stored.status_reason


async def test_a_429_keeps_the_connection_active_and_defers_it_until_retry_after(
    bench: Bench,
) -> None:
    conn = await bench.connection()
    bench.running.sandbox.inject_fault(FaultKind.RATE_LIMITED, retry_after=120)
    worker = bench.worker()

    assert await worker.run_once() == 1

    assert worker.metrics.outcomes[Outcome.RATE_LIMITED] == 1
    stored = await bench.stored(conn.id)
    assert (stored.status, stored.status_reason) == (ConnectionStatus.ACTIVE, None)
    bench.clock.advance(seconds=119)
    assert await bench.claimable() == set()
    assert await worker.run_once() == 0
    bench.clock.advance(seconds=1)
    assert await bench.claimable() == {conn.id}
    assert await worker.run_once() == 1
    assert worker.metrics.refreshed == 1
    assert (await bench.tokens_of(conn.id)).refresh_token == bench.grant()["refresh_token"]


TRANSIENT = [
    pytest.param(FaultKind.SERVER_ERROR, 500, Outcome.UNAVAILABLE, "HTTP 500", id="500"),
    pytest.param(FaultKind.SERVER_ERROR, 503, Outcome.UNAVAILABLE, "HTTP 503", id="503"),
    pytest.param(FaultKind.MALFORMED, None, Outcome.MALFORMED, "not JSON", id="malformed"),
]


@pytest.mark.parametrize(("fault", "status", "outcome", "cause"), TRANSIENT)
async def test_transient_failures_back_off_exponentially_with_jitter_then_give_up(
    bench: Bench, fault: FaultKind, status: int | None, outcome: Outcome, cause: str
) -> None:
    conn = await bench.connection()
    delay = 0.3
    bench.running.sandbox.inject_fault(fault, count=None, status=status, delay=delay)
    async with WatchedTokenClient(timeout=0.1) as impatient:
        worker = bench.worker(tokens=impatient, seed=SEED)
        replay = random.Random(SEED)
        waits = []
        for attempt in (1, 2):
            assert await worker.run_once() == 1
            assert worker.metrics.outcomes[outcome] == attempt
            stored = await bench.stored(conn.id)
            assert (stored.status, stored.status_reason) == (ConnectionStatus.ACTIVE, None)
            wait = POLICY.backoff(attempt, replay)
            ceiling = POLICY.backoff_base * 2 ** (attempt - 1)
            assert ceiling / 2 <= wait <= ceiling
            waits.append(wait)
            bench.clock.advance(seconds=wait.total_seconds() - 1)
            assert await worker.run_once() == 0
            bench.clock.advance(seconds=2)

        assert await worker.run_once() == 1

    assert waits[1] > waits[0]
    assert worker.metrics.outcomes[Outcome.GAVE_UP] == 1
    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.EXPIRED
    assert stored.status_reason is not None
    assert "refresh kept failing" in stored.status_reason
    assert "3 attempts" in stored.status_reason
    assert cause in stored.status_reason
    assert "reconnect" in stored.status_reason
    bench.clock.advance(days=2)
    assert await worker.run_once() == 0
    assert sum(bench.stats()["faults"].values()) == 3


async def test_jitter_spreads_the_retries_of_connections_that_failed_together(
    bench: Bench,
) -> None:
    conns = [await bench.connection(f"user-{n}") for n in range(8)]
    bench.running.sandbox.inject_fault(FaultKind.SERVER_ERROR, count=None, status=503)
    worker = bench.worker(RefreshPolicy(max_attempts=3, backoff_base=timedelta(seconds=60)))

    assert await worker.run_once() == 8

    due_at = []
    for second in range(30, 61):
        bench.clock.advance(seconds=1 if second > 30 else 30)
        due_at += [second] * len(await bench.claimable())
        await bench.store.claim_due(
            "parked", ClaimRequest(POLICY.horizon, timedelta(days=1), limit=100, max_failures=3)
        )
    assert len(due_at) == len(conns)
    assert len(set(due_at)) >= 4


async def test_rejected_client_credentials_leave_the_connection_active_and_retry_much_later(
    bench: Bench,
) -> None:
    conn = await bench.connection()
    bench.reject_client()
    worker = bench.worker()

    assert await worker.run_once() == 1

    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE
    assert stored.status_reason is None
    assert stored.credentials == conn.credentials
    assert worker.metrics.outcomes[Outcome.CLIENT_REJECTED] == 1
    bench.clock.advance(hours=5)
    assert await bench.claimable() == set()
    bench.clock.advance(hours=1, seconds=1)
    assert await bench.claimable() == {conn.id}


async def test_a_one_shot_run_ends_when_what_is_left_can_never_be_claimed(
    bench: Bench,
) -> None:
    conn = await bench.connection()
    foreign = AesGcmCipher(KeyRing([Key.generate("other")]))
    conn.update_credentials(
        seal_credentials(
            OAuth2Tokens(access_token="a", refresh_token="r", expires_at=bench.clock.now),
            connection_id=conn.id,
            cipher=foreign,
        ),
        now=bench.clock.now,
    )
    await bench.store.save(conn)
    worker = bench.worker(RefreshPolicy(max_attempts=1, idle_poll=0.05))

    await asyncio.wait_for(worker.run(asyncio.Event(), until_idle=True), timeout=10)

    assert worker.metrics.outcomes[Outcome.DECRYPT_FAILED] == 1
    assert (await bench.stored(conn.id)).status is ConnectionStatus.ACTIVE
