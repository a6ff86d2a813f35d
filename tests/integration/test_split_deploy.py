"""Split deployment, with real processes and real signals: `linkvault api [--workers N]`,
`linkvault worker`, the health endpoints an orchestrator probes, and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from linkvault.access import Scope, generate_api_key
from linkvault.crypto import generate_key
from linkvault.domain import utc_now
from linkvault.testing import SandboxAdmin, sandbox_in_subprocess
from linkvault.testing.fleet import (
    Fleet,
    Relay,
    due_connections,
    grants_by_subject,
    lease_rows,
    schedule_summary,
    seed_due,
    seed_grants,
    stale_connections,
    store_connections,
    stored_tokens,
    worker_env,
)
from tests.conftest import PostgresServer
from tests.support import clean_env, free_port, problem_of

SERVING = re.compile(r"linkvault api: process (\d+) serving")


@dataclass
class ApiProcess:
    """`python -m linkvault.cli api ...` on a free loopback port, its stderr in a file."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    _log: IO[bytes]

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path, *options: str, cwd: Path) -> ApiProcess:
        port = free_port()
        log = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "linkvault.cli", "api", "--port", str(port), *options],
            env={**env, "LINKVAULT_HOST": "127.0.0.1"},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return cls(process, f"http://127.0.0.1:{port}", log_path, log)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        return [int(pid) for pid in SERVING.findall(self.output())]

    def wait_until_live(self, children: int = 0, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            assert self.process.poll() is None, self.output()
            try:
                live = httpx.get(f"{self.url}/v1/health/live", timeout=2).status_code == 200
            except httpx.TransportError:
                live = False
            if live and len(self.children()) >= children:
                return
            assert time.monotonic() < deadline, f"not live in {within:.0f}s:\n{self.output()}"
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def refused(url: str) -> bool:
    """Whether a new connection to `url` is refused."""
    try:
        httpx.get(f"{url}/v1/health/live", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False


def served_by(pids: list[int], port: int) -> Counter[int]:
    """How many established connections to `port` each process holds (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    held: Counter[int] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                held[inodes[fields[9]]] += 1
    return held


# --- api --workers N ---------------------------------------------------------------------


def test_api_with_two_workers_serves_from_two_processes_replaces_a_dead_one_and_drains(
    tmp_path: Path,
) -> None:
    api = ApiProcess.start(clean_env(), tmp_path / "api.log", "--workers", "2", cwd=tmp_path)
    clients: list[httpx.Client] = []
    try:
        api.wait_until_live(children=2)
        first = api.children()
        assert len(set(first)) == 2
        # Keep-alive connections, opened one by one, until both processes hold some: the
        # kernel hands each new connection to one of the processes sharing the socket.
        held: Counter[int] = Counter()
        while len(held) < 2 and len(clients) < 300:
            http = httpx.Client(base_url=api.url, timeout=10)
            clients.append(http)
            assert http.get("/v1/health/ready").status_code == 200
            held = served_by(first, api.port)
        assert set(held) == set(first), (held, len(clients))
        assert sum(held.values()) == len(clients)

        # One child dies: the other keeps serving, and the supervisor starts a third.
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(api.children()) < 3:
            assert httpx.get(f"{api.url}/v1/health/live", timeout=10).status_code == 200
            assert time.monotonic() < deadline, api.output()
            time.sleep(0.2)
        assert "exited (signal SIGKILL)" in api.output()
        now = api.children()[-2:]
        assert first[1] in now
        assert first[0] not in now

        api.process.send_signal(signal.SIGTERM)
        code = api.wait(60)
    finally:
        for http in clients:
            http.close()
        api.close()
    assert code == 0, api.output()
    assert refused(api.url)
    for pid in api.children():
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), pid
    assert "Traceback" not in api.output()


def test_when_the_supervisor_is_killed_its_children_drain_and_exit(tmp_path: Path) -> None:
    api = ApiProcess.start(clean_env(), tmp_path / "api.log", "--workers", "2", cwd=tmp_path)
    try:
        api.wait_until_live(children=2)
        children = api.children()
        api.process.kill()  # SIGKILL: no chance to stop them
        assert api.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in children):
            assert time.monotonic() < deadline, api.output()
            time.sleep(0.1)
    finally:
        api.close()
    assert refused(api.url)
    assert api.output().count("Application shutdown complete") == 2


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


# --- the drain on SIGTERM ------------------------------------------------------------------


@pytest.fixture
def provider() -> Iterator[SandboxAdmin]:
    with sandbox_in_subprocess() as admin:
        admin.update_settings(rotate_refresh_tokens=True)
        yield admin


async def one_expiring_connection(postgres_url: str, provider: SandboxAdmin, keys: str) -> str:
    """A connection whose access token expires within a second: an access-token request
    refreshes it at the provider first. Its id."""
    [conn] = due_connections(
        seed_grants(provider, 1), keys, now=utc_now(), expires_within=timedelta(seconds=1)
    )
    await store_connections(postgres_url, [conn])
    return str(conn.id)


async def wait_for(what: str, check: object, within: float = 30) -> None:
    deadline = time.monotonic() + within
    assert callable(check)
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_lets_an_in_flight_request_finish_and_refuses_new_connections(
    postgres_url: str, provider: SandboxAdmin, tmp_path: Path, workers: str
) -> None:
    keys = generate_key("k1")
    connection_id = await one_expiring_connection(postgres_url, provider, keys)
    token_key, entry = generate_api_key("app", {Scope.TOKEN})
    env = worker_env(
        postgres_url, keys, provider.url, api_keys=entry.spec, shutdown_grace_seconds="30"
    )
    provider.inject_fault("slow", count=1, delay=4, grant_type="refresh_token")
    api = ApiProcess.start(env, tmp_path / "api.log", "--workers", workers, cwd=tmp_path)
    try:
        api.wait_until_live(children=0 if workers == "1" else 2)
        async with httpx.AsyncClient(
            base_url=api.url, timeout=60, headers={"Authorization": f"Bearer {token_key}"}
        ) as http:
            slow = asyncio.create_task(
                http.post(f"/v1/connections/{connection_id}/access-token", json={})
            )
            await wait_for(
                "the refresh to reach the provider",
                lambda: provider.stats()["faults"].get("slow", 0) >= 1,
            )
            api.process.send_signal(signal.SIGTERM)
            await wait_for(
                "new connections to be refused", lambda: refused(api.url) or slow.done(), 10
            )
            assert not slow.done(), "the slow request ended before new connections were refused"
            answer = await slow
        code = await asyncio.to_thread(api.wait, 60)
    finally:
        api.close()
    assert answer.status_code == 200, answer.text
    grant = grants_by_subject(provider)[connection_id]
    assert answer.json()["access_token"] == grant["access_token"]
    assert grant["refreshes"] == 1
    assert code == 0, api.output()
    assert "Traceback" not in api.output()


@pytest.mark.postgres
async def test_a_request_that_outlasts_the_grace_is_cut_and_the_process_exits(
    postgres_url: str, provider: SandboxAdmin, tmp_path: Path
) -> None:
    grace = 2
    keys = generate_key("k1")
    connection_id = await one_expiring_connection(postgres_url, provider, keys)
    token_key, entry = generate_api_key("app", {Scope.TOKEN})
    env = worker_env(
        postgres_url, keys, provider.url, api_keys=entry.spec, shutdown_grace_seconds=str(grace)
    )
    provider.inject_fault("slow", count=1, delay=60, grant_type="refresh_token")
    api = ApiProcess.start(env, tmp_path / "api.log", cwd=tmp_path)
    try:
        api.wait_until_live()
        async with httpx.AsyncClient(
            base_url=api.url, timeout=90, headers={"Authorization": f"Bearer {token_key}"}
        ) as http:
            slow = asyncio.create_task(
                http.post(f"/v1/connections/{connection_id}/access-token", json={})
            )
            await wait_for(
                "the refresh to reach the provider",
                lambda: provider.stats()["faults"].get("slow", 0) >= 1,
            )
            api.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = await asyncio.to_thread(api.wait, grace + 20)
            took = time.monotonic() - signalled
            cut = await slow
    finally:
        api.close()
    assert code == 0, api.output()
    # Told, not dropped: a problem saying the server went away, to retry elsewhere.
    assert problem_of(cut, 503)["type"] == "urn:linkvault:problem:shutting-down"
    # Bounded by the grace, not by the 60 s the provider would take (no finer claim on a
    # busy machine).
    assert took < grace + 20
    assert "cut at the end of the shutdown grace" in api.output()
    assert "Traceback" not in api.output()


# --- readiness against a database that goes away -------------------------------------------


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.postgres
async def test_ready_follows_the_database_and_live_does_not(
    postgres_url: str, tmp_path: Path
) -> None:
    target = urlsplit(postgres_url).port or 5432
    _, entry = generate_api_key("ops", {Scope.READ})
    with Relay(target) as relay:
        url = _through(postgres_url, relay.port)
        env = clean_env(
            LINKVAULT_DATABASE_URL=url,
            LINKVAULT_KEYS=generate_key("k1"),
            LINKVAULT_API_KEYS=entry.spec,
        )
        api = ApiProcess.start(env, tmp_path / "api.log", cwd=tmp_path)
        try:
            api.wait_until_live()
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                assert (await http.get("/v1/health/ready")).status_code == 200
                relay.down()
                down = await http.get("/v1/health/ready")
                live = await http.get("/v1/health/live")
                relay.up()
                deadline = time.monotonic() + 30
                while (await http.get("/v1/health/ready")).status_code != 200:
                    assert time.monotonic() < deadline, api.output()
                    await asyncio.sleep(0.2)
        finally:
            api.close()
    body = problem_of(down, 503)
    assert body["detail"] == "the database does not answer"
    for secret in (url, str(relay.port), "postgres", "asyncpg", "refused"):
        assert secret not in down.text
    assert live.status_code == 200


# --- the worker ---------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_worker_sigterm_finishes_in_flight_refreshes_within_the_grace_and_saves_them(
    postgres_url: str, provider: SandboxAdmin, tmp_path: Path
) -> None:
    keys = generate_key("fleet")
    count, concurrency = 12, 4
    seeded = await seed_due(postgres_url, provider, keys, count)
    env = worker_env(postgres_url, keys, provider.url, shutdown_grace_seconds="30")
    provider.inject_fault("slow", count=None, delay=3, grant_type="refresh_token")
    with Fleet(env, tmp_path) as fleet:
        worker = fleet.start("w", "--batch-size", str(count), "--concurrency", str(concurrency))
        await wait_for(
            "refreshes in flight",
            lambda: int(provider.stats()["faults"].get("slow", 0)) >= 2,
        )
        worker.signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 60)
    assert code == 0, worker.output()
    summary = worker.summary()
    assert summary is not None
    issued = provider.stats()["issued_total"]
    # Every refresh that reached the provider was saved; nothing is left leased or lost.
    assert summary[0] == issued >= 2
    assert await lease_rows(postgres_url) == []
    left = await schedule_summary(postgres_url)
    assert (left["leased"], left["lost"]) == (0, 0)
    grants = grants_by_subject(provider)
    stored = await stored_tokens(postgres_url, keys)
    refreshed = {str(cid) for cid in worker.refreshed_ids()}
    assert len(refreshed) == issued
    assert (
        stale_connections({c: stored[c] for c in seeded.ids if str(c) in refreshed}, grants) == []
    )
    assert "shutdown grace exceeded" not in worker.output()


@pytest.mark.postgres
async def test_worker_cuts_what_outlasts_the_grace_and_exits(
    postgres_url: str, provider: SandboxAdmin, tmp_path: Path
) -> None:
    grace = 2
    keys = generate_key("fleet")
    await seed_due(postgres_url, provider, keys, 4)
    env = worker_env(postgres_url, keys, provider.url, shutdown_grace_seconds=str(grace))
    provider.inject_fault("slow", count=None, delay=60, grant_type="refresh_token")
    with Fleet(env, tmp_path) as fleet:
        worker = fleet.start("w", "--concurrency", "4")
        await wait_for(
            "refreshes in flight",
            lambda: int(provider.stats()["faults"].get("slow", 0)) >= 1,
        )
        worker.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(worker.wait, grace + 20)
        took = time.monotonic() - signalled
    assert code == 0, worker.output()
    assert took < grace + 20
    assert "shutdown grace exceeded" in worker.output()
    assert "Traceback" not in worker.output()


# --- bad input -------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkvault.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "variables", "says"),
    [
        (["api", "--workers", "0"], {}, "--workers"),
        (["api", "--workers", "many"], {}, "--workers"),
        (["api"], {"LINKVAULT_SHUTDOWN_GRACE_SECONDS": "0"}, "LINKVAULT_SHUTDOWN_GRACE_SECONDS"),
        (["worker"], {"LINKVAULT_SHUTDOWN_GRACE_SECONDS": "soon"}, "SHUTDOWN_GRACE_SECONDS"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, args: list[str], variables: dict[str, str], says: str
) -> None:
    result = run_cli(*args, cwd=tmp_path, env=clean_env(**variables))

    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("linkvault: error: ")
    assert says in result.stderr
    assert not (tmp_path / "linkvault.db").exists()


@pytest.mark.postgres
async def test_api_with_workers_refuses_a_schema_that_is_behind_before_starting_any(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = await postgres_server.create_database(migrated=False)
    _, entry = generate_api_key("ops", {Scope.READ})
    env = clean_env(
        LINKVAULT_DATABASE_URL=url, LINKVAULT_KEYS=generate_key("k1"), LINKVAULT_API_KEYS=entry.spec
    )

    result = await asyncio.to_thread(
        run_cli, "api", "--workers", "3", "--port", str(free_port()), cwd=tmp_path, env=env
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("linkvault: error: ")
    assert "linkvault migrate" in result.stderr
    assert "process" not in result.stderr
