"""The cost of a transaction pooler: the PostgreSQL store direct, and through PgBouncer.

Both stores work on one database (created, migrated and dropped here) in alternating rounds:
direct at LINKVAULT_BENCH_POSTGRES_URL, pooled through LINKVAULT_BENCH_PGBOUNCER_URL with
`?pooler=transaction` (no statements kept across transactions: each one is parsed again).
Prints ops/s and the pooled/direct time ratio per operation.

    .venv/bin/python bench/bench_pooler.py [--rows 2000] [--ops 2000] [--rounds 5]
                                           [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import asyncpg

from linkvault.domain import (
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
    utc_now,
)
from linkvault.stores.common import ConnectionFilter
from linkvault.stores.postgres import PostgresConnectionRepository

DIRECT = "postgresql://postgres@127.0.0.1:5432/postgres"
BOUNCER = "postgresql://postgres@127.0.0.1:6439/postgres"

Op = Callable[[PostgresConnectionRepository, random.Random], Awaitable[object]]


def at(url: str, database: str, query: str = "") -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}", query=query))


async def timed(store: PostgresConnectionRepository, op: Op, ops: int, tasks: int) -> float:
    """Seconds per operation with `tasks` concurrent callers doing `ops` in all."""

    async def run(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(ops // tasks):
            await op(store, rng)

    started = time.perf_counter()
    await asyncio.gather(*(run(n) for n in range(tasks)))
    return (time.perf_counter() - started) / (ops // tasks * tasks)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    direct_base = os.environ.get("LINKVAULT_BENCH_POSTGRES_URL", DIRECT)
    bouncer_base = os.environ.get("LINKVAULT_BENCH_PGBOUNCER_URL", BOUNCER)
    name = f"linkvault_bench_pooler_{os.getpid()}"
    admin = await asyncpg.connect(direct_base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        direct = await PostgresConnectionRepository.connect(at(direct_base, name), max_size=8)
        pooled = await PostgresConnectionRepository.connect(
            at(bouncer_base, name, "pooler=transaction"), max_size=8
        )
        async with direct, pooled:
            await direct.migrate()
            now = utc_now()
            conns: list[ProviderConnection] = []
            for _ in range(args.rows):
                conn = ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug="b")
                conn.mark_connected(
                    ProviderCredentials(b"x" * 300, CredentialType.OAUTH2, now + timedelta(hours=1))
                )
                conns.append(conn)
            async with direct.transaction() as tx:
                for conn in conns:
                    await tx.save(conn)
            ids: list[UUID] = [c.id for c in conns]
            users = [c.user_id for c in conns]

            async def find(store: PostgresConnectionRepository, rng: random.Random) -> object:
                return await store.find_by_id(rng.choice(ids))

            async def listing(store: PostgresConnectionRepository, rng: random.Random) -> object:
                return await store.list_connections(ConnectionFilter(user_id=rng.choice(users)))

            async def save(store: PostgresConnectionRepository, rng: random.Random) -> object:
                conn = await store.find_by_id(rng.choice(ids))
                assert conn is not None
                conn.rename(f"n{rng.randrange(10**9)}")
                try:
                    await store.save(conn)
                except Exception:  # a stale copy under concurrency: someone else saved it
                    return None
                return conn

            async def unit(store: PostgresConnectionRepository, rng: random.Random) -> object:
                async with store.transaction() as tx:
                    return await tx.find_by_id(rng.choice(ids))

            operations: dict[str, Op] = {
                "find_by_id": find,
                "list by user": listing,
                "find + save": save,
                "unit of work (1 read)": unit,
            }
            print(
                f"PostgreSQL store direct vs through PgBouncer (transaction mode), "
                f"{args.rows} rows, median of {args.rounds} alternating rounds"
            )
            print(f"{'operation':<24}{'tasks':>6}{'direct/s':>12}{'pooled/s':>12}{'ratio':>8}")
            for tasks in [int(c) for c in args.concurrency.split(",")]:
                for label, op in operations.items():
                    await timed(direct, op, 200, tasks)
                    await timed(pooled, op, 200, tasks)
                    a: list[float] = []
                    b: list[float] = []
                    for _ in range(args.rounds):
                        a.append(await timed(direct, op, args.ops, tasks))
                        b.append(await timed(pooled, op, args.ops, tasks))
                    d, p = statistics.median(a), statistics.median(b)
                    print(f"{label:<24}{tasks:>6}{1 / d:>12,.0f}{1 / p:>12,.0f}{p / d:>7.2f}x")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
