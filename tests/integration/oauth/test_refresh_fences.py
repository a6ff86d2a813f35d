"""Group commit of fences: refresh requests that start together share one fence statement, and
each is still sent only once its own row was fenced. Against every store, and the sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid4

from linkvault.credentials import OAuth2Tokens, seal_credentials
from linkvault.domain import ProviderConnection
from linkvault.errors import DatabaseUnavailableError
from linkvault.oauth import TokenResponse
from linkvault.providers import Provider, ProviderRegistry
from linkvault.services.fences import Fences
from linkvault.services.refresh import Outcome
from linkvault.stores import ConnectionStore
from linkvault.stores.common import AttemptStart, LostAttempt
from linkvault.testing import FakeClock
from tests.factories import creds, make, saved
from tests.refreshing import POLICY, Bench, WatchedTokenClient

LEASE = timedelta(minutes=2)


class Statements:
    """The fence statement of one owner, recorded; `hold()` keeps the next one in flight."""

    def __init__(self, store: ConnectionStore, owner: str = "w1") -> None:
        self.store = store
        self.owner = owner
        self.batches: list[list[UUID]] = []
        self.in_flight = asyncio.Event()
        self._held: asyncio.Event | None = None
        self.fail_next: Exception | None = None

    def hold(self) -> asyncio.Event:
        self._held = asyncio.Event()
        return self._held

    async def __call__(self, attempts: Sequence[AttemptStart]) -> dict[UUID, datetime]:
        failure, self.fail_next = self.fail_next, None
        self.batches.append([a.connection_id for a in attempts])
        self.in_flight.set()
        held, self._held = self._held, None
        if held is not None:
            await held.wait()
        if failure is not None:
            raise failure
        return await self.store.begin_attempts(self.owner, lease=LEASE, attempts=attempts)


async def leased(store: ConnectionStore, clock: FakeClock, owner: str = "w1") -> AttemptStart:
    conn = make(clock)
    conn.mark_connected(creds(clock.now, f"grant-{conn.id}".encode()), now=clock.now)
    await saved(store, conn)
    assert await store.claim_connection(conn.id, owner, lease=LEASE) is not None
    assert conn.credentials is not None
    return AttemptStart(conn.id, f"fp-{conn.id}", conn.credentials.encrypted_data)


async def ticks(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_lone_fence_is_issued_at_once_with_no_timer(
    store: ConnectionStore, clock: FakeClock
) -> None:
    statements = Statements(store)
    fences = Fences(statements, most=lambda: 10)
    a = await leased(store, clock)
    release = statements.hold()

    waiting = asyncio.create_task(fences.begin(a))
    await ticks(2)

    assert statements.batches == [[a.connection_id]], "a lone fence waited for company"
    release.set()
    assert await waiting == clock.now


async def test_fences_that_come_while_one_is_in_flight_go_together_in_the_next_statement(
    store: ConnectionStore, clock: FakeClock
) -> None:
    statements = Statements(store)
    fences = Fences(statements, most=lambda: 3)
    first = await leased(store, clock)
    queued = [await leased(store, clock) for _ in range(4)]
    taken = queued[1]  # the second queued request: its lease went to another worker
    clock.advance(seconds=LEASE.total_seconds())
    for a in (first, *queued):
        owner = "thief" if a is taken else "w1"
        assert await store.claim_connection(a.connection_id, owner, lease=LEASE) is not None
    clock.advance(seconds=10)
    fenced_at = clock.now
    release = statements.hold()

    lone = asyncio.create_task(fences.begin(first))
    await statements.in_flight.wait()
    together = [asyncio.create_task(fences.begin(a)) for a in queued]
    await ticks()
    assert len(statements.batches) == 1, "a statement went while another was in flight"
    release.set()
    answers = await asyncio.gather(lone, *together)

    ids = [a.connection_id for a in queued]
    assert statements.batches == [[first.connection_id], ids[:3], ids[3:]]
    assert answers == [fenced_at, fenced_at, None, fenced_at, fenced_at]
    assert (fences.statements, fences.fenced) == (3, 5)
    # Every request answered with a time was fenced in its own row; the taken one was not.
    clock.advance(seconds=LEASE.total_seconds() - 5)
    stolen = await store.claim_connection(taken.connection_id, "w2", lease=LEASE)
    assert stolen is not None
    assert stolen.lost is None, "an attempt was recorded on a lease this worker lost"
    clock.advance(seconds=5)
    for a in (first, *queued):
        if a is taken:
            continue
        after = await store.claim_connection(a.connection_id, "w2", lease=LEASE)
        assert after is not None, "the fence did not extend the lease"
        assert after.lost == LostAttempt(fenced_at, a.fingerprint, None)


async def test_a_failed_statement_fails_each_request_in_it_and_the_next_one_goes_on(
    store: ConnectionStore, clock: FakeClock
) -> None:
    statements = Statements(store)
    fences = Fences(statements, most=lambda: 10)
    first, *rest = [await leased(store, clock) for _ in range(4)]
    release = statements.hold()
    lone = asyncio.create_task(fences.begin(first))
    await statements.in_flight.wait()
    broken = DatabaseUnavailableError("begin_attempts failed: database unreachable")
    statements.fail_next = broken  # the next statement fails
    failing = [asyncio.create_task(fences.begin(a)) for a in rest[:2]]
    await ticks()
    release.set()

    assert await lone == clock.now
    done = await asyncio.gather(*failing, return_exceptions=True)
    assert statements.batches[1] == [a.connection_id for a in rest[:2]]
    assert done == [broken, broken]
    assert await fences.begin(rest[2]) == clock.now


async def test_a_request_cancelled_while_it_waits_is_left_out_of_the_statement(
    store: ConnectionStore, clock: FakeClock
) -> None:
    statements = Statements(store)
    fences = Fences(statements, most=lambda: 10)
    first, gone, kept = [await leased(store, clock) for _ in range(3)]
    release = statements.hold()
    lone = asyncio.create_task(fences.begin(first))
    await statements.in_flight.wait()
    cancelled = asyncio.create_task(fences.begin(gone))
    waiting = asyncio.create_task(fences.begin(kept))
    await ticks()
    cancelled.cancel()
    release.set()

    assert await lone == clock.now
    assert await waiting == clock.now
    assert cancelled.cancelled()
    assert statements.batches == [[first.connection_id], [kept.connection_id]]


async def test_a_second_request_for_one_connection_waits_for_the_next_statement(
    store: ConnectionStore, clock: FakeClock
) -> None:
    statements = Statements(store)
    fences = Fences(statements, most=lambda: 10)
    first, twice = await leased(store, clock), await leased(store, clock)
    release = statements.hold()
    lone = asyncio.create_task(fences.begin(first))
    await statements.in_flight.wait()
    again = dataclasses.replace(twice, fingerprint="fp-other")
    both = [asyncio.create_task(fences.begin(a)) for a in (twice, again)]
    await ticks()
    release.set()

    await lone
    first_time = clock.now
    assert await asyncio.gather(*both) == [first_time, first_time]
    assert statements.batches[1:] == [[twice.connection_id], [twice.connection_id]]


# --- in the worker -----------------------------------------------------------------------


class CountingStore:
    """The bench's store, counting fence statements and the connections they fenced."""

    def __init__(self, store: ConnectionStore, delay: float) -> None:
        self._store = store
        self._delay = delay
        self.statements = 0
        self.fenced: set[UUID] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def begin_attempts(
        self, owner: str, *, lease: timedelta, attempts: Sequence[AttemptStart]
    ) -> dict[UUID, datetime]:
        self.statements += 1
        if self.statements == 1:
            await asyncio.sleep(self._delay)  # the others reach their fence meanwhile
        held = await self._store.begin_attempts(owner, lease=lease, attempts=attempts)
        self.fenced.update(held)
        return held


