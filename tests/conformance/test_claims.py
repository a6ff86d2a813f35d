from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.errors import InvalidArgumentError
from linkvault.stores import ConnectionStore
from linkvault.stores.common import AttemptStart, ClaimRequest, ClaimResult, LostAttempt
from linkvault.testing import FakeClock
from tests.factories import creds, make, saved

LEASE = timedelta(minutes=5)
HORIZON = timedelta(minutes=10)


async def claim(
    store: ConnectionStore, owner: str, limit: int = 100, max_failures: int = 5
) -> set[UUID]:
    claims = await store.claim_due(
        owner, ClaimRequest(HORIZON, LEASE, limit=limit, max_failures=max_failures)
    )
    return {c.connection.id for c in claims}


async def due(store: ConnectionStore, clock: FakeClock, minutes: float = 5) -> ProviderConnection:
    return await saved(
        store,
        make(
            clock,
            status=ConnectionStatus.ACTIVE,
            expires_at=clock.now + timedelta(minutes=minutes),
        ),
    )


async def test_only_due_refreshable_active_connections_are_claimed(
    store: ConnectionStore, clock: FakeClock
) -> None:
    soon = await due(store, clock, 5)
    overdue = await due(store, clock, -60)
    await due(store, clock, 30)
    await saved(store, make(clock, status=ConnectionStatus.EXPIRED, expires_at=clock.now))
    api_key = make(clock)
    api_key.mark_connected(
        ProviderCredentials(b"k", CredentialType.API_KEY, clock.now), now=clock.now
    )
    await saved(store, api_key)
    never = make(clock)
    never.mark_connected(ProviderCredentials(b"k", CredentialType.OAUTH2, None), now=clock.now)
    await saved(store, never)

    claims = await store.claim_due("w1", ClaimRequest(HORIZON, LEASE, limit=10, max_failures=5))

    assert [c.connection.id for c in claims] == [overdue.id, soon.id]
    assert all(c.failures == 0 for c in claims)
    assert claims[0].connection == overdue


async def test_a_leased_connection_is_not_claimed_again_until_the_lease_lapses(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock)
    assert await claim(store, "w1") == {conn.id}
    assert await claim(store, "w2") == set()

    clock.advance(minutes=4, seconds=59)
    assert await claim(store, "w2") == set()
    clock.advance(seconds=1)
    assert await claim(store, "w2") == {conn.id}
    assert await store.finish_claim(conn.id, "w1", ClaimResult(succeeded=True)) is None


async def test_concurrent_claimers_never_share_a_connection(
    store: ConnectionStore, clock: FakeClock
) -> None:
    ids = {(await due(store, clock, n / 10)).id for n in range(60)}

    results = await asyncio.gather(*(claim(store, f"w{n}", limit=7) for n in range(12)))

    claimed = [i for r in results for i in r]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == ids


async def test_a_success_clears_the_lease_and_the_failures(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock)
    await claim(store, "w1")
    assert await store.finish_claim(conn.id, "w1", ClaimResult(succeeded=False, error="503")) == 1
    clock.advance(minutes=1)
    await claim(store, "w1")

    assert await store.finish_claim(conn.id, "w1", ClaimResult(succeeded=True)) == 0

    claims = await store.claim_due("w2", ClaimRequest(HORIZON, LEASE, limit=5, max_failures=5))
    assert [(c.connection.id, c.failures) for c in claims] == [(conn.id, 0)]


async def test_a_failure_is_retried_only_from_its_next_attempt_time(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock)
    await claim(store, "w1")
    retry_at = clock.now + timedelta(seconds=30)

    assert (
        await store.finish_claim(
            conn.id, "w1", ClaimResult(succeeded=False, next_attempt_at=retry_at, error="HTTP 503")
        )
        == 1
    )

    assert await claim(store, "w2") == set()
    clock.advance(seconds=30)
    claims = await store.claim_due("w2", ClaimRequest(HORIZON, LEASE, limit=5, max_failures=5))
    assert [(c.connection.id, c.failures) for c in claims] == [(conn.id, 1)]


async def test_a_connection_that_keeps_failing_is_no_longer_claimed(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock)
    for _ in range(3):
        assert await claim(store, "w1", max_failures=3) == {conn.id}
        await store.finish_claim(conn.id, "w1", ClaimResult(succeeded=False))

    assert await claim(store, "w1", max_failures=3) == set()


async def test_new_credentials_start_a_fresh_schedule(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock)
    for _ in range(3):
        await claim(store, "w1", max_failures=3)
        await store.finish_claim(conn.id, "w1", ClaimResult(succeeded=False))
    conn.update_credentials(
        ProviderCredentials(b"new", CredentialType.OAUTH2, clock.now + timedelta(minutes=1)),
        now=clock.now,
    )
    await store.save(conn)

    assert await claim(store, "w1", max_failures=3) == {conn.id}


