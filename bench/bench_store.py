"""Benchmark linkvault's PostgreSQL and SQLite stores against their raw drivers.

Every port method runs through linkvault's store and through the raw driver sending the
very same SQL text (linkvault.stores.queries; for a change with events, the same statement or
transaction that also writes them) with the same parameters, same keys, same pool sizes, in
alternating runs. See bench/README.md.

    .venv/bin/python bench/bench_store.py [--rows 100000] [--expiring-rows 1000000]
                                          [--only postgres|sqlite] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
from asyncpg.pgproto import pgproto
from common import (
    COLUMNS,
    Cell,
    Dataset,
    Method,
    Prepared,
    Row,
    RunCounter,
    fmt_rate,
    fmt_us,
    generate_rows,
    micros,
    mode_name,
    render_table,
    row_to_entity,
    run_cell,
    sqlite_row,
)

from linkvault.domain import ProviderConnection
from linkvault.events import EventType
from linkvault.stores import queries
from linkvault.stores.postgres import PostgresConnectionRepository, logged_query
from linkvault.stores.sqlite import SqliteConnectionRepository

T = TypeVar("T")

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_RATIO = 1.25
EXPIRING_MINUTES = 5
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TABLE = "provider_connections"

PG_Q = queries.load("postgres")
SQLITE_Q = queries.load("sqlite")

LV, RAW = "linkvault", "raw"
RAW_THREAD, RAW_DIRECT = "raw-thread", "raw-direct"

# The cost of the event log on a save: the same update without an event and with one, as
# one cell whose rounds alternate all of them (so the with/without ratio is taken within a
# round, as linkvault/raw is); shown as two rows. EVENT suffixes the names of the
# implementations whose save writes one event.
SAVE_UPDATE, SAVE_UPDATE_EVENT = "save (update)", "save (update) + event"
EVENT = " + event"
EVENT_TARGET_RATIO = 1.3


def with_pending_event(entities: Sequence[ProviderConnection]) -> None:
    """Give each entity the one pending event its next save writes (outside the timed op:
    deciding an event is the domain's work; the store's is writing it)."""
    for entity in entities:
        entity.record_event(EventType.NEEDS_ATTENTION, reason="bench")


# --- the raw side's events -------------------------------------------------------
#
# linkvault's store builds every event row inside the call (a UUIDv7, the JSON of its data,
# the row tuple), so the raw baselines build theirs inside the timed op too, as cheaply as
# plain code can: the id is UUIDv7's layout without its version bits, the time in ms then
# 10 random bytes (so both sides' ids interleave at the right edge of the log's unique id
# index, as linkvault's alone would; about 0.45 us against 1.3 us for uuid7(); for asyncpg
# wrapped in its own UUID type, which it encodes without conversion), the data is the
# constant "{}" (the benchmark's events carry none, where the store runs json.dumps), and
# whatever does not change from call to call (the event type, NULL columns, the store's
# frozen clock) is built once per run. Whatever linkvault spends beyond that is its
# overhead, and counts against it.


def event_id() -> bytes:
    """A new event id: 16 bytes, the time in milliseconds first (UUIDv7's order)."""
    return (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)


# The one-element event arrays of PostgreSQL's logged statements that never change.
CREATED = [EventType.CREATED.value]
DELETED = [EventType.DELETED.value]
NEEDS_ATTENTION = [EventType.NEEDS_ATTENTION.value]
NONE: list[None] = [None]
EMPTY_DATA = ["{}"]
BENCH_REASON = ["bench"]


def log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class Options:
    rows: int
    expiring_rows: int
    only: str | None
    quick: bool
    rounds: int
    seconds: float
    tasks: int
    seed: int
    postgres_url: str


class StaleInBenchmarkError(RuntimeError):
    """A raw write matched no row: the benchmark's bookkeeping is wrong."""


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def keys_for(seed: int, name: str, population: Sequence[T], count: int) -> list[T]:
    """The key sequence of one method: the same for every implementation and every run."""
    rng = random.Random(f"{seed}:{name}")
    return [rng.choice(population) for _ in range(count)]


def distinct_keys_for(seed: int, name: str, population: Sequence[T], count: int) -> list[T]:
    rng = random.Random(f"{seed}:{name}")
    return rng.sample(population, min(count, len(population)))


def fresh_rows(count: int, now: datetime, run_no: int) -> list[Row]:
    """New connections for one write run (seeded by the run number: ids never repeat)."""
    return list(generate_rows(count, now, seed=1_000_000 + run_no))


# --- PostgreSQL ----------------------------------------------------------------


class PostgresBench:
    """The 100k-row PostgreSQL data set, one linkvault store and one raw pool of the same size."""

    def __init__(
        self,
        data: Dataset,
        store: PostgresConnectionRepository,
        pool: asyncpg.Pool,
        seed: int,
    ) -> None:
        self.data = data
        self.store = store
        self.pool = pool
        self.seed = seed

    async def copy(self, rows: Sequence[Row]) -> None:
        async with self.pool.acquire() as conn:
            await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS)

    async def remove(self, ids: list[UUID]) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(f"DELETE FROM {TABLE} WHERE id = ANY($1::uuid[])", ids)

    def methods(self) -> list[Method]:
        d, store, pool, seed = self.data, self.store, self.pool, self.seed

        def reader(
            name: str,
            sql: str,
            keys: Sequence[tuple[Any, ...]],
            call: Callable[[tuple[Any, ...]], Any],
            *,
            one: bool = False,
        ) -> Method:
            async def lv(n: int, run_no: int) -> Prepared:
                async def op(i: int) -> object:
                    return await call(keys[i])

                return Prepared(op)

            async def raw(n: int, run_no: int) -> Prepared:
                if one:

                    async def op(i: int) -> object:
                        async with pool.acquire() as conn:
                            return await conn.fetchrow(sql, *keys[i])

                else:

                    async def op(i: int) -> object:
                        async with pool.acquire() as conn:
                            return await conn.fetch(sql, *keys[i])

                return Prepared(op)

            return Method(name, 1000, len(keys), {RAW: raw, LV: lv})

        max_reads = 50_000
        ids = [(k,) for k in keys_for(seed, "find_by_id", d.ids, max_reads)]
        users = [(k,) for k in keys_for(seed, "find_by_user_id", d.user_ids, max_reads)]
        pairs = keys_for(seed, "find_by_user_and_provider", d.pairs, max_reads)
        active = [(k,) for k in keys_for(seed, "find_active_by_user", d.user_ids, max_reads)]
        horizon = d.now + timedelta(minutes=EXPIRING_MINUTES)

        methods = [
            reader("find_by_id", PG_Q["find_by_id"], ids, lambda k: store.find_by_id(*k), one=True),
            reader(
                "find_by_user_id",
                PG_Q["find_by_user_id"],
                users,
                lambda k: store.find_by_user_id(*k),
            ),
            reader(
                "find_by_user_and_provider",
                PG_Q["find_by_user_and_provider"],
                pairs,
                lambda k: store.find_by_user_and_provider(*k),
            ),
            reader(
                "find_active_by_user",
                PG_Q["find_active_by_user"],
                active,
                lambda k: store.find_active_by_user(*k),
            ),
        ]

        # save, update of a stored row: distinct rows per run, so 8 tasks never race one row.
        by_id = {r[0]: r for r in d.rows}
        targets = distinct_keys_for(seed, "save_update", d.ids, 20_000)
        entities = [row_to_entity(by_id[k]) for k in targets]
        params = [by_id[k][:14] for k in targets]
        # What store.save sends: the plain update numbering no event ($16 = 0); with events,
        # the update and the insert of its events in one statement (logged_query).
        update_sql = PG_Q["update"]
        update_logged_sql = logged_query("update", 16)

        async def lv_update(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                await store.save(entities[i])
                return None

            return Prepared(op)

        async def raw_update(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                entity = entities[i]
                async with pool.acquire() as conn:
                    version = await conn.fetchval(update_sql, *params[i], entity.version, 0)
                if version is None:
                    raise StaleInBenchmarkError(entity.id)
                entity.version = version
                return None

            return Prepared(op)

        async def lv_update_event(n: int, run_no: int) -> Prepared:
            with_pending_event(entities[:n])

            async def op(i: int) -> object:
                await store.save(entities[i])
                return None

            return Prepared(op)

        async def raw_update_event(n: int, run_no: int) -> Prepared:
            # The event's own values, decided before the save as record_event decides them.
            to_status = [[e.status.value] for e in entities[:n]]
            at = [datetime.now(UTC)]

            async def op(i: int) -> object:
                entity = entities[i]
                event = (
                    [pgproto.UUID(event_id())], NEEDS_ATTENTION, NONE, to_status[i], BENCH_REASON,
                    EMPTY_DATA, at,
                )  # fmt: skip
                async with pool.acquire() as conn:
                    version = await conn.fetchval(
                        update_logged_sql, *params[i], entity.version, 1, *event
                    )
                if version is None:
                    raise StaleInBenchmarkError(entity.id)
                entity.version = version
                return None

            return Prepared(op)

        impls = {
            RAW: raw_update,
            LV: lv_update,
            LV + EVENT: lv_update_event,
            RAW + EVENT: raw_update_event,
        }
        methods.append(Method(SAVE_UPDATE, 500, len(targets), impls))

        # A new connection always gets its connection.created event, in the insert's statement.
        insert_sql = logged_query("insert", 15)

        async def lv_insert(n: int, run_no: int) -> Prepared:
            rows = fresh_rows(n, d.now, run_no)
            new = [row_to_entity(r, version=0) for r in rows]

            async def op(i: int) -> object:
                await store.save(new[i])
                return None

            return Prepared(op, lambda: self.remove([r[0] for r in rows]))

        async def raw_insert(n: int, run_no: int) -> Prepared:
            rows = fresh_rows(n, d.now, run_no)
            values = [r[:14] for r in rows]
            # connection.created: to the row's status, at its creation time.
            to_status = [[r[5]] for r in rows]
            created_at = [[r[12]] for r in rows]

            async def op(i: int) -> object:
                event = (
                    [pgproto.UUID(event_id())], CREATED, NONE, to_status[i], NONE, EMPTY_DATA,
                    created_at[i],
                )  # fmt: skip
                async with pool.acquire() as conn:
                    version = await conn.fetchval(insert_sql, *values[i], 1, *event)
                if version is None:
                    raise StaleInBenchmarkError(values[i][0])
                return version

            return Prepared(op, lambda: self.remove([r[0] for r in rows]))

        methods.append(Method("save (insert)", 500, 20_000, {RAW: raw_insert, LV: lv_insert}))

        # A delete always writes connection.deleted, at the store's clock, in its statement.
        delete_sql = logged_query("delete", 2)
        deleted_at = [d.now]

        async def lv_delete(n: int, run_no: int) -> Prepared:
            rows = fresh_rows(n, d.now, run_no)
            await self.copy(rows)
            doomed = [r[0] for r in rows]

            async def op(i: int) -> object:
                await store.delete(doomed[i])
                return None

            return Prepared(op)

        async def raw_delete(n: int, run_no: int) -> Prepared:
            rows = fresh_rows(n, d.now, run_no)
            await self.copy(rows)
            doomed = [r[0] for r in rows]

            async def op(i: int) -> object:
                event = (
                    [pgproto.UUID(event_id())], DELETED, NONE, NONE, NONE, EMPTY_DATA, deleted_at,
                )  # fmt: skip
                async with pool.acquire() as conn:
                    deleted = await conn.fetchval(delete_sql, doomed[i], 1, *event)
                if deleted is None:
                    raise StaleInBenchmarkError(doomed[i])
                return deleted

            return Prepared(op)

        methods.append(Method("delete", 500, 20_000, {RAW: raw_delete, LV: lv_delete}))

        expiring_sql = PG_Q["find_expiring_soon"]

        async def lv_expiring(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                return await store.find_expiring_soon(EXPIRING_MINUTES)

            return Prepared(op)

        async def raw_expiring(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                async with pool.acquire() as conn:
                    return await conn.fetch(expiring_sql, horizon)

            return Prepared(op)

        methods.append(
            Method(
                f"find_expiring_soon({EXPIRING_MINUTES})",
                50,
                5_000,
                {RAW: raw_expiring, LV: lv_expiring},
            )
        )
        return methods

    async def plans(self) -> dict[str, str]:
        """The plan of every read query for one sample key (COSTS OFF, custom plan)."""
        d = self.data
        args: dict[str, tuple[Any, ...]] = {
            "find_by_id": (d.ids[0],),
            "find_by_user_id": (d.user_ids[0],),
            "find_by_user_and_provider": d.pairs[0],
            "find_active_by_user": (d.user_ids[0],),
            "find_expiring_soon": (d.now + timedelta(minutes=EXPIRING_MINUTES),),
        }
        out = {}
        async with self.pool.acquire() as conn:
            for name, values in args.items():
                rows = await conn.fetch(f"EXPLAIN (COSTS OFF) {PG_Q[name]}", *values)
                out[name] = " / ".join(r[0].strip() for r in rows)
        return out


async def admin_connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=5)


async def create_database(url: str, name: str) -> str:
    conn = await admin_connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, name: str) -> None:
    conn = await admin_connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


_MIRRORED = (
    "setup",
    "init",
    "reset",
    "max_queries",
    "max_inactive_connection_lifetime",
    "connection_class",
    "record_class",
)


def mirrored_pool_options(pool: asyncpg.Pool) -> dict[str, Any]:
    """Everything the store's pool was created with: the raw pool differs only in its user.

    asyncpg keeps these as private attributes; mirroring them keeps the comparison fair when
    the store changes its pool (a reset that skips asyncpg's reset query, server settings,
    a statement cache size, a setup hook), instead of comparing two differently tuned pools.
    """
    options: dict[str, Any] = dict(getattr(pool, "_connect_kwargs", {}))
    for name in _MIRRORED:
        if hasattr(pool, f"_{name}"):
            options[name] = getattr(pool, f"_{name}")
    options["min_size"] = pool.get_min_size()
    options["max_size"] = pool.get_max_size()
    return options


def describe_pool_options(options: dict[str, Any]) -> str:
    shown = []
    for key, value in sorted(options.items()):
        if value is None or key in ("connection_class", "record_class"):
            continue
        shown.append(f"{key}={getattr(value, '__qualname__', value)}")
    return ", ".join(shown)


async def open_pg(
    dsn: str, now: datetime
) -> tuple[PostgresConnectionRepository, asyncpg.Pool, dict[str, Any]]:
    """linkvault's store with its default pool, and a raw asyncpg pool configured the same."""
    store = await PostgresConnectionRepository.connect(dsn, clock=lambda: now)
    assert store.pool is not None
    options = mirrored_pool_options(store.pool)
    pool = await asyncpg.create_pool(dsn, **options)
    return store, pool, options


async def bench_postgres(
    opts: Options, data: Dataset, next_run: RunCounter
) -> tuple[list[Cell], dict[str, Any]]:
    name = f"linkvault_bench_{os.getpid()}"
    dsn = await create_database(opts.postgres_url, name)
    log(f"PostgreSQL: database {name} created")
    try:
        store, pool, options = await open_pg(dsn, data.now)
        pool_text = describe_pool_options(options)
        log(f"PostgreSQL: both pools: {pool_text}")
        try:
            await store.migrate()
            started = time.perf_counter()
            bench = PostgresBench(data, store, pool, opts.seed)
            await bench.copy(data.rows)
            async with pool.acquire() as conn:
                await conn.execute(f"VACUUM ANALYZE {TABLE}")
                server = await conn.fetchval("SHOW server_version")
            log(f"PostgreSQL: loaded {len(data.rows):,} rows by COPY in {_since(started)}")
            plans = await bench.plans()
            for query, plan in plans.items():
                log(f"  plan {query}: {plan}")
            cells, costs = await run_methods(bench.methods(), opts, next_run)
        finally:
            await pool.close()
            await store.close()
    finally:
        await drop_database(opts.postgres_url, name)
        log(f"PostgreSQL: database {name} dropped")
    meta = {"server_version": server, "plans": plans, "pools": pool_text, "event_cost": costs}
    return cells, meta


async def run_methods(
    methods: list[Method], opts: Options, next_run: RunCounter
) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The cells of the tables, and the cost of one event on a save per mode."""
    cells = []
    for tasks in (1, opts.tasks):
        for method in methods:
            cells.append(
                await run_cell(
                    method,
                    tasks,
                    rounds=opts.rounds,
                    seconds=opts.seconds,
                    next_run=next_run,
                    log=log,
                )
            )
    costs = [event_cost(c) for c in cells if any(k.endswith(EVENT) for k in c.runs)]
    rows = [row for c in cells for row in split_event_cell(c)]
    order = {m.name: i for i, m in enumerate(methods)}
    order[SAVE_UPDATE_EVENT] = order.get(SAVE_UPDATE, len(order))

    def place(c: Cell) -> tuple[int, bool, int]:
        return order[c.method], c.method == SAVE_UPDATE_EVENT, c.tasks

    return sorted(rows, key=place), sorted(costs, key=lambda c: int(c["tasks"]))


def split_event_cell(cell: Cell) -> list[Cell]:
    """A cell measured without and with an event: its row without, and its row with."""
    plain = {k: v for k, v in cell.runs.items() if not k.endswith(EVENT)}
    if len(plain) == len(cell.runs):
        return [cell]
    with_event = {k: cell.runs[k + EVENT] for k in plain}
    return [Cell(cell.method, cell.tasks, plain), Cell(SAVE_UPDATE_EVENT, cell.tasks, with_event)]


def event_cost(cell: Cell) -> dict[str, Any]:
    """Time per op of the save writing one event over the save writing none, per
    implementation (linkvault first): the median over rounds of the ratio within a round."""
    impls = [LV, *(k for k in cell.runs if k != LV and not k.endswith(EVENT))]
    return {"tasks": cell.tasks, "ratios": {k: cell.ratio(k + EVENT, k) for k in impls}}


def event_cost_report(costs: Sequence[dict[str, Any]]) -> str:
    lines = []
    for cost in costs:
        ratios = cost["ratios"]
        mine = ratios[LV]
        raw = ", ".join(f"{impl} {r:.2f}x" for impl, r in ratios.items() if impl != LV)
        lines.append(
            f"save with one event / save without, {mode_name(cost['tasks'])}: {mine:.2f}x "
            f"(target <= {EVENT_TARGET_RATIO}x; the same for {raw})"
            + (f" <-- above {EVENT_TARGET_RATIO}x" if mine > EVENT_TARGET_RATIO else "")
        )
    return "\n".join(lines)


def postgres_table(cells: list[Cell]) -> str:
    headers = [
        "method",
        "mode",
        "linkvault ops/s",
        "raw ops/s",
        "linkvault/raw",
        "lv p50",
        "lv p99",
        "raw p50",
        "raw p99",
        "",
    ]
    rows = []
    for c in cells:
        lv, raw, ratio = c.median(LV), c.median(RAW), c.ratio(LV, RAW)
        rows.append(
            [
                c.method,
                mode_name(c.tasks),
                fmt_rate(lv),
                fmt_rate(raw),
                f"{ratio:.2f}x",
                fmt_us(lv.p50_us),
                fmt_us(lv.p99_us),
                fmt_us(raw.p50_us),
                fmt_us(raw.p99_us),
                f"<-- above {TARGET_RATIO}x" if ratio > TARGET_RATIO else "",
            ]
        )
    return render_table(headers, rows)


# --- find_expiring_soon on a large table -------------------------------------------


async def expiring_plan(opts: Options) -> dict[str, Any]:
    """find_expiring_soon on `opts.expiring_rows` rows: plans (custom, after 10, generic), times."""
    count = opts.expiring_rows
    now = datetime.now(UTC)
    name = f"linkvault_bench_{os.getpid()}_expiring"
    dsn = await create_database(opts.postgres_url, name)
    out: dict[str, Any] = {"rows": count}
    try:
        store, pool, _ = await open_pg(dsn, now)
        conn = await asyncpg.connect(dsn)
        try:
            await store.migrate()
            started = time.perf_counter()
            await conn.copy_records_to_table(
                TABLE, records=generate_rows(count, now, opts.seed + 1), columns=COLUMNS
            )
            await conn.execute(f"VACUUM ANALYZE {TABLE}")
            out["load"] = _since(started)
            out["table"] = await _describe_table(conn, now)
            log(f"Expiring: loaded {out['table']} in {out['load']}")
            out.update(await _plans_and_timings(conn, now))
            out["store"] = {
                str(m): await _store_timings(store, pool, now, m, warmup, measured)
                for m, warmup, measured in ((EXPIRING_MINUTES, 10, 30), (30, 3, 15))
            }
        finally:
            await conn.close()
            await pool.close()
            await store.close()
    finally:
        await drop_database(opts.postgres_url, name)
        log(f"Expiring: database {name} dropped")
    return out


async def _describe_table(conn: asyncpg.Connection, now: datetime) -> str:
    due = [now + timedelta(minutes=m) for m in (EXPIRING_MINUTES, 30)]
    stats = await conn.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE status = 'active'),"
        " count(*) FILTER (WHERE status = 'active' AND credentials_expire_at <= $1),"
        " count(*) FILTER (WHERE status = 'active' AND credentials_expire_at <= $2),"
        f" pg_size_pretty(pg_total_relation_size('{TABLE}')),"
        " pg_size_pretty(pg_relation_size('provider_connections_expiring_idx'))"
        f" FROM {TABLE}",
        *due,
    )
    assert stats is not None
    return (
        f"{stats[0]:,} rows ({stats[1]:,} active; due within {EXPIRING_MINUTES} min: "
        f"{stats[2]:,}, within 30 min: {stats[3]:,}); table+indexes {stats[4]}, "
        f"partial index {stats[5]}"
    )


async def explain(conn: asyncpg.Connection, statement: str) -> str:
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}")
    return "\n".join(r[0] for r in rows)


async def time_statement(conn: asyncpg.Connection, statement: str, times: int) -> float:
    """Median wall time of `statement` in ms, rows fetched to the client, after one warm-up."""
    await conn.fetch(statement)
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        await conn.fetch(statement)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def prepared_counters(conn: asyncpg.Connection, name: str) -> str:
    row = await conn.fetchrow(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = $1", name
    )
    assert row is not None
    return f"generic_plans={row[0]} custom_plans={row[1]}"


async def study_prepared(
    conn: asyncpg.Connection, name: str, sql: str, declared: str, arguments: str, times: int
) -> dict[str, Any]:
    """PREPARE `sql`; EXPLAIN its 1st execution, its 12th (auto), a forced generic one; time."""
    await conn.execute("RESET plan_cache_mode")
    await conn.execute(f"PREPARE {name}({declared}) AS {sql}")
    execute = f"EXECUTE {name}({arguments})"
    out: dict[str, Any] = {"statement": sql}
    out["first"] = await explain(conn, execute)
    out["first_counters"] = await prepared_counters(conn, name)
    for _ in range(10):
        await conn.fetch(execute)
    out["after_10"] = await explain(conn, execute)
    out["after_10_counters"] = await prepared_counters(conn, name)
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    out["generic"] = await explain(conn, execute)
    out["generic_counters"] = await prepared_counters(conn, name)
    out["median_ms"] = {}
    for mode in ("force_custom_plan", "force_generic_plan"):
        await conn.execute(f"SET plan_cache_mode = {mode}")
        out["median_ms"][mode] = await time_statement(conn, execute, times)
    await conn.execute("RESET plan_cache_mode")
    return out


def proposed_statement(sql: str) -> str | None:
    """The statement with a lower bound on the expiry, or None when it has one already.

    With both bounds of a range unknown, PostgreSQL estimates a generic plan at 0.5% of the
    rows (DEFAULT_RANGE_INEQ_SEL) instead of a third (DEFAULT_INEQ_SEL), so the generic plan
    keeps the partial index; a custom plan reads the true bounds and is unaffected.
    """
    upper = "AND credentials_expire_at <= $1"
    if "'-infinity'" in sql or upper not in sql:
        return None
    return sql.replace(upper, f"AND credentials_expire_at > '-infinity'\n  {upper}", 1)


async def _plans_and_timings(conn: asyncpg.Connection, now: datetime) -> dict[str, Any]:
    sql = PG_Q["find_expiring_soon"]
    at = f"'{(now + timedelta(minutes=EXPIRING_MINUTES)).isoformat()}'::timestamptz"
    at_30 = f"'{(now + timedelta(minutes=30)).isoformat()}'::timestamptz"
    out: dict[str, Any] = {
        "current": await study_prepared(conn, "lv_expiring", sql, "timestamptz", at, 15),
        "current_30_first": await explain(conn, sql.replace("$1", at_30)),
    }
    proposed = proposed_statement(sql)
    if proposed is not None:
        out["proposed"] = await study_prepared(
            conn, "lv_expiring_proposed", proposed, "timestamptz", at, 15
        )
        out["proposed_30_generic_ms"] = await _generic_ms(conn, "lv_expiring_proposed", at_30, 5)
    out["current_30_generic_ms"] = await _generic_ms(conn, "lv_expiring", at_30, 3)
    # The trap the literal status test avoids: the status as a bound parameter.
    parametrized = sql.replace("status = 'active'", "status = $2", 1)
    assert parametrized != sql
    out["contrast"] = await study_prepared(
        conn, "lv_expiring_param", parametrized, "timestamptz, text", f"{at}, 'active'", 3
    )
    return out


async def _generic_ms(conn: asyncpg.Connection, name: str, arguments: str, times: int) -> float:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        return await time_statement(conn, f"EXECUTE {name}({arguments})", times)
    finally:
        await conn.execute("RESET plan_cache_mode")


async def _store_timings(
    store: PostgresConnectionRepository,
    pool: asyncpg.Pool,
    now: datetime,
    minutes: int,
    warmup: int,
    measured: int,
) -> dict[str, Any]:
    """store.find_expiring_soon(minutes) and the raw fetch of its statement, alternating."""
    sql, horizon = PG_Q["find_expiring_soon"], now + timedelta(minutes=minutes)
    lv_ms, raw_ms = [], []
    found = 0
    for i in range(warmup + measured):
        started = time.perf_counter()
        found = len(await store.find_expiring_soon(minutes))
        lv = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, horizon)
        raw = (time.perf_counter() - started) * 1000
        assert len(rows) == found
        if i >= warmup:
            lv_ms.append(lv)
            raw_ms.append(raw)
    return {
        "rows_returned": found,
        "warmup": warmup,
        "measured": measured,
        "store_median_ms": statistics.median(lv_ms),
        "store_max_ms": max(lv_ms),
        "raw_median_ms": statistics.median(raw_ms),
        "raw_max_ms": max(raw_ms),
    }


def _study_report(s: dict[str, Any], *, first: bool = True) -> list[str]:
    t = s["median_ms"]
    lines = []
    if first:
        lines += [f"-- 1st execution ({s['first_counters']}):", _indent(s["first"]), ""]
    lines += [
        f"-- after 10 more executions, plan_cache_mode=auto ({s['after_10_counters']}):",
        _indent(s["after_10"]),
        "",
        f"-- SET plan_cache_mode = force_generic_plan ({s['generic_counters']}):",
        _indent(s["generic"]),
        "",
        f"EXECUTE timing (median, rows fetched to the client): custom plan "
        f"{t['force_custom_plan']:.2f} ms, generic plan {t['force_generic_plan']:.2f} ms",
    ]
    return lines


def expiring_report(r: dict[str, Any]) -> str:
    cur = r["current"]
    lines = [
        f"find_expiring_soon on {r['table']}",
        "",
        f"=== linkvault's statement, prepared, minutes={EXPIRING_MINUTES} ===",
        _indent(cur["statement"]),
        "",
        *_study_report(cur),
        "",
        "=== linkvault's statement, minutes=30 (the port's default), custom plan ===",
        _indent(r["current_30_first"]),
        f"generic plan at minutes=30: {r['current_30_generic_ms']:.2f} ms",
        "",
        "=== store.find_expiring_soon vs raw asyncpg fetch of the same statement ===",
    ]
    for minutes, s in r["store"].items():
        lines.append(
            f"minutes={minutes}: {s['rows_returned']:,} rows; median of {s['measured']} "
            f"after {s['warmup']} warm-up calls: store {s['store_median_ms']:.2f} ms "
            f"(max {s['store_max_ms']:.2f}), raw {s['raw_median_ms']:.2f} ms "
            f"(max {s['raw_max_ms']:.2f}), ratio {s['store_median_ms'] / s['raw_median_ms']:.2f}x"
        )
    if "proposed" in r:
        lines += [
            "",
            "=== PROPOSED (not yet linkvault's): the same with a lower bound on the expiry ===",
            _indent(r["proposed"]["statement"]),
            "",
            *_study_report(r["proposed"], first=False),
            f"generic plan at minutes=30: {r['proposed_30_generic_ms']:.2f} ms",
        ]
    con = r["contrast"]
    lines += [
        "",
        "=== CONTRAST (never linkvault's): the status test as a bound parameter $2 ===",
        f"-- SET plan_cache_mode = force_generic_plan ({con['generic_counters']}):",
        _indent(con["generic"]),
        f"EXECUTE timing (median): custom plan {con['median_ms']['force_custom_plan']:.2f} ms, "
        f"generic plan {con['median_ms']['force_generic_plan']:.2f} ms",
    ]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


# --- SQLite --------------------------------------------------------------------


def open_sqlite(path: str, busy_timeout: float = 10.0) -> sqlite3.Connection:
    """A connection set up exactly as the store sets up its own."""
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=True)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return db


def fetchone(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    return db.execute(sql, args).fetchone()


def fetchall(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    return db.execute(sql, args).fetchall()


# An event as `logged` writes it: id, type, from status, to status, reason, data, time (us).
SqliteEvent = tuple[bytes, str, str | None, str | None, str | None, str, int | None]
# The change's arguments and its one event.
LoggedArgs = tuple[tuple[Any, ...], SqliteEvent]
SQLITE_INSERT_EVENT = SQLITE_Q["insert_event"]


def logged(db: sqlite3.Connection, change: str, payload: LoggedArgs) -> Any:
    """What the store's _logged does with one event: BEGIN IMMEDIATE, the change, the insert
    of its event numbered from the row the change returns (none when it touched no row),
    COMMIT. Returns the change's row, or None."""
    args, (eid, kind, from_status, to_status, reason, data, at) = payload
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute(change, args).fetchone()
        if row is not None:
            _, last_seq, connection_id, user_id, slug, was = row
            event = (eid, connection_id, user_id, slug, last_seq, kind, from_status or was,
                     to_status, reason, data, at)  # fmt: skip
            db.execute(SQLITE_INSERT_EVENT, event)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return row


class ThreadConnections:
    """Raw sqlite3 through the store's pattern: one thread per connection, an idle queue."""

    def __init__(self, path: str, size: int) -> None:
        self._path = path
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix="raw-sqlite") for _ in range(size)
        ]
        self._dbs: list[sqlite3.Connection] = []
        self._idle: asyncio.Queue[tuple[ThreadPoolExecutor, sqlite3.Connection]] = asyncio.Queue()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for executor in self._executors:
            db = await loop.run_in_executor(executor, open_sqlite, self._path)
            self._dbs.append(db)
            self._idle.put_nowait((executor, db))

    async def run(
        self, fn: Callable[[sqlite3.Connection, str, tuple[Any, ...]], T], sql: str, args: Any
    ) -> T:
        executor, db = await self._idle.get()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, db, sql, args)
        finally:
            self._idle.put_nowait((executor, db))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for executor, db in zip(self._executors, self._dbs, strict=True):
            await loop.run_in_executor(executor, db.close)
            executor.shutdown()


