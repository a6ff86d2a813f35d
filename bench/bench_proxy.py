"""The provider proxy: throughput, p50 and p99 through linkvault, next to the same requests
sent straight to the sandbox's protected API in the same run.

    .venv/bin/python bench/bench_proxy.py [--seconds 5] [--concurrency 1,16] [--connections 8]
                                          [--rounds 2] [--path accounts] [--provider-latency 0]
                                          [--database postgres|sqlite]

The sandbox serves in its own process; linkvault in another (uvicorn, the config
`linkvault serve` uses, no refresh worker) on a throwaway PostgreSQL database from
LINKVAULT_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
dropped at the end, or with `--database sqlite` on a SQLite file in a temporary directory.
`--connections` OAuth2 connections are made through the API and the sandbox's consent page.
Each round then loads `GET /api/<path>` straight at the sandbox with the connections' access
tokens, then `GET /v1/connections/{id}/proxy/<path>` at linkvault with an API key, over
keep-alive HTTP/1.1 on loopback from this process. Rounds alternate, so both sides see the
same machine; the table pools the rounds. The load generator, linkvault and the sandbox
share the machine's cores: at high concurrency the ratio is mostly linkvault's CPU cost per
request, at concurrency 1 its added latency. `--provider-latency` makes the sandbox wait
before each answer, as a real provider across a network does; the milliseconds the proxy
adds should not grow with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import httpx

from linkvault.access import Scope, generate_api_key
from linkvault.api import CALLBACK_PATH
from linkvault.crypto import generate_key
from linkvault.providers import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from linkvault.testing import SandboxAdmin, sandbox_in_subprocess

READY = "BENCH_PROXY_URL="
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_P50_RATIO = 1.5


# --- linkvault in a child process ----------------------------------------------------------


async def serve_child() -> None:
    from linkvault.access import access_from_settings
    from linkvault.api import serve
    from linkvault.runtime import Runtime
    from linkvault.serving import bind_loopback, socket_url
    from linkvault.settings import Settings

    settings = Settings()
    runtime = await Runtime.open(settings)
    sock = bind_loopback()
    try:
        print(f"{READY}{socket_url(sock)}", flush=True)
        access = access_from_settings(settings)
        await serve(runtime, access, sockets=[sock], run_worker=False, log_level="warning")
    finally:
        await runtime.close()


@contextmanager
def linkvault_server(env: dict[str, str], cwd: str) -> Iterator[str]:
    command = [sys.executable, __file__, "--serve"]
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith(READY):
            raise RuntimeError(f"linkvault did not start (exit {process.poll()})")
        yield line.removeprefix(READY).strip()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def connect(api: httpx.Client, sandbox_url: str, subject: str) -> str:
    """One OAuth2 connection through the API and the sandbox's consent page; its id."""
    started = api.post("/v1/connections", json={"user_id": str(uuid4()), "provider": "sandbox"})
    started.raise_for_status()
    with httpx.Client() as browser:
        page = browser.get(started.json()["authorize_url"])
        found = re.search(r'name="request_id" value="([^"]+)"', page.text)
        assert found is not None, "no consent page"
        consent = browser.post(
            f"{sandbox_url}/oauth/authorize",
            data={"request_id": found.group(1), "decision": "approve", "subject": subject},
        )
    params = dict(parse_qsl(urlsplit(consent.headers["location"]).query))
    api.get(CALLBACK_PATH, params=params).raise_for_status()
    connection_id: str = started.json()["connection"]["id"]
    return connection_id


# --- the load ---------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] | None = None

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies or [0.0])
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def _client(
    url: str, requests: Sequence[bytes], offset: int, warm_until: float, stop_at: float, out: Result
) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert out.latencies is not None
    i = offset
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length, chunked = 0, False
            for line in head.split(b"\r\n"):
                lower = line.lower()
                if lower.startswith(b"content-length:"):
                    length = int(line[15:])
                elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
                    chunked = True
            if chunked:
                await _read_chunked(reader)
            else:
                await reader.readexactly(length)
            if started < warm_until:
                continue
            out.latencies.append(time.perf_counter() - started)
            out.requests += 1
            if head[9:12] != b"200":
                out.errors += 1
    finally:
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def load(
    name: str, url: str, requests: Sequence[bytes], concurrency: int, seconds: float
) -> Result:
    now = time.perf_counter()
    warm_until, stop_at = now + 0.5, now + 0.5 + seconds
    result = Result(name, concurrency, seconds=seconds, latencies=[])
    await asyncio.gather(
        *(_client(url, requests, n, warm_until, stop_at, result) for n in range(concurrency))
    )
    return result