async def test_released_claims_can_be_taken_at_once_by_another_worker(
    store: ConnectionStore, clock: FakeClock
) -> None:
    a = await due(store, clock)
    b = await due(store, clock, 6)
    await claim(store, "w1")

    await store.release_claims([a.id, b.id], "someone-else")
    assert await claim(store, "w2") == set()
    await store.release_claims([a.id, b.id], "w1")

    assert await claim(store, "w2") == {a.id, b.id}


async def test_the_backlog_counts_due_unleased_connections(
    store: ConnectionStore, clock: FakeClock
) -> None:
    oldest = await due(store, clock, -30)
    await due(store, clock, 5)
    await due(store, clock, 120)
    backlog = await store.refresh_backlog(HORIZON)
    assert backlog.unclaimed == 2
    assert oldest.credentials is not None
    assert backlog.oldest_due == oldest.credentials.expires_at

    await claim(store, "w1", limit=1)

    assert (await store.refresh_backlog(HORIZON)).unclaimed == 1


async def test_a_bad_owner_is_refused(store: ConnectionStore) -> None:
    with pytest.raises(InvalidArgumentError):
        await claim(store, "")


async def test_rotation_queries_select_by_blob_prefix(
    store: ConnectionStore, clock: FakeClock
) -> None:
    old: list[ProviderConnection] = []
    new: list[ProviderConnection] = []
    for n in range(6):
        conn = make(clock)
        header = b"\x01\x03old" if n % 2 else b"\x01\x03new"
        conn.mark_connected(
            ProviderCredentials(header + bytes([n]) * 40, CredentialType.OAUTH2), now=clock.now
        )
        (old if n % 2 else new).append(await saved(store, conn))
    await saved(store, make(clock))

    assert await store.count_sealed_with(b"\x01\x03old") == 3
    assert await store.count_sealed_with(b"\x01\x03new") == 3
    first = await store.find_sealed_outside(b"\x01\x03new", limit=2)
    rest = await store.find_sealed_outside(b"\x01\x03new", after=first[-1].id, limit=2)
    assert {c.id for c in first + rest} == {c.id for c in old}
    assert len(first) == 2
    assert len(rest) == 1


async def test_one_connection_can_be_claimed_for_an_immediate_refresh(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock, 500)
    pending = await saved(store, make(clock))

    first = await store.claim_connection(conn.id, "api", lease=LEASE)
    assert first is not None
    assert first.connection == conn
    assert await store.claim_connection(conn.id, "worker", lease=LEASE) is None
    assert await claim(store, "worker") == set()
    assert await store.claim_connection(pending.id, "api", lease=LEASE) is None
    assert await store.claim_connection(uuid4(), "api", lease=LEASE) is None

    await store.finish_claim(conn.id, "api", ClaimResult(succeeded=True))
    assert await store.claim_connection(conn.id, "worker", lease=LEASE) is not None


async def test_the_backlog_can_leave_out_connections_out_of_attempts(
    store: ConnectionStore, clock: FakeClock
) -> None:
    spent = await due(store, clock)
    await due(store, clock, 6)
    for _ in range(2):
        await claim(store, "w1", limit=1, max_failures=2)
        await store.finish_claim(spent.id, "w1", ClaimResult(succeeded=False))

    assert (await store.refresh_backlog(HORIZON)).unclaimed == 2
    assert (await store.refresh_backlog(HORIZON, max_failures=2)).unclaimed == 1


async def test_blobs_outside_a_set_of_headers_are_counted_in_one_query(
    store: ConnectionStore, clock: FakeClock
) -> None:
    for n, header in enumerate([b"\x01\x02aa", b"\x01\x02bb", b"\x01\x03ccc", b"\x01\x02bb"]):
        conn = make(clock)
        conn.mark_connected(
            ProviderCredentials(header + bytes([n]) * 20, CredentialType.OAUTH2), now=clock.now
        )
        await saved(store, conn)
    await saved(store, make(clock))

    assert await store.count_sealed_outside([b"\x01\x02aa", b"\x01\x02bb"]) == 1
    assert await store.count_sealed_outside([b"\x01\x03ccc"]) == 3
    assert await store.count_sealed_outside([]) == 4


