"""API throughput and p99 latency on PostgreSQL, next to a bare endpoint of the same stack.

    .venv/bin/python bench/bench_api.py [--seconds 5] [--concurrency 32] [--users 200]

Each app runs in its own process under uvicorn (the same config `linkvault serve` uses);
the load comes from this process over keep-alive HTTP/1.1 on loopback. PostgreSQL comes
from LINKVAULT_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
a throwaway database is created there and dropped at the end, on failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import asyncpg
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key, parse_api_keys
from linkvault.api import serve
from linkvault.credentials import ApiKeyCredentials
from linkvault.crypto import generate_key
from linkvault.runtime import Runtime
from linkvault.serving import bind_loopback, socket_url
from linkvault.settings import Settings

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PROVIDERS = """
[[providers]]
slug = "bench-keys"
id = "5d0e1c52-8b0e-4f0e-9d8e-0b6f3c1e2a77"
display_name = "Bench (API key)"
auth_style = "api_key"
"""
READY = "BENCH_API_URL="


# --- the server side (a child process) -----------------------------------------------


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.get("/constant")
    async def constant() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def serve_child(kind: str, providers: str) -> None:
    sock = bind_loopback()
    if kind == "bare":
        config = uvicorn.Config(
            bare_app(), log_level="warning", access_log=False, server_header=False, backlog=2048
        )
        print(f"{READY}{socket_url(sock)}", flush=True)
        await uvicorn.Server(config).serve(sockets=[sock])
        return
    settings = Settings(providers_file=Path(providers))
    access = parse_api_keys(settings.api_keys.get_secret_value() if settings.api_keys else "")
    runtime = await Runtime.open(settings, env={})
    try:
        print(f"{READY}{socket_url(sock)}", flush=True)
        await serve(runtime, access, sockets=[sock], run_worker=False, log_level="warning")
    finally:
        await runtime.close()


@contextmanager
def child_server(kind: str, env: dict[str, str], providers: Path) -> Iterator[str]:
    command = [sys.executable, __file__, "--serve", kind, "--providers", str(providers)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith(READY):
            raise RuntimeError(f"the {kind} server did not start (exit {process.poll()})")
        yield line.removeprefix(READY).strip()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the load side ------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def _client(
    host: str,
    port: int,
    paths: Sequence[str],
    offset: int,
    auth: bytes,
    warm_until: float,
    stop_at: float,
    out: Result,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    i = offset
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            path = paths[i % len(paths)]
            i += 1
            writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n" + auth + b"\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if started < warm_until:
                continue
            out.latencies.append(time.perf_counter() - started)
            out.requests += 1
            if head[9:12] != b"200":
                out.errors += 1
    finally:
        writer.close()


async def load(
    name: str, url: str, paths: Sequence[str], key: str, concurrency: int, seconds: float
) -> Result:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    auth = f"Authorization: Bearer {key}\r\n".encode()
    now = time.perf_counter()
    warm_until, stop_at = now + 1.0, now + 1.0 + seconds
    result = Result(name, 0, 0, seconds, [])
    await asyncio.gather(
        *(
            _client(parts.hostname, parts.port, paths, n * 7, auth, warm_until, stop_at, result)
            for n in range(concurrency)
        )
    )
    return result


# --- setup ---------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def seed(settings: Settings, users: int, per_user: int) -> tuple[list[UUID], list[UUID]]:
    user_ids = [uuid4() for _ in range(users)]
    connection_ids: list[UUID] = []
    async with await Runtime.open(settings, env={}, migrate=True) as runtime:
        for user in user_ids:
            for n in range(per_user):
                conn = await runtime.connect.connect_with_credentials(
                    user_id=user,
                    provider_slug="bench-keys",
                    credentials=ApiKeyCredentials(f"key-{n}-{secrets.token_hex(8)}"),
                    alias=f"account {n}",
                )
                connection_ids.append(conn.id)
    return user_ids, connection_ids


@dataclass
class SeededApi:
    """A throwaway database seeded with API-key connections, and what serving it takes."""

    key: str  # a read-scope API key
    env: dict[str, str]  # LINKVAULT_* for a server process on this database
    providers: Path
    users: list[UUID]
    connections: list[UUID]


@asynccontextmanager
async def seeded_api(prefix: str, users: int, per_user: int) -> AsyncIterator[SeededApi]:
    """Create, migrate and seed a database on LINKVAULT_BENCH_POSTGRES_URL; drop it after."""
    server = os.environ.get("LINKVAULT_BENCH_POSTGRES_URL", DEFAULT_PG)
    name = f"{prefix}_{os.getpid()}"
    admin = await asyncpg.connect(server, timeout=5)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            providers = Path(tmp) / "providers.toml"
            providers.write_text(PROVIDERS)
            key, entry = generate_api_key("bench", {Scope.READ})
            database_url = with_database(server, name)
            encryption_key = generate_key("bench")
            settings = Settings(
                database_url=database_url,
                keys=SecretStr(encryption_key),
                providers_file=providers,
                api_keys=SecretStr(ApiKeySet([entry]).entries[0].spec),
            )
            user_ids, connection_ids = await seed(settings, users, per_user)
            env = {
                **os.environ,
                "LINKVAULT_DATABASE_URL": database_url,
                "LINKVAULT_KEYS": encryption_key,
                "LINKVAULT_API_KEYS": entry.spec,
            }
            yield SeededApi(key, env, providers, user_ids, connection_ids)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run(args: argparse.Namespace) -> list[Result]:
    async with seeded_api("linkvault_bench_api", args.users, args.per_user) as seeded:
        scenarios = [
            ("bare constant", "bare", ["/constant"]),
            ("get by id", "linkvault", [f"/v1/connections/{c}" for c in seeded.connections]),
            (
                "list by user",
                "linkvault",
                [f"/v1/connections?user_id={u}&limit=50" for u in seeded.users],
            ),
        ]
        results = []
        for label, kind, paths in scenarios:
            with child_server(kind, seeded.env, seeded.providers) as url:
                results.append(
                    await load(label, url, paths, seeded.key, args.concurrency, args.seconds)
                )
        return results


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"concurrency {args.concurrency}, {args.seconds:.0f} s per scenario after 1 s warm-up, "
        f"{args.users} users x {args.per_user} connections, PostgreSQL, uvicorn, loopback"
    )
    print(
        f"{'scenario':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}"
        f"{'thr. ratio':>12}{'p99 ratio':>11}"
    )
    base = results[0]
    for r in results:
        print(
            f"{r.name:<16}{r.throughput:>10.0f}{r.percentile(0.50):>10.2f}"
            f"{r.percentile(0.99):>10.2f}{r.errors:>8}"
            f"{r.throughput / base.throughput:>12.2f}"
            f"{r.percentile(0.99) / base.percentile(0.99):>11.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--per-user", type=int, default=5)
    parser.add_argument("--serve", choices=["bare", "linkvault"], help=argparse.SUPPRESS)
    parser.add_argument("--providers", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_child(args.serve, args.providers))
        return
    results = asyncio.run(run(args))
    report(results, args)
    if any(r.errors for r in results):
        sys.exit("some requests failed")


if __name__ == "__main__":
    main()
