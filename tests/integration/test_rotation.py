from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from linkvault.credentials import (
    ApiKeyCredentials,
    CredentialPayload,
    CustomCredentials,
    LinkTokenCredentials,
    OAuth2Tokens,
    deserialize_payload,
    open_credentials,
    seal_credentials,
)
from linkvault.crypto import (
    AesGcmCipher,
    Key,
    KeyRing,
    blob_key_id,
    generate_key,
    key_prefix,
    parse_keys,
)
from linkvault.domain import ConnectionStatus, ProviderConnection, ProviderCredentials
from linkvault.errors import KeyRingError, StaleConnectionError
from linkvault.services.rotation import (
    KeyInUseError,
    count_outside_ring,
    key_usage,
    retire,
    rotate,
)
from linkvault.stores import ConnectionStore
from linkvault.stores.common import ClaimResult, Page, PendingAuthorization
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import FakeClock

PROVIDER = UUID("0190a5b0-0000-7000-8000-000000000001")
EXPIRY = datetime(2031, 1, 1, tzinfo=UTC)

ENTRY_A = generate_key("A")
ENTRY_B = generate_key("B")
KEY_Z = Key.generate("Z")
RING_A = parse_keys(ENTRY_A)
RING_AB = parse_keys(f"{ENTRY_B},{ENTRY_A}")
CIPHER_A = AesGcmCipher(RING_A)
CIPHER_B = AesGcmCipher(RING_AB)


@dataclass(frozen=True)
class State:
    version: int
    alias: str | None
    status: ConnectionStatus
    payload: CredentialPayload | None


def payload_for(i: int) -> CredentialPayload | None:
    kind = i % 6
    if kind in (0, 5):
        return OAuth2Tokens(
            access_token=f"at-{i}-{uuid4().hex}", refresh_token=f"rt-{i}", expires_at=EXPIRY
        )
    if kind == 1:
        return ApiKeyCredentials(api_key=f"ak-{i}", api_secret=f"as-{i}")
    if kind == 2:
        return LinkTokenCredentials(access_token=f"lt-{i}", item_id=f"item-{i}", expires_at=EXPIRY)
    if kind == 3:
        return CustomCredentials(values={"token": f"custom-{i}"})
    return None


def state_of(conn: ProviderConnection, cipher: AesGcmCipher = CIPHER_B) -> State:
    payload = None
    if conn.credentials is not None:
        payload = open_credentials(conn.credentials, connection_id=conn.id, cipher=cipher)
    return State(conn.version, conn.alias, conn.status, payload)


async def seed(
    store: ConnectionStore, count: int, cipher: AesGcmCipher = CIPHER_A
) -> dict[UUID, State]:
    states: dict[UUID, State] = {}
    async with store.transaction() as tx:
        for i in range(count):
            conn = ProviderConnection(
                user_id=uuid4(), provider_id=PROVIDER, provider_slug="examplebank", alias=f"s{i}"
            )
            payload = payload_for(i)
            if payload is not None:
                conn.mark_connected(seal_credentials(payload, connection_id=conn.id, cipher=cipher))
                if i % 6 == 5:
                    conn.mark_expired("the provider said so")
            await tx.save(conn)
            states[conn.id] = State(conn.version, conn.alias, conn.status, payload)
    return states


async def all_rows(store: ConnectionStore) -> list[ProviderConnection]:
    rows: list[ProviderConnection] = []
    cursor: UUID | None = None
    while True:
        page = await store.list_connections(None, Page(after=cursor, limit=1000))
        if not page:
            return rows
        rows += page
        cursor = page[-1].id


async def assert_rows_match(store: ConnectionStore, expected: dict[UUID, State]) -> None:
    rows = await all_rows(store)
    assert {r.id for r in rows} == set(expected)
    for row in rows:
        want = expected[row.id]
        got = state_of(row)
        assert (got.alias, got.status, got.payload) == (want.alias, want.status, want.payload)
        assert row.version >= want.version


async def sealed_under(store: ConnectionStore, key_id: str) -> int:
    return await store.count_sealed_with(key_prefix(key_id))


class InterruptError(Exception):
    pass


