"""Refresh workers as separate processes against PostgreSQL and the sandbox provider.

For tests and benchmarks of a whole fleet (linkvault's own process tests and
bench/bench_refresh.py use it): seeding
due OAuth2 connections whose refresh tokens are live grants at a sandbox, starting and
stopping `linkvault worker` processes, reading what they did, and a loopback TCP black hole
(accepts, reads, never answers) to park a worker's requests where no provider sees them.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from uuid import UUID, uuid4

import asyncpg

from linkvault.credentials import OAuth2Tokens, open_credentials, seal_credentials
from linkvault.crypto import AesGcmCipher, parse_keys
from linkvault.domain import ConnectionStatus, ProviderConnection, utc_now, uuid7
from linkvault.providers import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, Provider, load_registry
from linkvault.stores.common import ConnectionFilter, Page
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import SandboxAdmin

SUMMARY = re.compile(r"linkvault worker: refreshed (\d+), other outcomes (.*)$", re.MULTILINE)
STARTED = re.compile(r"refresh worker (\S+) started")
REFRESHED = re.compile(r"refresh connection_id=(\S+) provider=\S+ outcome=refreshed ")
RELEASED = re.compile(r"outcome=released ")
REQUEST_MS = re.compile(r" request_ms=([0-9.]+)")


def sandbox_registry_provider() -> Provider:
    """The registry's built-in `sandbox` provider (its id and slug are what rows hold)."""
    return load_registry(None, env={}).get("sandbox")


def worker_env(database_url: str, keys: str, provider_url: str, **settings: str) -> dict[str, str]:
    """The environment of a `linkvault worker` process pointed at this database and provider.

    `settings` are more LINKVAULT_* variables, named without the prefix (lease_seconds="5").
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKVAULT_")}
    env.update(
        LINKVAULT_DATABASE_URL=database_url,
        LINKVAULT_KEYS=keys,
        LINKVAULT_LOG_LEVEL="INFO",
        LINKVAULT_PROVIDER_SANDBOX_BASE_URL=provider_url,
        LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID=SANDBOX_CLIENT_ID,
        LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET=SANDBOX_CLIENT_SECRET,
        LINKVAULT_PROVIDER_BANK_CLIENT_ID=SANDBOX_CLIENT_ID,
        LINKVAULT_PROVIDER_BANK_CLIENT_SECRET=SANDBOX_CLIENT_SECRET,
    )
    env.update({f"LINKVAULT_{k.upper()}": v for k, v in settings.items()})
    return env


BANK_ID = "0b7e0b5e-3f6a-4d1e-9a43-6f0c2f1d8a21"


def bank_providers_file(folder: Path, provider_url: str, *, grace: int) -> Path:
    """A providers file declaring `bank`: the sandbox, rotating, with `grace` seconds of reuse."""
    path = folder / "providers.toml"
    path.write_text(
        f"""[[providers]]
slug = "bank"
id = "{BANK_ID}"
display_name = "A bank (the sandbox)"
auth_style = "oauth2"
base_url = "{provider_url}"
authorize_url = "/oauth/authorize"
token_url = "/oauth/token"
scopes = ["accounts:read"]
refreshes = true
rotates_refresh_tokens = true
refresh_token_reuse_grace = {grace}
""",
        encoding="utf-8",
    )
    return path


def bank_provider(providers_file: Path) -> Provider:
    return load_registry(providers_file, env={}).get("bank")


# --- seeding -------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """Connections seeded due, each holding the refresh token of its own sandbox grant.

    The grant's subject is the connection id, so a grant is found from its connection.
    """

    ids: list[UUID]
    at: datetime


def seed_grants(admin: SandboxAdmin, count: int, *, chunk: int = 5000) -> list[dict[str, Any]]:
    """`count` grants at the sandbox, each with a fresh UUIDv7 as its subject."""
    grants: list[dict[str, Any]] = []
    while len(grants) < count:
        subjects = [str(uuid7()) for _ in range(min(chunk, count - len(grants)))]
        grants.extend(admin.seed_grants(subjects))
    return grants


def due_connections(
    grants: Sequence[dict[str, Any]],
    keys: str,
    *,
    now: datetime,
    expires_within: timedelta = timedelta(minutes=5),
    provider: Provider | None = None,
) -> list[ProviderConnection]:
    """ACTIVE sandbox connections, one per grant, sealed as the connect flow seals them.

    Expiries spread over `expires_within`, so the claim's expiry order means something.
    """
    cipher = AesGcmCipher(parse_keys(keys))
    provider = provider or sandbox_registry_provider()
    out = []
    step = expires_within / max(1, len(grants))
    for n, grant in enumerate(grants):
        conn = ProviderConnection(
            id=UUID(grant["subject"]),
            user_id=uuid4(),
            provider_id=provider.id,
            provider_slug=provider.slug,
            created_at=now,
            updated_at=now,
        )
        tokens = OAuth2Tokens(
            access_token=grant["access_token"],
            refresh_token=grant["refresh_token"],
            token_type=grant["token_type"],
            scope=grant["scope"],
            expires_at=now + step * (n + 1),
        )
        conn.mark_connected(seal_credentials(tokens, connection_id=conn.id, cipher=cipher), now=now)
        out.append(conn)
    return out


async def store_connections(database_url: str, connections: Iterable[ProviderConnection]) -> None:
    """Insert through the store's own `save`, in one transaction."""
    store = await PostgresConnectionRepository.connect(database_url, max_size=2)
    async with store, store.transaction() as tx:
        for conn in connections:
            await tx.save(conn)