class CheckedTokenClient(WatchedTokenClient):
    """Notes each refresh sent for a connection its fence had not confirmed."""

    def __init__(self, owner_of: dict[str, UUID], fenced: Callable[[], set[UUID]]) -> None:
        super().__init__()
        self.owner_of = owner_of
        self.fenced = fenced
        self.unfenced: list[UUID] = []

    async def refresh(
        self, provider: Provider, *, refresh_token: str, scopes: Sequence[str] | None = None
    ) -> TokenResponse:
        connection_id = self.owner_of[refresh_token]
        if connection_id not in self.fenced():
            self.unfenced.append(connection_id)
        return await super().refresh(provider, refresh_token=refresh_token, scopes=scopes)


async def connection_at(bench: Bench, provider: Provider) -> tuple[ProviderConnection, str]:
    [grant] = bench.running.sandbox.seed_grants([f"user-{uuid4()}"])
    now = bench.clock.now
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
        expires_at=now + timedelta(minutes=5),
    )
    conn.mark_connected(
        seal_credentials(tokens, connection_id=conn.id, cipher=bench.cipher), now=now
    )
    await bench.store.save(conn)
    return conn, grant["refresh_token"]


async def test_a_workers_refreshes_share_fence_statements_and_none_is_sent_unfenced(
    bench: Bench,
) -> None:
    # Four providers: each starts at one request in flight, so four fences can meet.
    sandbox = bench.provider
    copies = [dataclasses.replace(sandbox, slug=f"bank-{n}", id=uuid4()) for n in range(4)]
    bench.registry = ProviderRegistry([*bench.registry, *copies])
    owner_of: dict[str, UUID] = {}
    for n in range(12):
        conn, refresh_token = await connection_at(bench, copies[n % 4])
        owner_of[refresh_token] = conn.id
    counting = CountingStore(bench.store, delay=0.5)
    bench.store = cast(ConnectionStore, counting)
    async with CheckedTokenClient(owner_of, lambda: counting.fenced) as tokens:
        worker = bench.worker(dataclasses.replace(POLICY, concurrency=4), tokens=tokens)
        assert await worker.run_once() == 12

    assert worker.metrics.outcomes == {Outcome.REFRESHED: 12}
    assert tokens.unfenced == []
    assert counting.fenced == set(owner_of.values())
    assert counting.statements < 12, "no two fences shared a statement"
    assert bench.refresh_requests() == 12