async def test_lost_attempts_beyond_the_limit_never_stretch_a_claim_past_it(
    store: ConnectionStore, clock: FakeClock
) -> None:
    sent = [await due(store, clock, minutes) for minutes in (1, 2, 3)]
    assert await claim(store, "w1") == {c.id for c in sent}
    for n, conn in enumerate(sent):
        clock.advance(seconds=1)
        assert conn.credentials is not None
        attempt = AttemptStart(conn.id, f"fp-{n}", conn.credentials.encrypted_data)
        assert await store.begin_attempts("w1", lease=LEASE, attempts=[attempt])
        assert await store.record_lost(conn.id, "w1", how="read timeout", error="lost")
    await due(store, clock, 4)
    await due(store, clock, 5)

    claims = await store.claim_due("w2", ClaimRequest(HORIZON, LEASE, limit=2, max_failures=5))

    assert [c.connection.id for c in claims] == [sent[0].id, sent[1].id]  # oldest lost first
    assert all(c.lost is not None for c in claims)


# --- fences: the write-ahead attempt before a refresh request ------------------------------


def attempt(conn: ProviderConnection, fingerprint: str) -> AttemptStart:
    assert conn.credentials is not None
    return AttemptStart(conn.id, fingerprint, conn.credentials.encrypted_data)


async def test_fences_of_many_connections_hold_each_on_its_own_terms(
    store: ConnectionStore, clock: FakeClock
) -> None:
    held = [await due(store, clock, n) for n in range(1, 4)]
    taken = await due(store, clock, 4)  # its lease went to another worker
    changed = await due(store, clock, 5)  # reconnected meanwhile: the grant is not the one read
    for conn in (*held, changed):
        assert await store.claim_connection(conn.id, "w1", lease=LEASE) is not None
    assert await store.claim_connection(taken.id, "thief", lease=LEASE) is not None
    read = attempt(changed, "fp-changed")
    changed.update_credentials(creds(clock.now + timedelta(hours=1), b"new-grant"), now=clock.now)
    await store.save(changed)
    clock.advance(seconds=10)
    fenced_at = clock.now

    fenced = await store.begin_attempts(
        "w1",
        lease=LEASE,
        attempts=[
            attempt(held[0], "fp-0"),
            attempt(taken, "fp-taken"),
            read,
            attempt(held[1], "fp-1"),
            attempt(held[2], "fp-2"),
        ],
    )

    assert fenced == {conn.id: fenced_at for conn in held}
    # The fenced leases run from the fence; the others were left as they were.
    clock.advance(seconds=LEASE.total_seconds() - 5)
    for conn in held:
        assert await store.claim_connection(conn.id, "w2", lease=LEASE) is None
    for conn in (taken, changed):
        untouched = await store.claim_connection(conn.id, "w2", lease=LEASE)
        assert untouched is not None
        assert untouched.lost is None, "an attempt was recorded on a row that was not fenced"
    # Each fenced row recorded its own attempt: a worker that stops now leaves a replay.
    clock.advance(seconds=5)
    for n, conn in enumerate(held):
        next_claim = await store.claim_connection(conn.id, "w3", lease=LEASE)
        assert next_claim is not None
        assert next_claim.lost == LostAttempt(fenced_at, f"fp-{n}", None)


async def test_a_fence_for_the_same_token_keeps_the_attempts_first_time(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock)
    await store.claim_connection(conn.id, "w1", lease=LEASE)
    first = clock.now

    assert await store.begin_attempts("w1", lease=LEASE, attempts=[attempt(conn, "a")]) == {
        conn.id: first
    }
    clock.advance(seconds=30)
    assert await store.begin_attempts("w1", lease=LEASE, attempts=[attempt(conn, "a")]) == {
        conn.id: first
    }
    assert await store.begin_attempts("w1", lease=LEASE, attempts=[attempt(conn, "b")]) == {
        conn.id: clock.now
    }
    b_first = clock.now
    clock.advance(seconds=5)
    # A fence of one agrees.
    for owner, expected in (("w1", b_first), ("w2", None)):
        alone = AttemptStart(conn.id, "b", b"sealed-credentials")
        fenced = await store.begin_attempts(owner, lease=LEASE, attempts=[alone])
        assert fenced.get(conn.id) == expected


async def test_a_fence_of_nothing_is_empty_and_one_naming_a_connection_twice_is_refused(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await due(store, clock)
    await store.claim_connection(conn.id, "w1", lease=LEASE)

    assert await store.begin_attempts("w1", lease=LEASE, attempts=[]) == {}
    with pytest.raises(InvalidArgumentError):
        await store.begin_attempts(
            "w1", lease=LEASE, attempts=[attempt(conn, "a"), attempt(conn, "b")]
        )
    clock.advance(seconds=LEASE.total_seconds())
    refused = await store.claim_connection(conn.id, "w2", lease=LEASE)
    assert refused is not None
    assert refused.lost is None, "a refused fence recorded an attempt"