def request(path: str, authorization: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: {authorization}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()


def pooled(results: Sequence[Result]) -> Result:
    first = results[0]
    total = Result(first.name, first.concurrency, latencies=[])
    for r in results:
        total.requests += r.requests
        total.errors += r.errors
        total.seconds += r.seconds
        assert total.latencies is not None
        total.latencies += r.latencies or []
    return total


# --- the run ------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, folder: str) -> Iterator[str]:
    """A migrated throwaway database: a SQLite file, or one on LINKVAULT_BENCH_POSTGRES_URL."""
    if kind == "sqlite":
        yield f"sqlite:///{Path(folder) / 'bench.db'}"
        return
    server = os.environ.get("LINKVAULT_BENCH_POSTGRES_URL", DEFAULT_PG)
    name = f"linkvault_bench_proxy_{os.getpid()}"
    url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(server, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def migrate() -> None:
        from linkvault.stores import open_store

        store = await open_store(url, migrate=True)
        await store.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(migrate())
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run(args: argparse.Namespace) -> list[tuple[Result, Result]]:
    key, entry = generate_api_key("bench", {Scope.WRITE, Scope.READ, Scope.PROXY})
    with (
        tempfile.TemporaryDirectory() as tmp,
        database(args.database, tmp) as database_url,
        sandbox_in_subprocess() as sandbox,
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LINKVAULT_")},
            "LINKVAULT_DATABASE_URL": database_url,
            "LINKVAULT_KEYS": generate_key("bench"),
            "LINKVAULT_API_KEYS": entry.spec,
            "LINKVAULT_LOG_LEVEL": "WARNING",
            "LINKVAULT_PROVIDER_SANDBOX_BASE_URL": sandbox.url,
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": SANDBOX_CLIENT_ID,
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
        }
        with (
            linkvault_server(env, tmp) as url,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as api,
        ):
            subjects = [f"bench-{n}" for n in range(args.connections)]
            connections = [connect(api, sandbox.url, s) for s in subjects]
            tokens = [_access_token(sandbox, s) for s in subjects]
            direct = [request(f"/api/{args.path}", f"Bearer {t}") for t in tokens]
            proxied = [
                request(f"/v1/connections/{c}/proxy/{args.path}", f"Bearer {key}")
                for c in connections
            ]
            check = api.get(f"/v1/connections/{connections[0]}/proxy/{args.path}")
            check.raise_for_status()
            if args.provider_latency:
                # A provider that takes its time, as real ones do: the sandbox waits first.
                sandbox.inject_fault(
                    "slow", grant_type="api", count=None, delay=args.provider_latency / 1000
                )
            pairs = []
            for concurrency in args.concurrency:
                straight, through = [], []
                for _ in range(args.rounds):
                    straight.append(
                        asyncio.run(load("direct", sandbox.url, direct, concurrency, args.seconds))
                    )
                    through.append(
                        asyncio.run(load("proxy", url, proxied, concurrency, args.seconds))
                    )
                pairs.append((pooled(straight), pooled(through)))
            refreshes = sandbox.stats()["issued"].get("refresh_token", 0)
            if refreshes:
                print(f"note: {refreshes} refreshes happened during the run")
            return pairs


def _access_token(sandbox: SandboxAdmin, subject: str) -> str:
    [grant] = sandbox.grants(subject)
    token: str = grant["access_token"]
    return token


def report(pairs: list[tuple[Result, Result]], args: argparse.Namespace) -> bool:
    print(
        f"GET /api/{args.path}: {args.connections} connections, {args.rounds} rounds x "
        f"{args.seconds:.0f} s per side after 0.5 s warm-up, alternating; "
        f"{'SQLite' if args.database == 'sqlite' else 'PostgreSQL'}, uvicorn, loopback"
    )
    if args.provider_latency:
        print(f"the sandbox waits {args.provider_latency:g} ms before each answer")
    print(
        f"{'conc.':>5} {'side':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'thr. ratio':>12}{'p50 ratio':>11}{'p99 ratio':>11}"
    )
    within = True
    for straight, through in pairs:
        for r in (straight, through):
            print(
                f"{r.concurrency:>5} {r.name:<8}{r.throughput:>9.0f}{r.percentile(0.5):>9.2f}"
                f"{r.percentile(0.99):>9.2f}{r.errors:>8}"
                f"{r.throughput / straight.throughput:>12.2f}"
                f"{r.percentile(0.5) / straight.percentile(0.5):>11.2f}"
                f"{r.percentile(0.99) / straight.percentile(0.99):>11.2f}"
            )
        ratio = through.percentile(0.5) / straight.percentile(0.5)
        within = within and ratio <= TARGET_P50_RATIO
        added = through.percentile(0.5) - straight.percentile(0.5)
        print(f"      proxy adds {added:.2f} ms at p50 (x{ratio:.2f}; target x{TARGET_P50_RATIO})")
    return within


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 16],
        help="comma-separated levels, e.g. 1,16",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--path", default="accounts", help="under the provider's api_base_url")
    parser.add_argument(
        "--provider-latency",
        type=float,
        default=0.0,
        help="ms the sandbox waits before answering each API call (default 0: bare loopback)",
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_child())
        return
    pairs = run(args)
    within = report(pairs, args)
    if any(r.errors for pair in pairs for r in pair):
        sys.exit("some requests failed")
    if not within:
        print(f"the proxy is above the x{TARGET_P50_RATIO} p50 target at some concurrency")


if __name__ == "__main__":
    main()
