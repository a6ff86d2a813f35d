"""The topology of compose.yaml as plain processes on loopback: PostgreSQL behind PgBouncer
(transaction mode), `linkvault migrate`, two `linkvault api` processes and two workers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from linkvault.access import Scope, generate_api_key
from linkvault.crypto import generate_key
from linkvault.testing import SandboxAdmin, sandbox_in_subprocess
from linkvault.testing.fleet import Fleet, WorkerProcess, worker_env
from tests.conftest import PostgresServer, through_pooler
from tests.sandbox_fixtures import drive_consent
from tests.support import free_port, start_api_process

pytestmark = pytest.mark.postgres

PER_API = 6


async def connect_through(api: str, key: str, user: int) -> str:
    """A sandbox connection made through one API process, consent given at the sandbox."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as http:
        started = await http.post(
            "/v1/connections",
            json={"user_id": f"00000000-0000-4000-8000-{user:012d}", "provider": "sandbox"},
        )
        assert started.status_code == 201, started.text
        params = await drive_consent(started.json()["authorize_url"], subject=f"user-{user}")
        done = await http.get(f"/v1/oauth/callback?{urlencode(params)}")
        assert done.status_code == 200, done.text
        connection_id: str = started.json()["connection"]["id"]
        return connection_id


@pytest.fixture
def provider() -> Iterator[SandboxAdmin]:
    with sandbox_in_subprocess() as admin:
        # Two-minute tokens: each connection is due for a refresh as soon as it is made.
        admin.update_settings(
            rotate_refresh_tokens=True, revoke_family_on_reuse=True, access_token_ttl=120
        )
        yield admin


async def test_two_api_processes_and_two_workers_behind_pgbouncer_refresh_each_once(
    postgres_server: PostgresServer, provider: SandboxAdmin, tmp_path: Path
) -> None:
    pooled = through_pooler(await postgres_server.create_database(migrated=False))
    keys = generate_key("deploy")
    api_key, entry = generate_api_key("app", {Scope.READ, Scope.WRITE})
    env = worker_env(pooled, keys, provider.url, api_keys=entry.spec)
    ports = [free_port(), free_port()]
    # One public URL for both: a user's consent may come back through either process.
    env["LINKVAULT_PUBLIC_URL"] = f"http://127.0.0.1:{ports[0]}"
    migrated = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "linkvault.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr

    with ExitStack() as stack:
        apis = [
            await asyncio.to_thread(start_api_process, env, port, tmp_path / f"api-{n}.log", stack)
            for n, port in enumerate(ports)
        ]
        made = await asyncio.gather(
            *(connect_through(apis[n % 2], api_key, n) for n in range(2 * PER_API))
        )
        assert len(set(made)) == 2 * PER_API
        provider.reset()

        with Fleet(env, tmp_path) as fleet:
            workers: list[WorkerProcess] = [
                fleet.start(
                    f"worker-{n}", "--batch-size", "3", "--concurrency", "2", "--idle-poll", "0.2"
                )
                for n in range(2)
            ]
            deadline = time.monotonic() + 90
            while provider.stats()["issued"].get("refresh_token", 0) < len(made):
                assert all(w.running() for w in workers), [w.output() for w in workers]
                assert time.monotonic() < deadline, provider.stats()
                await asyncio.sleep(0.2)
            for w in workers:
                w.signal(signal.SIGTERM)
            codes = await asyncio.to_thread(fleet.wait_all, workers, 30)

        # Both API processes answer for every connection, whichever made it.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {api_key}"}) as http:
            for api in apis:
                listed = await http.get(f"{api}/v1/connections", params={"limit": 100})
                assert listed.status_code == 200
                items = {c["id"]: c for c in listed.json()["items"]}
                assert set(items) == set(made)
                assert {c["status"] for c in items.values()} == {"active"}

    assert codes == [0, 0]
    stats = provider.stats()
    assert stats["issued"].get("refresh_token", 0) == len(made)
    assert stats["refused_total"] == 0
    by_worker = Counter(str(cid) for w in workers for cid in w.refreshed_ids())
    assert by_worker == Counter({cid: 1 for cid in made})  # each exactly once, by either
