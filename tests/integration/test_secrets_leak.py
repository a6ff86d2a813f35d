from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from linkvault.credentials import (
    ApiKeyCredentials,
    OAuth2Tokens,
    open_credentials,
    seal_credentials,
)
from linkvault.crypto import (
    AesGcmCipher,
    blob_key_id,
    generate_key,
    keyring_from_settings,
    load_or_create_key_file,
    parse_keys,
)
from linkvault.domain import CredentialType, ProviderConnection, ProviderCredentials
from linkvault.errors import DecryptionError, InvalidCredentialsError, LinkvaultError
from linkvault.events import EventType
from linkvault.services.connections import ConnectionService
from linkvault.services.rotation import KeyInUseError, retire, rotate
from linkvault.stores import ConnectionStore
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.stores.sqlite import SqliteConnectionRepository

ACCESS_TOKEN = "at-LEAKCANARY-" + secrets.token_urlsafe(210)
REFRESH_TOKEN = "rt-LEAKCANARY-" + secrets.token_urlsafe(90)
API_KEY = "ak-LEAKCANARY-" + secrets.token_hex(16)
API_SECRET = "as-LEAKCANARY-" + secrets.token_hex(16)

Dump = Callable[[], Awaitable[tuple[list[tuple[object, ...]], list[str]]]]


@dataclass
class Backend:
    store: ConnectionStore
    dump: Dump
    url: str


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    path = tmp_path / "leak.db"
    repo = await SqliteConnectionRepository.open(path)
    await repo.migrate()

    async def dump() -> tuple[list[tuple[object, ...]], list[str]]:
        db = sqlite3.connect(path)
        db.text_factory = lambda raw: raw.decode("utf-8", "replace")
        try:
            rows = db.execute("SELECT * FROM provider_connections").fetchall()
            columns = [c[1] for c in db.execute("PRAGMA table_info(provider_connections)")]
            as_text = ", ".join(f"CAST({c} AS TEXT)" for c in columns)
            text = db.execute(f"SELECT {as_text} FROM provider_connections").fetchall()
        finally:
            db.close()
        return rows, [repr(row) for row in text]

    try:
        yield Backend(repo, dump, f"sqlite:///{path}")
    finally:
        await repo.close()


@pytest.fixture
async def postgres_backend(postgres_url: str) -> AsyncIterator[Backend]:
    repo = await PostgresConnectionRepository.connect(postgres_url, max_size=2)

    async def dump() -> tuple[list[tuple[object, ...]], list[str]]:
        conn = await asyncpg.connect(postgres_url)
        try:
            rows = await conn.fetch("SELECT * FROM provider_connections")
            text = await conn.fetch("SELECT t::text FROM provider_connections t")
        finally:
            await conn.close()
        return [tuple(r.values()) for r in rows], [r[0] for r in text]

    try:
        yield Backend(repo, dump, postgres_url)
    finally:
        await repo.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    return chosen


def windows(value: str, size: int = 12, stride: int = 4) -> list[str]:
    # Any leaked run of size + stride - 1 characters contains one of these whole.
    return [value[i : i + size] for i in range(0, max(len(value) - size, 0) + 1, stride)]


def byte_windows(value: bytes, size: int = 8, stride: int = 2) -> list[bytes]:
    return [value[i : i + size] for i in range(0, max(len(value) - size, 0) + 1, stride)]