class SqliteBench:
    def __init__(
        self,
        data: Dataset,
        store: SqliteConnectionRepository,
        threads: ThreadConnections,
        direct: sqlite3.Connection,
        seed: int,
    ) -> None:
        self.data = data
        self.store = store
        self.threads = threads
        self.direct = direct
        self.seed = seed
        placeholders = ", ".join("?" for _ in COLUMNS)
        self._insert_many = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({placeholders})"

    def load(self, rows: Sequence[Row]) -> None:
        db = self.direct
        db.execute("BEGIN")
        db.executemany(self._insert_many, [sqlite_row(r) for r in rows])
        db.execute("COMMIT")

    def remove(self, ids: list[UUID]) -> None:
        db = self.direct
        db.execute("BEGIN")
        db.executemany(f"DELETE FROM {TABLE} WHERE id = ?", [(k.bytes,) for k in ids])
        db.execute("COMMIT")

    def methods(self) -> list[Method]:
        d, store, threads, direct, seed = (
            self.data,
            self.store,
            self.threads,
            self.direct,
            self.seed,
        )

        def reader(
            name: str,
            sql: str,
            keys: Sequence[tuple[Any, ...]],
            call: Callable[[tuple[Any, ...]], Any],
            *,
            one: bool = False,
        ) -> Method:
            raw_keys = [tuple(k.bytes for k in key) for key in keys]
            fn = fetchone if one else fetchall

            async def lv(n: int, run_no: int) -> Prepared:
                async def op(i: int) -> object:
                    return await call(keys[i])

                return Prepared(op)

            async def thread(n: int, run_no: int) -> Prepared:
                async def op(i: int) -> object:
                    return await threads.run(fn, sql, raw_keys[i])

                return Prepared(op)

            async def direct_(n: int, run_no: int) -> Prepared:
                async def op(i: int) -> object:
                    return fn(direct, sql, raw_keys[i])

                return Prepared(op)

            impls = {RAW_THREAD: thread, LV: lv, RAW_DIRECT: direct_}
            return Method(name, 1000, len(keys), impls)

        max_reads = 50_000
        ids = [(k,) for k in keys_for(seed, "find_by_id", d.ids, max_reads)]
        users = [(k,) for k in keys_for(seed, "find_by_user_id", d.user_ids, max_reads)]
        pairs = keys_for(seed, "find_by_user_and_provider", d.pairs, max_reads)
        active = [(k,) for k in keys_for(seed, "find_active_by_user", d.user_ids, max_reads)]

        methods = [
            reader(
                "find_by_id", SQLITE_Q["find_by_id"], ids, lambda k: store.find_by_id(*k), one=True
            ),
            reader(
                "find_by_user_id",
                SQLITE_Q["find_by_user_id"],
                users,
                lambda k: store.find_by_user_id(*k),
            ),
            reader(
                "find_by_user_and_provider",
                SQLITE_Q["find_by_user_and_provider"],
                pairs,
                lambda k: store.find_by_user_and_provider(*k),
            ),
            reader(
                "find_active_by_user",
                SQLITE_Q["find_active_by_user"],
                active,
                lambda k: store.find_active_by_user(*k),
            ),
        ]

        by_id = {r[0]: r for r in d.rows}
        targets = distinct_keys_for(seed, "save_update", d.ids, 20_000)
        entities = [row_to_entity(by_id[k]) for k in targets]
        params = [sqlite_row(by_id[k])[:14] for k in targets]
        # What store.save sends: the plain update numbering no event (?16 = 0), or, when it
        # has events, the update and their inserts in one transaction (see `logged`).
        update_sql = SQLITE_Q["update"]

        def raw_update_one(entity: ProviderConnection, row: Any) -> None:
            if row is None:
                raise StaleInBenchmarkError(entity.id)
            entity.version = row[0]

        async def lv_update(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                await store.save(entities[i])
                return None

            return Prepared(op)

        async def thread_update(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                entity = entities[i]
                args = (*params[i], entity.version, 0)
                raw_update_one(entity, await threads.run(fetchone, update_sql, args))
                return None

            return Prepared(op)

        async def direct_update(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                entity = entities[i]
                args = (*params[i], entity.version, 0)
                raw_update_one(entity, fetchone(direct, update_sql, args))
                return None

            return Prepared(op)

        async def lv_update_event(n: int, run_no: int) -> Prepared:
            with_pending_event(entities[:n])

            async def op(i: int) -> object:
                await store.save(entities[i])
                return None

            return Prepared(op)

        def raw_update_event(threaded: bool) -> Callable[[int, int], Any]:
            async def prepare(n: int, run_no: int) -> Prepared:
                # The event's own values, decided before the save as record_event decides them.
                to_status = [e.status.value for e in entities[:n]]
                at = micros(datetime.now(UTC))
                kind = EventType.NEEDS_ATTENTION.value

                def payload(i: int) -> LoggedArgs:
                    entity = entities[i]
                    args = (*params[i], entity.version, 1)
                    return args, (event_id(), kind, None, to_status[i], "bench", "{}", at)

                if threaded:

                    async def op(i: int) -> object:
                        row = await threads.run(logged, update_sql, payload(i))
                        raw_update_one(entities[i], row)
                        return None

                else:

                    async def op(i: int) -> object:
                        raw_update_one(entities[i], logged(direct, update_sql, payload(i)))
                        return None

                return Prepared(op)

            return prepare

        impls = {
            RAW_THREAD: thread_update,
            LV: lv_update,
            RAW_DIRECT: direct_update,
            RAW_DIRECT + EVENT: raw_update_event(False),
            LV + EVENT: lv_update_event,
            RAW_THREAD + EVENT: raw_update_event(True),
        }
        methods.append(Method(SAVE_UPDATE, 500, len(targets), impls))

        # A new connection always gets its connection.created event, in the insert's
        # transaction.
        insert_sql = SQLITE_Q["insert"]
        created = EventType.CREATED.value

        async def removing(rows: list[Row]) -> None:
            self.remove([r[0] for r in rows])

        async def lv_insert(n: int, run_no: int) -> Prepared:
            rows = fresh_rows(n, d.now, run_no)
            new = [row_to_entity(r, version=0) for r in rows]

            async def op(i: int) -> object:
                await store.save(new[i])
                return None

            return Prepared(op, lambda: removing(rows))

        def raw_insert(threaded: bool) -> Callable[[int, int], Any]:
            async def prepare(n: int, run_no: int) -> Prepared:
                rows = fresh_rows(n, d.now, run_no)
                values = [(*sqlite_row(r)[:14], 1) for r in rows]

                def payload(i: int) -> LoggedArgs:
                    # connection.created: to the row's status, at its creation time.
                    value = values[i]
                    return value, (event_id(), created, None, value[5], None, "{}", value[12])

                if threaded:

                    async def op(i: int) -> object:
                        row = await threads.run(logged, insert_sql, payload(i))
                        if row is None:
                            raise StaleInBenchmarkError(rows[i][0])
                        return row

                else:

                    async def op(i: int) -> object:
                        row = logged(direct, insert_sql, payload(i))
                        if row is None:
                            raise StaleInBenchmarkError(rows[i][0])
                        return row

                return Prepared(op, lambda: removing(rows))

            return prepare

        methods.append(
            Method(
                "save (insert)",
                500,
                20_000,
                {RAW_THREAD: raw_insert(True), LV: lv_insert, RAW_DIRECT: raw_insert(False)},
            )
        )

        # A delete always writes connection.deleted, at the store's clock, in its transaction.
        delete_sql = SQLITE_Q["delete"]
        deleted, deleted_at = EventType.DELETED.value, micros(d.now)

        async def lv_delete(n: int, run_no: int) -> Prepared:
            rows = fresh_rows(n, d.now, run_no)
            self.load(rows)
            doomed = [r[0] for r in rows]

            async def op(i: int) -> object:
                await store.delete(doomed[i])
                return None

            return Prepared(op)

        def raw_delete(threaded: bool) -> Callable[[int, int], Any]:
            async def prepare(n: int, run_no: int) -> Prepared:
                rows = fresh_rows(n, d.now, run_no)
                self.load(rows)
                doomed = [(r[0].bytes, 1) for r in rows]

                def payload(i: int) -> LoggedArgs:
                    return doomed[i], (event_id(), deleted, None, None, None, "{}", deleted_at)

                if threaded:

                    async def op(i: int) -> object:
                        row = await threads.run(logged, delete_sql, payload(i))
                        if row is None:
                            raise StaleInBenchmarkError(rows[i][0])
                        return row

                else:

                    async def op(i: int) -> object:
                        row = logged(direct, delete_sql, payload(i))
                        if row is None:
                            raise StaleInBenchmarkError(rows[i][0])
                        return row

                return Prepared(op)

            return prepare

        methods.append(
            Method(
                "delete",
                500,
                20_000,
                {RAW_THREAD: raw_delete(True), LV: lv_delete, RAW_DIRECT: raw_delete(False)},
            )
        )

        expiring_sql = SQLITE_Q["find_expiring_soon"]
        horizon = (
            (d.now + timedelta(minutes=EXPIRING_MINUTES) - datetime(1970, 1, 1, tzinfo=UTC))
            // timedelta(microseconds=1),
        )

        async def lv_expiring(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                return await store.find_expiring_soon(EXPIRING_MINUTES)

            return Prepared(op)

        async def thread_expiring(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                return await threads.run(fetchall, expiring_sql, horizon)

            return Prepared(op)

        async def direct_expiring(n: int, run_no: int) -> Prepared:
            async def op(i: int) -> object:
                return fetchall(direct, expiring_sql, horizon)

            return Prepared(op)

        methods.append(
            Method(
                f"find_expiring_soon({EXPIRING_MINUTES})",
                50,
                5_000,
                {RAW_THREAD: thread_expiring, LV: lv_expiring, RAW_DIRECT: direct_expiring},
            )
        )
        return methods

    def plans(self) -> dict[str, str]:
        d = self.data
        args: dict[str, tuple[Any, ...]] = {
            "find_by_id": (d.ids[0].bytes,),
            "find_by_user_id": (d.user_ids[0].bytes,),
            "find_by_user_and_provider": (d.pairs[0][0].bytes, d.pairs[0][1].bytes),
            "find_active_by_user": (d.user_ids[0].bytes,),
            "find_expiring_soon": (0,),
            "update": (None,) * 16,
            "delete": (b"", 1),
        }
        return {
            name: " / ".join(
                r[3] for r in self.direct.execute(f"EXPLAIN QUERY PLAN {SQLITE_Q[name]}", values)
            )
            for name, values in args.items()
        }


async def bench_sqlite(
    opts: Options, data: Dataset, next_run: RunCounter
) -> tuple[list[Cell], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="linkvault-bench-") as tmp:
        path = str(Path(tmp) / "bench.db")
        store = await SqliteConnectionRepository.open(path, clock=lambda: data.now)
        pool_size = inspect.signature(SqliteConnectionRepository).parameters["pool_size"].default
        threads = ThreadConnections(path, pool_size)
        direct = open_sqlite(path)
        try:
            await store.migrate()
            await threads.open()
            bench = SqliteBench(data, store, threads, direct, opts.seed)
            started = time.perf_counter()
            bench.load(data.rows)
            log(f"SQLite: loaded {len(data.rows):,} rows by executemany in {_since(started)}")
            plans = bench.plans()
            for query, plan in plans.items():
                log(f"  plan {query}: {plan}")
            cells, costs = await run_methods(bench.methods(), opts, next_run)
        finally:
            direct.close()
            await threads.close()
            await store.close()
    meta = {
        "sqlite_version": sqlite3.sqlite_version,
        "pool_size": pool_size,
        "plans": plans,
        "event_cost": costs,
    }
    return cells, meta


def sqlite_table(cells: list[Cell]) -> str:
    headers = [
        "method",
        "mode",
        "linkvault ops/s",
        "raw-thread ops/s",
        "raw-direct ops/s",
        "lv/thread",
        "thread/direct",
        "lv/direct",
        "lv p50",
        "lv p99",
        "thread p50",
        "thread p99",
        "direct p50",
        "direct p99",
    ]
    rows = []
    for c in cells:
        lv, th, di = c.median(LV), c.median(RAW_THREAD), c.median(RAW_DIRECT)
        rows.append(
            [
                c.method,
                mode_name(c.tasks),
                fmt_rate(lv),
                fmt_rate(th),
                fmt_rate(di),
                f"{c.ratio(LV, RAW_THREAD):.2f}x",
                f"{c.ratio(RAW_THREAD, RAW_DIRECT):.2f}x",
                f"{c.ratio(LV, RAW_DIRECT):.2f}x",
                fmt_us(lv.p50_us),
                fmt_us(lv.p99_us),
                fmt_us(th.p50_us),
                fmt_us(th.p99_us),
                fmt_us(di.p50_us),
                fmt_us(di.p99_us),
            ]
        )
    return render_table(headers, rows)


# --- main ----------------------------------------------------------------------


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, help="connections to load (default 100000)")
    parser.add_argument(
        "--expiring-rows",
        type=int,
        help="rows of the find_expiring_soon plan table (default 1000000; 0 skips it)",
    )
    parser.add_argument("--only", choices=("postgres", "sqlite"))
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--rounds", type=int, help="alternating runs per implementation")
    parser.add_argument("--seconds", type=float, help="target length of one run")
    parser.add_argument("--tasks", type=int, default=8, help="concurrent tasks (default 8)")
    parser.add_argument("--seed", type=int, default=20260301)
    a = parser.parse_args(argv)
    quick = bool(a.quick)
    return Options(
        rows=a.rows if a.rows is not None else (20_000 if quick else 100_000),
        expiring_rows=(
            a.expiring_rows if a.expiring_rows is not None else (100_000 if quick else 1_000_000)
        ),
        only=a.only,
        quick=quick,
        rounds=a.rounds if a.rounds is not None else (1 if quick else 5),
        seconds=a.seconds if a.seconds is not None else (0.12 if quick else 0.6),
        tasks=a.tasks,
        seed=a.seed,
        postgres_url=os.environ.get("LINKVAULT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
    )


async def main_async(opts: Options) -> int:
    began = time.perf_counter()
    now = datetime.now(UTC)
    data = Dataset(now, list(generate_rows(opts.rows, now, opts.seed)))
    for row in data.rows:
        row_to_entity(row)  # every generated row is a valid entity
    log(f"data: {data.describe()} ({_since(began)})")
    gc.collect()
    gc.freeze()  # the data set is not garbage: keep collections as short as an app's
    next_run = RunCounter()
    report: dict[str, Any] = {
        "started_at": now.isoformat(),
        "options": {k: v for k, v in vars(opts).items() if k != "postgres_url"},
        "machine": {
            "python": sys.version.split()[0],
            "asyncpg": asyncpg.__version__,
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "dataset": data.describe(),
    }
    printed: list[str] = []

    if opts.only in (None, "postgres"):
        try:
            probe = await admin_connect(opts.postgres_url)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log(f"PostgreSQL unreachable ({type(exc).__name__}: {exc}); use --only sqlite")
            return 2
        await probe.close()
        cells, meta = await bench_postgres(opts, data, next_run)
        flagged = [c for c in cells if c.ratio(LV, RAW) > TARGET_RATIO]
        text = (
            f"PostgreSQL {meta['server_version']} ({data.describe()})\n"
            f"both pools: {meta['pools']}\n"
            f"ratio = time per op of linkvault / raw asyncpg; target <= {TARGET_RATIO}x\n"
            + postgres_table(cells)
            + (
                f"\n{len(flagged)} cell(s) above {TARGET_RATIO}x"
                if flagged
                else f"\nevery method within {TARGET_RATIO}x"
            )
        )
        printed.append(text + "\n" + event_cost_report(meta["event_cost"]))
        report["postgres"] = {**meta, "cells": [c.as_json() for c in cells]}
        if opts.expiring_rows > 0:
            expiring = await expiring_plan(opts)
            printed.append(expiring_report(expiring))
            report["postgres_expiring"] = expiring

    if opts.only in (None, "sqlite"):
        cells, meta = await bench_sqlite(opts, data, next_run)
        text = (
            f"SQLite {meta['sqlite_version']}, store pool of {meta['pool_size']} "
            f"({data.describe()})\n"
            "raw-thread = raw sqlite3 through one thread per connection (the store's pattern); "
            "raw-direct = raw sqlite3 called on the event loop thread\n" + sqlite_table(cells)
        )
        printed.append(text + "\n" + event_cost_report(meta["event_cost"]))
        report["sqlite"] = {**meta, "cells": [c.as_json() for c in cells]}

    report["duration_s"] = round(time.perf_counter() - began, 1)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"store-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", "utf-8")
    log("")
    for text in printed:
        log(text)
        log("")
    log(f"results written to {out} (total {report['duration_s']} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
