from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx

from linkvault import open_store
from linkvault.crypto import generate_key
from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.events import EventType
from linkvault.stores.common import PendingAuthorization
from tests.conftest import PostgresServer
from tests.support import free_port


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "linkvault.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
        check=False,
    )


def test_providers_list_shows_the_built_in_providers_and_whether_a_client_is_set(
    tmp_path: Path,
) -> None:
    result = cli(
        "providers",
        "list",
        "--json",
        cwd=tmp_path,
        env={
            "LINKVAULT_PROVIDER_SCHWAB_CLIENT_ID": "app-id",
            "LINKVAULT_PROVIDER_SCHWAB_CLIENT_SECRET": "do-not-print-me",
        },
    )

    assert result.returncode == 0, result.stderr
    rows = {r["slug"]: r for r in json.loads(result.stdout)}
    assert {"schwab", "sandbox"} <= set(rows)
    assert rows["schwab"]["configured"] is True
    assert rows["schwab"]["display_name"] == "Charles Schwab"
    assert "do-not-print-me" not in result.stdout + result.stderr


def test_a_malformed_providers_file_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    bad = tmp_path / "providers.toml"
    bad.write_text('[[providers]]\nslug = "acme"\n')

    result = cli("providers", "list", cwd=tmp_path, env={"LINKVAULT_PROVIDERS_FILE": str(bad)})

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "acme" in result.stderr
    assert "Traceback" not in result.stderr


async def test_serve_refuses_a_postgres_schema_that_is_behind(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = await postgres_server.create_database(migrated=False)
    env = {
        "LINKVAULT_DATABASE_URL": url,
        "LINKVAULT_KEYS": generate_key("k1"),
        "LINKVAULT_API_KEYS": "ops:read:" + "0" * 64,
    }

    result = cli("serve", "--port", str(free_port()), cwd=tmp_path, env=env)

    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("linkvault: error: ")
    assert "linkvault migrate" in line


async def test_serve_on_postgres_without_keys_says_what_to_set(
    tmp_path: Path, postgres_url: str
) -> None:
    no_api_keys = cli("serve", cwd=tmp_path, env={"LINKVAULT_DATABASE_URL": postgres_url})
    no_cipher_keys = cli(
        "serve",
        cwd=tmp_path,
        env={"LINKVAULT_DATABASE_URL": postgres_url, "LINKVAULT_API_KEYS": "ops:read:" + "0" * 64},
    )

    for result, needed in ((no_api_keys, "LINKVAULT_API_KEYS"), (no_cipher_keys, "LINKVAULT_KEYS")):
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1
        assert needed in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "linkvault.keys").exists()


def test_worker_with_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = cli(
        "worker",
        "--until-idle",
        "-d",
        "postgresql://postgres@127.0.0.1:1/postgres",
        cwd=tmp_path,
        env={"LINKVAULT_KEYS": generate_key("k1")},
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("linkvault: error: ")
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_serve_path_serves_health_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "linkvault.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LINKVAULT_")},
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert status == 200
        denied = httpx.get(f"http://127.0.0.1:{port}/v1/connections", timeout=5)
        assert denied.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/docs" in err
    assert (tmp_path / "linkvault.db").exists()
    assert (tmp_path / "linkvault.keys").stat().st_mode & 0o077 == 0


async def test_the_worker_runs_its_chores_lapsed_authorizations_and_ending_consent(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/lapsed.db"
    now = datetime.now(UTC)
    async with await open_store(url, migrate=True) as store:
        conn = ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug="sandbox")
        await store.save(conn)
        # Schwab ends every consent after 7 days: this one ends in 23 hours.
        consented = now - timedelta(days=6, hours=1)
        schwab = ProviderConnection(
            user_id=uuid4(), provider_id=uuid4(), provider_slug="schwab", created_at=consented
        )
        sealed = ProviderCredentials(b"sealed", CredentialType.OAUTH2, now + timedelta(days=300))
        schwab.mark_connected(sealed, now=consented)
        await store.save(schwab)
        await store.put_state(
            PendingAuthorization(
                os.urandom(32), conn.id, os.urandom(60), "http://127.0.0.1/cb", None,
                now - timedelta(minutes=20), now - timedelta(minutes=10),
            )
        )  # fmt: skip

    result = await asyncio.to_thread(
        cli, "worker", "--until-idle", "-d", url, cwd=tmp_path,
        env={"LINKVAULT_KEYS": generate_key("k1")},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    async with await open_store(url) as store:
        stored = await store.find_by_id(conn.id)
        assert stored is not None
        assert stored.status is ConnectionStatus.FAILED
        assert stored.status_reason == "authorization was not completed"
        last = (await store.connection_events(schwab.id))[-1]
        assert last.event.type is EventType.CONSENT_EXPIRING
