"""Benchmark an on-demand access token on a current token against a bare `find_by_id`.

`AccessTokenService.access_token` on a token that needs no refresh is a read and a decrypt:
this prints both, on SQLite and on PostgreSQL, in alternating rounds of the same run, and
the ratio (target: at most 1.5x).

    .venv/bin/python bench/bench_access_token.py [--connections 500] [--ops 3000]
                                                 [--rounds 5] [--concurrency 1,8]
                                                 [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg

from linkvault.credentials import OAuth2Tokens
from linkvault.crypto import AesGcmCipher, generate_key, parse_keys
from linkvault.domain import utc_now
from linkvault.oauth import HttpxTokenClient
from linkvault.providers import load_registry
from linkvault.services.access_tokens import AccessTokenService
from linkvault.services.connect import connection_with_credentials
from linkvault.services.refresh import RefreshWorker
from linkvault.stores import ConnectionStore, open_store

TARGET = 1.5
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def seed(store: ConnectionStore, cipher: AesGcmCipher, count: int) -> list[UUID]:
    provider = load_registry(None, env={}).get("sandbox")
    ids = []
    async with store.transaction() as tx:
        for n in range(count):
            tokens = OAuth2Tokens(
                access_token=f"at-{n}-{uuid4().hex}",
                refresh_token=f"rt-{n}-{uuid4().hex}",
                expires_at=utc_now() + timedelta(hours=2),
            )
            conn = connection_with_credentials(
                provider, user_id=uuid4(), credentials=tokens, cipher=cipher
            )
            await tx.save(conn)
            ids.append(conn.id)
    return ids


async def timed(
    op: Callable[[UUID], Awaitable[object]], ids: list[UUID], ops: int, tasks: int
) -> float:
    """Seconds per operation with `tasks` concurrent callers doing `ops` in all."""
    per_task = ops // tasks
    rng = random.Random(7)
    picks = [[rng.choice(ids) for _ in range(per_task)] for _ in range(tasks)]

    async def run(mine: list[UUID]) -> None:
        for cid in mine:
            await op(cid)

    started = time.perf_counter()
    await asyncio.gather(*(run(p) for p in picks))
    return (time.perf_counter() - started) / (per_task * tasks)


async def bench_store(name: str, url: str, args: argparse.Namespace) -> list[str]:
    keys = parse_keys(generate_key("bench"))
    cipher = AesGcmCipher(keys)
    store = await open_store(url, migrate=True)
    lines = []
    async with store:
        ids = await seed(store, cipher, args.connections)
        registry = load_registry(None, env={})
        tokens = HttpxTokenClient(timeout=5, connect_timeout=2)
        worker = RefreshWorker(store, registry, tokens, cipher)
        service = AccessTokenService(store, registry, cipher, worker)

        async def bare(cid: UUID) -> object:
            return await store.find_by_id(cid)

        async def token(cid: UUID) -> object:
            return await service.access_token(cid)

        for tasks in args.concurrency:
            await timed(bare, ids, 500, tasks)  # warm caches and pools
            await timed(token, ids, 500, tasks)
            base, ours = [], []
            for _ in range(args.rounds):
                base.append(await timed(bare, ids, args.ops, tasks))
                ours.append(await timed(token, ids, args.ops, tasks))
            b, o = statistics.median(base), statistics.median(ours)
            ratio = o / b
            verdict = "ok" if ratio <= TARGET else f"ABOVE TARGET {TARGET}x"
            lines.append(
                f"{name:<10} tasks={tasks:<3} find_by_id {1 / b:>9,.0f}/s {b * 1e6:>7.1f} us   "
                f"access_token {1 / o:>9,.0f}/s {o * 1e6:>7.1f} us   ratio {ratio:.2f}x  {verdict}"
            )
        await tokens.aclose()
    return lines


async def postgres_url(base: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A fresh database next to `base`, and how to drop it."""
    name = f"lv_bench_token_{uuid4().hex[:8]}"
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()

    async def drop() -> None:
        conn = await asyncpg.connect(base)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    return base.rsplit("/", 1)[0] + "/" + name, drop


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("LINKVAULT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
    )
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    lines: list[str] = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as folder:
            lines += await bench_store("sqlite", f"sqlite:///{Path(folder) / 'bench.db'}", args)
    if args.only in (None, "postgres"):
        url, drop = await postgres_url(args.postgres_url)
        try:
            lines += await bench_store("postgres", url, args)
        finally:
            await drop()
    print(f"access_token on a current token vs find_by_id (median of {args.rounds} rounds)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