# The real store, with another client renaming a row just before the rotation saves it.
class RenameBeforeSave:
    def __init__(self, store: ConnectionStore, every: int) -> None:
        self._store = store
        self._every = every
        self._saves = 0
        self.renamed: dict[UUID, str] = {}

    async def save(self, connection: ProviderConnection) -> None:
        self._saves += 1
        if self._saves % self._every == 0 and connection.id not in self.renamed:
            other = await self._store.find_by_id(connection.id)
            assert other is not None
            other.rename(f"renamed-{self._saves}")
            await self._store.save(other)
            self.renamed[connection.id] = f"renamed-{self._saves}"
        await self._store.save(connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_rotation_reseals_every_blob_under_the_active_key_and_keeps_every_payload(
    store: ConnectionStore,
) -> None:
    expected = await seed(store, 150)
    with_credentials = sum(1 for s in expected.values() if s.payload is not None)
    assert await key_usage(store, RING_AB) == {"A": with_credentials, "B": 0}
    progress: list[tuple[int, int]] = []

    report = await rotate(
        store, CIPHER_B, batch_size=17, on_progress=lambda d, t: progress.append((d, t))
    )

    assert report.rotated == with_credentials
    assert report.total == with_credentials
    assert report.complete
    assert dict(report.remaining) == {"A": 0}
    assert await sealed_under(store, "A") == 0
    assert await key_usage(store, RING_AB) == {"A": 0, "B": with_credentials}
    assert progress[-1] == (with_credentials, with_credentials)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    await assert_rows_match(store, expected)
    again = await rotate(store, CIPHER_B)
    assert (again.total, again.rotated, again.complete) == (0, 0, True)


async def test_a_row_written_concurrently_is_reloaded_and_retried_keeping_the_write(
    store: ConnectionStore,
) -> None:
    expected = await seed(store, 60)
    racing = RenameBeforeSave(store, every=4)

    report = await rotate(cast(ConnectionStore, racing), CIPHER_B, batch_size=10)

    assert racing.renamed
    assert report.retried == len(racing.renamed)
    assert report.complete
    assert await sealed_under(store, "A") == 0
    for connection_id, alias in racing.renamed.items():
        old = expected[connection_id]
        expected[connection_id] = State(old.version, alias, old.status, old.payload)
    await assert_rows_match(store, expected)


async def test_rotation_interrupted_after_some_batches_finishes_when_run_again(
    store: ConnectionStore,
) -> None:
    expected = await seed(store, 120)
    with_credentials = sum(1 for s in expected.values() if s.payload is not None)

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 20:
            raise InterruptError

    with pytest.raises(InterruptError):
        await rotate(store, CIPHER_B, batch_size=10, on_progress=stop_after_two_batches)

    assert await sealed_under(store, "B") == 20
    assert await sealed_under(store, "A") == with_credentials - 20
    resumed = await rotate(store, CIPHER_B, batch_size=10)
    assert resumed.total == with_credentials - 20
    assert resumed.rotated == with_credentials - 20
    assert resumed.complete
    await assert_rows_match(store, expected)


async def test_cancelled_rotation_leaves_no_lease_behind_and_resumes(
    postgres_store: PostgresConnectionRepository,
) -> None:
    expected = await seed(postgres_store, 300)
    halfway = asyncio.Event()

    def note(done: int, total: int) -> None:
        if done >= 50:
            halfway.set()

    task = asyncio.create_task(rotate(postgres_store, CIPHER_B, batch_size=5, on_progress=note))
    await halfway.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert 0 < await sealed_under(postgres_store, "B") < 250
    for connection_id, state in expected.items():
        if state.status is ConnectionStatus.ACTIVE and isinstance(state.payload, OAuth2Tokens):
            claim = await postgres_store.claim_connection(
                connection_id, "probe", lease=timedelta(seconds=5)
            )
            assert claim is not None, "the cancelled rotation left a lease behind"
            await postgres_store.release_claims([connection_id], "probe")
    report = await rotate(postgres_store, CIPHER_B)
    assert report.complete
    await assert_rows_match(postgres_store, expected)


async def test_row_leased_by_a_refresh_worker_is_left_busy_and_rotated_once_released(
    store: ConnectionStore,
) -> None:
    expected = await seed(store, 12)
    leased = next(
        i
        for i, s in expected.items()
        if s.status is ConnectionStatus.ACTIVE and isinstance(s.payload, OAuth2Tokens)
    )
    claim = await store.claim_connection(leased, "refresh-worker", lease=timedelta(minutes=2))
    assert claim is not None

    first = await rotate(store, CIPHER_B, max_passes=2, pass_delay=0)

    assert first.busy == (leased,)
    assert not first.complete
    assert dict(first.remaining) == {"A": 1}
    await store.release_claims([leased], "refresh-worker")
    second = await rotate(store, CIPHER_B)
    assert second.rotated == 1
    assert second.complete
    await assert_rows_match(store, expected)


async def test_blobs_under_unknown_keys_or_tampered_are_reported_not_fatal(
    store: ConnectionStore,
) -> None:
    expected = await seed(store, 30)
    foreign = await seed(store, 4, cipher=AesGcmCipher(KeyRing([KEY_Z])))
    foreign_with_credentials = [i for i, s in foreign.items() if s.payload is not None]
    victim = next(i for i, s in expected.items() if s.payload is not None)
    conn = await store.find_by_id(victim)
    assert conn is not None
    assert conn.credentials is not None
    data = conn.credentials.encrypted_data
    conn.reseal_credentials(
        ProviderCredentials(
            data[:-1] + bytes([data[-1] ^ 1]),
            conn.credentials.credential_type,
            conn.credentials.expires_at,
        )
    )
    await store.save(conn)

    report = await rotate(store, CIPHER_B, batch_size=7)

    unreadable = {u.connection_id: u for u in report.unreadable}
    assert set(unreadable) == {victim, *foreign_with_credentials}
    assert unreadable[victim].key_id == "A"
    assert all(unreadable[i].key_id == "Z" for i in foreign_with_credentials)
    assert all("'Z'" in unreadable[i].reason for i in foreign_with_credentials)
    assert report.unreadable_by_key() == {"A": 1, "Z": len(foreign_with_credentials)}
    assert dict(report.remaining) == {"A": 1}
    assert report.outside_ring == len(foreign_with_credentials)
    assert await count_outside_ring(store, RING_AB) == len(foreign_with_credentials)
    assert not report.complete
    expected_readable = sum(1 for s in expected.values() if s.payload is not None) - 1
    assert report.rotated == expected_readable
    assert await sealed_under(store, "B") == expected_readable
    rerun = await rotate(store, CIPHER_B)
    assert rerun.rotated == 0
    assert len(rerun.unreadable) == len(report.unreadable)


async def test_retire_refuses_a_key_in_use_or_active_and_drops_it_once_unused(
    store: ConnectionStore,
) -> None:
    expected = await seed(store, 24)
    in_use = sum(1 for s in expected.values() if s.payload is not None)

    with pytest.raises(KeyInUseError) as refused:
        await retire(store, RING_AB, "A")
    assert (refused.value.key_id, refused.value.rows) == ("A", in_use)
    assert f"{in_use} connections are still sealed under it" in str(refused.value)
    assert "linkvault keys rotate" in str(refused.value)
    with pytest.raises(KeyRingError, match="is the active key"):
        await retire(store, RING_AB, "B")
    with pytest.raises(KeyRingError, match="'Q' is not in the key ring"):
        await retire(store, RING_AB, "Q")
    with pytest.raises(KeyRingError) as malformed:
        await retire(store, RING_AB, "A:c2VjcmV0LWtleS1tYXRlcmlhbA")
    assert "c2VjcmV0" not in str(malformed.value)

    await rotate(store, CIPHER_B)
    smaller = await retire(store, RING_AB, "A")

    assert smaller.ids == ("B",)
    assert smaller.active_id == "B"
    await assert_rows_match(store, expected)


async def test_retire_waits_for_pending_authorizations_sealed_under_the_key(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = ProviderConnection(user_id=uuid4(), provider_id=PROVIDER, provider_slug="sandbox")
    await store.save(conn)
    await store.put_state(
        PendingAuthorization(
            state_hash=os.urandom(32),
            connection_id=conn.id,
            sealed_verifier=CIPHER_A.seal(b"verifier", connection_id=conn.id),
            redirect_uri="http://127.0.0.1:8000/v1/oauth/callback",
            return_to=None,
            created_at=clock.now,
            expires_at=clock.now + timedelta(minutes=10),
        )
    )

    with pytest.raises(KeyInUseError) as refused:
        await retire(store, RING_AB, "A")
    assert "1 pending authorization is still sealed under it" in str(refused.value)

    clock.advance(minutes=10, seconds=1)
    assert (await retire(store, RING_AB, "A")).ids == ("B",)


@dataclass
class Writers:
    states: dict[UUID, list[State]]
    stale: int = 0
    gave_up: int = 0
    writes: int = 0

    def record(self, conn: ProviderConnection) -> None:
        self.states.setdefault(conn.id, []).append(state_of(conn))
        self.writes += 1


def pick(rng: random.Random, ids: Sequence[UUID], hot: list[int], width: int) -> UUID:
    # Most writes land just ahead of the rotation's position: that is where they collide.
    if rng.random() < 0.7:
        start = min(hot[0], len(ids) - 1)
        return ids[rng.randrange(start, min(start + width, len(ids)))]
    return ids[rng.randrange(len(ids))]


async def api_writer(
    store: ConnectionStore,
    ids: Sequence[UUID],
    hot: list[int],
    stop: asyncio.Event,
    log: Writers,
    seed_value: int,
) -> None:
    rng = random.Random(seed_value)
    n = 0
    while not stop.is_set():
        n += 1
        target = pick(rng, ids, hot, 100)
        roll = rng.random()
        for _ in range(50):
            conn = await store.find_by_id(target)
            assert conn is not None
            if conn.status is ConnectionStatus.ACTIVE and roll < 0.45:
                payload = ApiKeyCredentials(api_key=f"w{seed_value}-{n}")
                conn.update_credentials(
                    seal_credentials(payload, connection_id=conn.id, cipher=CIPHER_B)
                )
            elif conn.status is not ConnectionStatus.DISCONNECTED and roll > 0.98:
                conn.mark_disconnected()
            else:
                conn.rename(f"w{seed_value}-{n}")
            try:
                await store.save(conn)
            except StaleConnectionError:
                log.stale += 1
                continue
            log.record(conn)
            break
        else:
            log.gave_up += 1
        await asyncio.sleep(0)


async def refresh_writer(
    store: ConnectionStore,
    ids: Sequence[UUID],
    hot: list[int],
    stop: asyncio.Event,
    log: Writers,
) -> None:
    rng = random.Random(99)
    n = 0
    while not stop.is_set():
        n += 1
        target = pick(rng, ids, hot, 100)
        claim = await store.claim_connection(target, "refresher", lease=timedelta(minutes=1))
        if claim is None:
            await asyncio.sleep(0)
            continue
        conn = claim.connection
        try:
            await asyncio.sleep(0.001)  # the provider's token endpoint
            tokens = OAuth2Tokens(access_token=f"refreshed-{n}", expires_at=EXPIRY)
            conn.update_credentials(
                seal_credentials(tokens, connection_id=conn.id, cipher=CIPHER_B)
            )
            await store.save(conn)
            log.record(conn)
        except StaleConnectionError:
            log.stale += 1
        finally:
            await store.finish_claim(conn.id, "refresher", ClaimResult(succeeded=True))


PROCESS_WRITER = """
import asyncio, json, random, sys
from pathlib import Path
from uuid import UUID
from linkvault.credentials import ApiKeyCredentials, open_credentials, seal_credentials
from linkvault.credentials import serialize_payload
from linkvault.crypto import AesGcmCipher, parse_keys
from linkvault.domain import ConnectionStatus
from linkvault.errors import StaleConnectionError
from linkvault.stores.postgres import PostgresConnectionRepository

async def main() -> None:
    url, ids_file, stop_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cipher = AesGcmCipher(parse_keys(sys.stdin.readline(), active="B"))
    ids = [UUID(i) for i in json.loads(ids_file.read_text())]
    rng = random.Random(1234)
    store = await PostgresConnectionRepository.connect(url, max_size=2)
    print(json.dumps({"ready": True}), flush=True)
    n = 0
    while not stop_file.exists():
        n += 1
        target = ids[rng.randrange(len(ids))]
        for _ in range(50):
            conn = await store.find_by_id(target)
            if conn.status is ConnectionStatus.ACTIVE and n % 2:
                payload = ApiKeyCredentials(api_key=f"proc-{n}")
                sealed = seal_credentials(payload, connection_id=conn.id, cipher=cipher)
                conn.update_credentials(sealed)
            else:
                conn.rename(f"proc-{n}")
            try:
                await store.save(conn)
            except StaleConnectionError:
                continue
            payload = None
            if conn.credentials is not None:
                opened = open_credentials(conn.credentials, connection_id=conn.id, cipher=cipher)
                payload = serialize_payload(opened).decode()
            print(json.dumps({"id": str(conn.id), "version": conn.version, "alias": conn.alias,
                              "status": conn.status.value, "payload": payload}), flush=True)
            break
    await store.close()

asyncio.run(main())
"""


@pytest.mark.postgres
@pytest.mark.slow
async def test_rotation_on_postgres_with_concurrent_writers_loses_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    seeder = await PostgresConnectionRepository.connect(postgres_url, max_size=2)
    writers_store = await PostgresConnectionRepository.connect(postgres_url, max_size=8)
    rotation_store = await PostgresConnectionRepository.connect(postgres_url, max_size=2)
    try:
        seeded = await seed(seeder, 2000)
        ids = sorted(seeded, key=lambda i: i.bytes)
        log = Writers({i: [s] for i, s in seeded.items()})
        (tmp_path / "ids.json").write_text(json.dumps([str(i) for i in ids]))
        stop_file = tmp_path / "stop"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PROCESS_WRITER,
            postgres_url,
            str(tmp_path / "ids.json"),
            str(stop_file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(f"{ENTRY_B},{ENTRY_A}\n".encode())
        await process.stdin.drain()
        process.stdin.close()
        ready = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert json.loads(ready) == {"ready": True}
        process_lines: list[bytes] = []

        async def drain(stream: asyncio.StreamReader) -> None:
            while line := await stream.readline():
                process_lines.append(line)

        drainer = asyncio.create_task(drain(process.stdout))
        hot = [0]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(api_writer(writers_store, ids, hot, stop, log, n)) for n in range(5)
        ]
        tasks.append(asyncio.create_task(refresh_writer(writers_store, ids, hot, stop, log)))
        await asyncio.sleep(0.2)

        def follow(done: int, total: int) -> None:
            hot[0] = done

        report = await rotate(
            rotation_store,
            CIPHER_B,
            batch_size=100,
            on_progress=follow,
            pass_delay=0.05,
            max_passes=10,
        )
        stop.set()
        stop_file.touch()
        await asyncio.gather(*tasks)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        await drainer

        for line in process_lines:
            row = json.loads(line)
            payload = (
                None if row["payload"] is None else deserialize_payload(row["payload"].encode())
            )
            log.states[UUID(row["id"])].append(
                State(row["version"], row["alias"], ConnectionStatus(row["status"]), payload)
            )
        assert report.retried > 0
        assert report.complete, report
        assert process_lines, "the writer process wrote nothing"
        assert log.writes > 200
        assert log.gave_up == 0
        assert await rotation_store.count_sealed_with(key_prefix("A")) == 0
        expected = {i: max(states, key=lambda s: s.version) for i, states in log.states.items()}
        for states in log.states.values():
            versions = [s.version for s in states]
            assert len(versions) == len(set(versions)), "two writes claim the same version"
        rows = await all_rows(rotation_store)
        assert len(rows) == 2000
        for row in rows:
            want = expected[row.id]
            got = state_of(row)
            assert (got.alias, got.status, got.payload) == (want.alias, want.status, want.payload)
            if row.credentials is not None:
                assert blob_key_id(row.credentials.encrypted_data) == "B"
        assert (await retire(rotation_store, RING_AB, "A")).ids == ("B",)
    finally:
        for repo in (seeder, writers_store, rotation_store):
            await repo.close()
