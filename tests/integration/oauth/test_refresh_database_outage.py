"""PostgreSQL cut between the provider's answer and the save: the new tokens are not lost.

The database is reached through a loopback TCP relay; the relay is taken down at the moment
the sandbox has answered a refresh (the provider has spent the old refresh token) and before
the worker saves the answer, so every pooled connection is cut and new ones are refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest

from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.domain import ConnectionStatus
from linkvault.providers import load_registry
from linkvault.services.refresh import Outcome
from linkvault.stores.common import ClaimRequest
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import FakeClock, RunningSandbox
from linkvault.testing.fleet import Relay
from tests.integration.oauth.conftest import wipe
from tests.refreshing import POLICY, Bench, WatchedTokenClient

pytestmark = pytest.mark.postgres


@pytest.fixture
async def relay(module_postgres_url: str) -> AsyncIterator[Relay]:
    await wipe(module_postgres_url)
    port = urlsplit(module_postgres_url).port
    assert port is not None
    with Relay(port) as relayed:
        yield relayed


@pytest.fixture
async def bench(
    relay: Relay, module_postgres_url: str, running_sandbox: RunningSandbox, clock: FakeClock
) -> AsyncIterator[Bench]:
    parts = urlsplit(module_postgres_url)
    through = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))
    store = await PostgresConnectionRepository.connect(through, clock=clock, max_size=4)
    registry = load_registry(env=running_sandbox.env())
    cipher = AesGcmCipher(KeyRing([Key.generate("k1")]))
    async with store, WatchedTokenClient() as tokens:
        yield Bench(store, registry, cipher, running_sandbox, clock, tokens)


def cut_after_the_answer(bench: Bench, relay: Relay, seconds: float) -> None:
    """Once, when the provider has answered: the database gone for `seconds`."""

    async def outage() -> None:
        bench.tokens.meanwhile = None
        await asyncio.to_thread(relay.down)
        asyncio.get_running_loop().call_later(seconds, relay.up)

    bench.tokens.meanwhile = outage


async def test_tokens_answered_while_the_database_is_down_are_saved_when_it_is_back(
    bench: Bench, relay: Relay
) -> None:
    conn = await bench.connection()
    cut_after_the_answer(bench, relay, 1.5)
    worker = bench.worker(dataclasses.replace(POLICY, save_retry=timedelta(seconds=30)))

    [claim] = await bench.store.claim_due(
        worker.owner,
        ClaimRequest(POLICY.horizon, POLICY.lease, limit=10, max_failures=POLICY.max_attempts),
    )
    outcome = await worker.refresh_one(claim)

    assert outcome is Outcome.REFRESHED
    assert bench.refreshes_issued() == 1
    assert bench.stats()["refused_total"] == 0
    stored = await bench.tokens_of(conn.id)
    grant = bench.grant()
    assert stored.refresh_token == grant["refresh_token"]
    assert stored.access_token == grant["access_token"]
    assert (await bench.stored(conn.id)).status is ConnectionStatus.ACTIVE


async def test_past_its_retries_the_attempt_stays_on_record_and_a_replay_recovers_it(
    bench: Bench, relay: Relay, running_sandbox: RunningSandbox
) -> None:
    """The database down longer than the worker keeps trying: it leaves the attempt as a
    crashed worker would; the next claim replays the spent refresh token, and a provider with
    a reuse grace answers it with the same new tokens."""
    running_sandbox.sandbox.settings.update({"refresh_token_reuse_grace": 60.0})
    conn = await bench.connection()
    cut_after_the_answer(bench, relay, 2.5)
    worker = bench.worker(dataclasses.replace(POLICY, save_retry=timedelta(seconds=0.5)))
    request = ClaimRequest(POLICY.horizon, POLICY.lease, limit=10, max_failures=POLICY.max_attempts)

    [claim] = await bench.store.claim_due(worker.owner, request)
    outcome = await worker.refresh_one(claim)

    assert outcome is Outcome.ANSWER_LOST
    assert bench.refreshes_issued() == 1
    await asyncio.sleep(3.0)  # the database is back
    before = await bench.tokens_of(conn.id)
    assert before.refresh_token != bench.grant()["refresh_token"]  # the answer was not saved

    bench.clock.advance(seconds=POLICY.lease.total_seconds() + 1)  # the lease lapses
    [again] = await bench.store.claim_due("worker-2", request)
    assert again.lost is not None  # the attempt is on record
    outcome = await bench.worker(owner="worker-2").refresh_one(again)

    assert outcome is Outcome.REFRESHED
    stats = bench.stats()
    assert stats["grace_replays"] == 1
    assert stats["refused_total"] == 0
    stored = await bench.tokens_of(conn.id)
    grant = bench.grant()
    assert stored.refresh_token == grant["refresh_token"]
    assert (await bench.stored(conn.id)).status is ConnectionStatus.ACTIVE