async def seed_due(
    database_url: str,
    admin: SandboxAdmin,
    keys: str,
    count: int,
    *,
    provider: Provider | None = None,
) -> Seeded:
    """Grants at the sandbox and their due connections in the database."""
    now = utc_now()
    grants = seed_grants(admin, count)
    await store_connections(database_url, due_connections(grants, keys, now=now, provider=provider))
    return Seeded([UUID(g["subject"]) for g in grants], now)


# --- reading the outcome ---------------------------------------------------------


@dataclass(frozen=True)
class StoredTokens:
    status: ConnectionStatus
    tokens: OAuth2Tokens | None
    updated_at: datetime


async def stored_tokens(database_url: str, keys: str) -> dict[UUID, StoredTokens]:
    """Every connection's status and decrypted OAuth2 tokens, through the store."""
    cipher = AesGcmCipher(parse_keys(keys))
    found: dict[UUID, StoredTokens] = {}
    async with await PostgresConnectionRepository.connect(database_url, max_size=2) as store:
        after: UUID | None = None
        while True:
            page = await store.list_connections(ConnectionFilter(), Page(after, 1000))
            for c in page:
                tokens = None
                if c.credentials is not None:
                    tokens = open_credentials(
                        c.credentials, connection_id=c.id, cipher=cipher, expect=OAuth2Tokens
                    )
                found[c.id] = StoredTokens(c.status, tokens, c.updated_at)
            if len(page) < 1000:
                return found
            after = page[-1].id


def grants_by_subject(admin: SandboxAdmin) -> dict[str, dict[str, Any]]:
    return {g["subject"]: g for g in admin.grants()}


def stale_connections(
    stored: Mapping[UUID, StoredTokens], grants: Mapping[str, dict[str, Any]]
) -> list[str]:
    """What is wrong with connections that do not hold their grant's latest tokens."""
    problems = []
    for cid, row in stored.items():
        grant = grants.get(str(cid))
        if grant is None:
            problems.append(f"{cid}: no grant at the sandbox")
        elif row.status is not ConnectionStatus.ACTIVE or row.tokens is None:
            problems.append(f"{cid}: {row.status.value}")
        elif grant["revoked"]:
            problems.append(f"{cid}: its grant was revoked")
        elif (row.tokens.access_token, row.tokens.refresh_token) != (
            grant["access_token"],
            grant["refresh_token"],
        ):
            problems.append(f"{cid}: holds tokens other than the sandbox issued last")
    return problems


async def lease_rows(database_url: str) -> list[asyncpg.Record]:
    """(id, refresh_lease_owner, refresh_lease_until, refresh_failures) of leased rows."""
    conn = await asyncpg.connect(database_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT id, refresh_lease_owner, refresh_lease_until, refresh_failures "
            "FROM provider_connections WHERE refresh_lease_owner IS NOT NULL"
        )
        return rows
    finally:
        await conn.close()


async def schedule_summary(database_url: str) -> asyncpg.Record:
    """Counts of leased rows, rows with failures, rows holding a lost attempt, most failures."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE refresh_lease_owner IS NOT NULL) AS leased, "
            "count(*) FILTER (WHERE refresh_failures > 0) AS failing, "
            "count(*) FILTER (WHERE refresh_attempt_at IS NOT NULL) AS lost, "
            "coalesce(max(refresh_failures), 0) AS most_failures "
            "FROM provider_connections"
        )
        assert row is not None
        return row
    finally:
        await conn.close()


async def in_flight_of(
    database_url: str, owner: str, *, sent_for: timedelta = timedelta(0)
) -> set[UUID]:
    """Connections whose lease `owner` holds with a request recorded as sent at least
    `sent_for` ago and not answered yet."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id FROM provider_connections "
            "WHERE refresh_lease_owner = $1 AND refresh_attempt_at <= $2",
            owner,
            utc_now() - sent_for,
        )
        return {r[0] for r in rows}
    finally:
        await conn.close()


