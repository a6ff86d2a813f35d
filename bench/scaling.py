"""The figures behind docs/scaling.md: storage per connection and PostgreSQL load per refresh.

1. Storage: `--rows` connections (default 1,000,000, the bench's realistic mix: 600-byte
   sealed credentials, about four connections a user) and as many events are loaded by COPY
   into a throwaway database migrated by linkvault; after VACUUM ANALYZE it prints the heap,
   TOAST and every index of both tables, in bytes per row.
2. Load per refresh: `--refreshes` due connections holding live grants at the sandbox (its
   own process, rotation on) are refreshed by one `linkvault worker --until-idle`. It prints
   the worker's CPU time per refresh, and per refresh the database's transactions, rows
   written and WAL bytes (pg_stat_database for this database; pg_stat_wal is the cluster's,
   so run it on a quiet server).

    .venv/bin/python bench/scaling.py [--rows 1000000] [--refreshes 5000] [--skip-storage]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from common import COLUMNS, generate_rows

from linkvault.crypto import generate_key
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import sandbox_in_subprocess
from linkvault.testing.fleet import Fleet, seed_due, worker_env

SERVER = os.environ.get(
    "LINKVAULT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# tx_id and position take their defaults, as when the store writes an event.
EVENT_COLUMNS = (
    "id", "connection_id", "user_id", "provider_slug", "seq", "type", "from_status",
    "to_status", "reason", "data", "occurred_at",
)  # fmt: skip


def at(name: str) -> str:
    return SERVER.rsplit("/", 1)[0] + "/" + name


async def fresh_database() -> tuple[str, str]:
    name = f"linkvault_scaling_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(SERVER)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    repo = await PostgresConnectionRepository.connect(at(name), max_size=2)
    async with repo:
        await repo.migrate()
    return name, at(name)


async def drop(name: str) -> None:
    admin = await asyncpg.connect(SERVER)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def events_for(rows: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """One connection.activated event a connection, as the store writes them."""
    for row in rows:
        yield (
            uuid.uuid4(), row[0], row[1], row[3], 1, "connection.activated", "pending",
            "active", None, json.dumps({"credential_type": row[7] or "oauth2"}), row[12],
        )  # fmt: skip


async def storage(rows: int) -> list[str]:
    name, url = await fresh_database()
    try:
        conn = await asyncpg.connect(url)
        try:
            started = time.perf_counter()
            batch: list[tuple[Any, ...]] = []

            async def load() -> None:
                await conn.copy_records_to_table(
                    "provider_connections", records=batch, columns=COLUMNS
                )
                await conn.copy_records_to_table(
                    "connection_events", records=list(events_for(batch)), columns=EVENT_COLUMNS
                )
                batch.clear()

            for row in generate_rows(rows, datetime.now(UTC), seed=7):
                batch.append(row)
                if len(batch) == 50_000:
                    await load()
            if batch:
                await load()
            await conn.execute("VACUUM ANALYZE provider_connections")
            await conn.execute("VACUUM ANALYZE connection_events")
            loaded = time.perf_counter() - started
            lines = [
                f"storage at {rows:,} connections and {rows:,} events "
                f"(loaded by COPY in {loaded:.0f} s; PostgreSQL "
                f"{await conn.fetchval('SHOW server_version')})",
                "| relation | MB | bytes per row |",
                "| --- | ---: | ---: |",
            ]
            for table in ("provider_connections", "connection_events"):
                parts = await conn.fetch(
                    """
                    SELECT c.relname AS name, pg_relation_size(c.oid) AS size, 'heap' AS kind
                    FROM pg_class c WHERE c.oid = $1::regclass
                    UNION ALL
                    SELECT 'TOAST', pg_total_relation_size(t.reltoastrelid), 'toast'
                    FROM pg_class t WHERE t.oid = $1::regclass AND t.reltoastrelid <> 0
                    UNION ALL
                    SELECT i.relname, pg_relation_size(i.oid), 'index'
                    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                    WHERE x.indrelid = $1::regclass
                    """,
                    table,
                )
                total = 0
                for part in parts:
                    total += part["size"]
                    label = (
                        f"{table} {part['kind']}"
                        if part["kind"] != "index"
                        else f"  index {part['name']}"
                    )
                    lines.append(
                        f"| {label} | {part['size'] / 1e6:,.1f} | {part['size'] / rows:,.0f} |"
                    )
                lines.append(f"| **{table} total** | {total / 1e6:,.1f} | {total / rows:,.0f} |")
            return lines
        finally:
            await conn.close()
    finally:
        await drop(name)


async def counters(url: str) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        db = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted,"
            " tup_returned, tup_fetched FROM pg_stat_database WHERE datname = current_database()"
        )
        wal = await conn.fetchrow("SELECT wal_bytes, wal_records FROM pg_stat_wal")
        assert db is not None
        assert wal is not None
        return {
            **dict(db),
            "wal_bytes": float(wal["wal_bytes"]),
            "wal_records": float(wal["wal_records"]),
        }
    finally:
        await conn.close()


async def per_refresh(count: int, work: Path, processes: int = 1) -> list[str]:
    name, url = await fresh_database()
    keys = generate_key("scaling")
    try:
        with sandbox_in_subprocess() as admin:
            admin.update_settings(rotate_refresh_tokens=True, revoke_family_on_reuse=True)
            seeded = await seed_due(url, admin, keys, count)
            await asyncio.sleep(1.0)  # let the seeding's statistics reach the counters
            before = await counters(url)
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            with Fleet(worker_env(url, keys, admin.url, log_level="WARNING"), work) as fleet:
                workers = [
                    fleet.start(f"worker-{n}", "--until-idle", "--idle-poll", "0.2")
                    for n in range(processes)
                ]
                codes = await asyncio.to_thread(fleet.wait_all, workers, 600)
            wall = time.perf_counter() - started
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            await asyncio.sleep(1.0)
            after = await counters(url)
            issued = admin.stats()["issued"].get("refresh_token", 0)
        assert codes == [0] * processes, f"the workers exited {codes}"
        assert issued == len(seeded.ids), f"{issued} refreshes for {len(seeded.ids)} connections"
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
            cpu_after.ru_stime - cpu_before.ru_stime
        )
        delta = {k: after[k] - before[k] for k in after}
        return [
            f"load per refresh: {count:,} refreshes by {processes} worker process(es) "
            f"in {wall:.1f} s "
            f"({count / wall:,.0f}/s wall, the sandbox and PostgreSQL on the same 2 cores)",
            "| per refresh | value |",
            "| --- | ---: |",
            f"| worker CPU (user + system) | {cpu / count * 1000:.2f} ms |",
            f"| refreshes per worker CPU-second | {count / cpu:,.0f} |",
            f"| transactions committed | {delta['xact_commit'] / count:.2f} |",
            f"| rows inserted | {delta['tup_inserted'] / count:.2f} |",
            f"| rows updated | {delta['tup_updated'] / count:.2f} |",
            f"| rows deleted | {delta['tup_deleted'] / count:.2f} |",
            f"| WAL records (cluster) | {delta['wal_records'] / count:.1f} |",
            f"| WAL bytes (cluster) | {delta['wal_bytes'] / count:,.0f} |",
        ]
    finally:
        await drop(name)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--refreshes", type=int, default=5000)
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-refresh", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    args = parser.parse_args()
    lines: list[str] = []
    if not args.skip_storage:
        lines += await storage(args.rows) + [""]
    if not args.skip_refresh:
        with tempfile.TemporaryDirectory() as work:
            lines += await per_refresh(args.refreshes, Path(work), args.workers)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