def key_entries_in(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


class Needles:
    def __init__(self, key_entries: Iterable[str]) -> None:
        secret_texts = [ACCESS_TOKEN, REFRESH_TOKEN, API_KEY, API_SECRET]
        raw_values = [s.encode() for s in secret_texts]
        for entry in key_entries:
            encoded = entry.split(":", 1)[1]
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            secret_texts += [encoded, base64.b64encode(raw).decode(), raw.hex()]
            raw_values.append(raw)
        self.texts = ["LEAKCANARY"]
        for text in secret_texts:
            self.texts += windows(text)
        self.texts += [chunk.hex() for value in raw_values for chunk in byte_windows(value)]
        self.raw = [b"LEAKCANARY"]
        for value in raw_values:
            self.raw += byte_windows(value)

    def assert_absent_from_text(self, where: str, text: str) -> None:
        for needle in self.texts:
            assert needle not in text, f"a secret leaked into {where}"

    def assert_absent_from_bytes(self, where: str, data: bytes) -> None:
        for needle in self.raw:
            assert needle not in data, f"a secret leaked into {where}"


def tampered(credentials: ProviderCredentials) -> ProviderCredentials:
    data = credentials.encrypted_data
    return ProviderCredentials(data[:-1] + bytes([data[-1] ^ 1]), credentials.credential_type)


class StopRotationError(Exception):
    pass


def keys_cli(*args: str, url: str, keys: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LINKVAULT_")}
    environ.update(LINKVAULT_KEYS=keys, LINKVAULT_LOG_LEVEL="DEBUG", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "linkvault.cli", "keys", *args, "-d", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )


def exception_texts(exc: BaseException) -> list[str]:
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            texts += [str(linked), repr(linked)]
    return texts


async def test_full_secret_cycle_leaks_nothing_to_logs_reprs_errors_or_the_table(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("asyncio").setLevel(logging.DEBUG)

    entry = generate_key("leak-1")
    next_entry = generate_key("leak-2")
    embedded_file = tmp_path / "embedded.keys"
    embedded_ring = load_or_create_key_file(embedded_file)
    ring = keyring_from_settings(entry, None, embedded=False)
    cipher = AesGcmCipher(ring)
    needles = Needles([entry, next_entry, *key_entries_in(embedded_file)])
    seen: list[object] = [ring, embedded_ring, cipher, *ring, *embedded_ring]
    errors: list[BaseException] = []

    tokens = OAuth2Tokens(
        access_token=ACCESS_TOKEN,
        refresh_token=REFRESH_TOKEN,
        scope="accounts:read",
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    api = ApiKeyCredentials(api_key=API_KEY, api_secret=API_SECRET)
    originals = {}
    sealed_blobs: set[bytes] = set()
    for payload in (tokens, api):
        connection = ProviderConnection(
            user_id=uuid4(), provider_id=uuid4(), provider_slug="examplebank"
        )
        sealed = seal_credentials(payload, connection_id=connection.id, cipher=cipher)
        connection.mark_connected(sealed)
        await backend.store.save(connection)
        originals[connection.id] = payload
        sealed_blobs.add(sealed.encrypted_data)
        seen += [payload, sealed, connection]

    for connection_id, payload in originals.items():
        loaded = await backend.store.find_by_id(connection_id)
        assert loaded is not None
        assert loaded.credentials is not None
        opened = open_credentials(loaded.credentials, connection_id=loaded.id, cipher=cipher)
        assert opened == payload
        seen += [loaded, loaded.credentials, opened]

        stored = loaded.credentials
        attempts = [
            (stored, uuid4(), cipher),
            (stored, connection_id, AesGcmCipher(parse_keys(generate_key()))),
            (tampered(stored), connection_id, cipher),
            (
                ProviderCredentials(stored.encrypted_data, CredentialType.CUSTOM),
                connection_id,
                cipher,
            ),
        ]
        for credentials, open_as, with_cipher in attempts:
            with pytest.raises(DecryptionError) as caught:
                open_credentials(credentials, connection_id=open_as, cipher=with_cipher)
            errors.append(caught.value)

    # Revealing writes credentials.revealed: it names who asked, never what was revealed.
    service = ConnectionService(backend.store, cipher=cipher)
    for connection_id, payload in originals.items():
        _, revealed = await service.reveal_credentials(connection_id, revealed_to="leak-reader")
        assert revealed == payload

    rows_before_rotation = await backend.dump()
    rotated_ring = keyring_from_settings(f"{next_entry},{entry}", None, embedded=False)
    rotated_cipher = AesGcmCipher(rotated_ring)
    with pytest.raises(KeyInUseError) as in_use:
        await retire(backend.store, rotated_ring, "leak-1")
    errors.append(in_use.value)
    progress: list[str] = []

    def stop_after_one(done: int, total: int) -> None:
        progress.append(f"{done}/{total}")
        raise StopRotationError(f"stopped at {done}/{total}")

    with pytest.raises(StopRotationError) as stopped:
        await rotate(backend.store, rotated_cipher, batch_size=1, on_progress=stop_after_one)
    errors.append(stopped.value)
    cli_runs = [
        keys_cli("list", url=backend.url, keys=f"{next_entry},{entry}"),
        keys_cli("rotate", "--batch-size", "1", url=backend.url, keys=f"{next_entry},{entry}"),
        keys_cli("retire", "leak-1", url=backend.url, keys=f"{next_entry},{entry}"),
    ]
    assert [run.returncode for run in cli_runs] == [0, 0, 0], [r.stderr for r in cli_runs]
    assert "1/1" in cli_runs[1].stderr
    report = await rotate(backend.store, rotated_cipher)
    assert report.complete
    seen += [rotated_ring, rotated_cipher, report, *progress]
    for connection_id, payload in originals.items():
        loaded = await backend.store.find_by_id(connection_id)
        assert loaded is not None
        assert loaded.credentials is not None
        assert blob_key_id(loaded.credentials.encrypted_data) == "leak-2"
        opened = open_credentials(
            loaded.credentials, connection_id=loaded.id, cipher=rotated_cipher
        )
        assert opened == payload
        seen += [loaded, loaded.credentials, opened]

    with pytest.raises(InvalidCredentialsError) as invalid:
        OAuth2Tokens(access_token=ACCESS_TOKEN + "\x00")
    errors.append(invalid.value)
    bad_entry = entry.replace(entry.split(":")[0], "bad id", 1)
    with pytest.raises(LinkvaultError) as bad_key:
        parse_keys(bad_entry)
    errors.append(bad_key.value)
    with pytest.raises(LinkvaultError) as short_key:
        parse_keys(entry[:-10])
    errors.append(short_key.value)
    logging.getLogger("linkvault.test").debug(
        "cycle done: %r %r %r", ring, cipher, seen, exc_info=errors[0]
    )

    for obj in seen:
        needles.assert_absent_from_text(f"repr of {type(obj).__name__}", repr(obj))
        needles.assert_absent_from_text(f"str of {type(obj).__name__}", str(obj))
    for exc in errors:
        for text in exception_texts(exc):
            needles.assert_absent_from_text(f"{type(exc).__name__}", text)

    assert caplog.records, "expected some log records to inspect"
    formatter = logging.Formatter()
    for record in caplog.records:
        where = f"log record from {record.name}"
        needles.assert_absent_from_text(where, record.getMessage())
        needles.assert_absent_from_text(where, str(record.msg))
        needles.assert_absent_from_text(where, repr(record.args))
        if record.exc_info:
            needles.assert_absent_from_text(where, formatter.formatException(record.exc_info))
    needles.assert_absent_from_text("captured log text", caplog.text)
    assert any(r.name == "linkvault.rotation" for r in caplog.records)
    for run in cli_runs:
        needles.assert_absent_from_text(f"output of {run.args[3:5]}", run.stdout + run.stderr)

    rows, text_rows = rows_before_rotation
    stored_blobs = {bytes(v) for row in rows for v in row if isinstance(v, bytes | memoryview)}
    assert sealed_blobs <= stored_blobs
    rotated_rows, rotated_text_rows = await backend.dump()
    rows += rotated_rows
    text_rows += rotated_text_rows
    assert len(rows) == 4
    for row in rows:
        needles.assert_absent_from_text("a row of provider_connections", repr(row))
        for value in row:
            if isinstance(value, bytes | bytearray | memoryview):
                needles.assert_absent_from_bytes("a bytes column", bytes(value))
                needles.assert_absent_from_text("a bytes column", bytes(value).decode("latin-1"))
            else:
                needles.assert_absent_from_text("a column", str(value))
    for text in text_rows:
        needles.assert_absent_from_text("the text form of a row", text)

    events = await backend.store.read_events(limit=1000)
    revealed_events = [e for e in events if e.event.type is EventType.CREDENTIALS_REVEALED]
    assert {e.event.data["api_key"] for e in revealed_events} == {"leak-reader"}
    assert len(revealed_events) == len(originals)
    for event in events:
        needles.assert_absent_from_text("an event's payload", json.dumps(event.payload()))
        needles.assert_absent_from_text("an event's repr", repr(event))