async def status_reasons(database_url: str) -> dict[UUID, tuple[str, str | None]]:
    """Every connection's status and status reason."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, status, status_reason FROM provider_connections")
        return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        await conn.close()


async def circuit_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM provider_circuits")
        return rows
    finally:
        await conn.close()


async def refreshed_count(database_url: str, since: datetime) -> int:
    """How many connections were written after `since` (the seed time)."""
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(
            "SELECT count(*) FROM provider_connections WHERE updated_at > $1", since
        )
        return int(value)
    finally:
        await conn.close()


async def updated_span(database_url: str, since: datetime) -> tuple[int, float]:
    """How many connections were written after `since`, and the seconds from first to last."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), extract(epoch FROM max(updated_at) - min(updated_at)) "
            "FROM provider_connections WHERE updated_at > $1",
            since,
        )
        assert row is not None
        return int(row[0]), float(row[1] or 0.0)
    finally:
        await conn.close()


# --- worker processes --------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One `python -m linkvault.cli worker` process, its stderr in a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    @classmethod
    def start(
        cls, name: str, env: Mapping[str, str], log_dir: Path, *options: str
    ) -> WorkerProcess:
        log_path = log_dir / f"{name}.log"
        log = log_path.open("wb")
        command = [sys.executable, "-m", "linkvault.cli", "worker", *options]
        try:
            process = subprocess.Popen(  # noqa: S603 - our own CLI, arguments from the caller
                command, env=dict(env), stdout=log, stderr=subprocess.STDOUT
            )
        except BaseException:
            log.close()
            raise
        return cls(name, process, log_path, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        if self.running():
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers; closes the log."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def owner(self) -> str | None:
        found = STARTED.search(self.output())
        return found.group(1) if found else None

    def summary(self) -> tuple[int, str] | None:
        """(refreshed, other outcomes) from the summary line printed on exit."""
        found = SUMMARY.search(self.output())
        return (int(found.group(1)), found.group(2).strip()) if found else None

    def refreshed_ids(self) -> list[UUID]:
        return [UUID(m) for m in REFRESHED.findall(self.output())]

    def request_ms(self) -> list[float]:
        """The token request latency of every refresh this worker logged."""
        return [float(m) for m in REQUEST_MS.findall(self.output())]

    def released(self) -> int:
        return len(RELEASED.findall(self.output()))


@dataclass
class Fleet:
    """Worker processes that are all stopped on exit, whatever happened."""

    env: Mapping[str, str]
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, name: str, *options: str, env: Mapping[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess.start(name, env or self.env, self.log_dir, *options)
        self.workers.append(worker)
        return worker

    def wait_all(self, workers: Sequence[WorkerProcess], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for w in workers:
            try:
                codes.append(w.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{w.name} still running after {timeout:.0f}s; its log ends:\n"
                    f"{w.output()[-3000:]}"
                ) from None
        return codes

    def stop_all(self) -> None:
        for w in self.workers:
            w.signal(signal.SIGTERM)
        for w in self.workers:
            w.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


# --- a black hole --------------------------------------------------------------------


class BlackHole:
    """A loopback TCP server that accepts connections and reads them, and never answers."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(512)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._accepted = 0
        self._bytes = 0
        self._thread = threading.Thread(target=self._serve, name="black-hole", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def bytes_read(self) -> int:
        with self._lock:
            return self._bytes

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    try:
                        client, _ = self._listener.accept()
                    except BlockingIOError:
                        continue
                    client.setblocking(False)
                    self._selector.register(client, selectors.EVENT_READ)
                    with self._lock:
                        self._accepted += 1
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ConnectionError):
                    data = b""
                if data:
                    with self._lock:
                        self._bytes += len(data)
                else:
                    self._selector.unregister(sock)
                    sock.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()
        self._selector.close()


# --- a relay that can go down -------------------------------------------------------------


class Relay:
    """A loopback TCP relay in front of a server: `down()` refuses connections and cuts the
    open ones (a provider that is gone), `up()` serves again on the same port."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(512)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()
