"""Benchmark the refresh worker: refreshes per second with 1, 2 and 4 worker processes.

Every run seeds `--connections` due OAuth2 connections on PostgreSQL (a throwaway database),
each holding the refresh token of its own grant at the sandbox provider (in its own process,
rotation on), starts N `linkvault worker --until-idle` processes and waits for them. Next to
it, the sandbox token endpoint's own capacity is measured alone, in the same run: N client
processes refresh as many grants through linkvault's HttpxTokenClient (same client settings,
same concurrency per process), with no database, no crypto and no logging.

    .venv/bin/python bench/bench_refresh.py [--connections 10000] [--workers 1,2,4]
                                            [--concurrency 16] [--batch-size 100] [--rounds 2]
                                            [--log-level INFO] [--quick]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from linkvault.crypto import generate_key
from linkvault.oauth import HttpxTokenClient
from linkvault.settings import Settings
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import SandboxAdmin, sandbox_in_subprocess, sandbox_provider
from linkvault.testing.fleet import (
    Fleet,
    WorkerProcess,
    schedule_summary,
    seed_due,
    seed_grants,
    updated_span,
    worker_env,
)

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class Options:
    connections: int
    workers: tuple[int, ...]
    concurrency: int
    batch_size: int
    log_level: str
    run_timeout: float
    rounds: int
    postgres_url: str
    save: bool


@dataclass(frozen=True)
class Run:
    """One measured run: `done` refreshes, first to last completion, and process wall time."""

    kind: str  # "linkvault" or "sandbox-alone"
    processes: int
    done: int
    span_s: float
    wall_s: float
    issued: int
    refused: int
    per_process: list[int]
    other: dict[str, int]

    @property
    def rate(self) -> float:
        return self.done / self.span_s if self.span_s > 0 else 0.0

    @property
    def wall_rate(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"rate": round(self.rate, 1), "wall_rate": round(self.wall_rate, 1)}


# --- the sandbox alone: a client loop in its own process -------------------------------


async def client_loop(url: str, refresh_tokens: list[str], concurrency: int) -> dict[str, Any]:
    """Refresh every token once, `concurrency` at a time, as the worker would."""
    tokens = deque(refresh_tokens)
    provider = sandbox_provider(url)
    client = HttpxTokenClient(timeout=Settings().refresh_timeout_seconds)
    done = 0
    errors: Counter[str] = Counter()
    first: float | None = None
    last = 0.0

    async def lane() -> None:
        nonlocal done, errors, first, last
        while tokens:
            token = tokens.popleft()
            try:
                await client.refresh(provider, refresh_token=token)
            except Exception as exc:  # counted by cause; a lost grant shows as refused
                errors[type(exc.__cause__ or exc).__name__] += 1
                continue
            now = time.time()
            first = now if first is None else first
            last = now
            done += 1

    try:
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    finally:
        await client.aclose()
    return {"done": done, "errors": dict(errors), "first": first, "last": last}


def sandbox_alone(admin: SandboxAdmin, opts: Options, processes: int, work: Path) -> Run:
    reset(admin)
    grants = seed_grants(admin, opts.connections)
    files = []
    for n in range(processes):
        path = work / f"tokens-{processes}-{n}.json"
        path.write_text(json.dumps([g["refresh_token"] for g in grants[n::processes]]))
        files.append(path)
    command = [sys.executable, __file__, "--client-loop", "--url", admin.url]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [*command, "--tokens-file", str(f), "--concurrency", str(opts.concurrency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    try:
        outputs = [p.communicate(timeout=opts.run_timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - started
    results = [json.loads(o.strip().splitlines()[-1]) for o in outputs]
    firsts = [r["first"] for r in results if r["first"] is not None]
    lasts = [r["last"] for r in results if r["done"]]
    stats = admin.stats()
    return Run(
        "sandbox-alone",
        processes,
        sum(r["done"] for r in results),
        (max(lasts) - min(firsts)) if firsts else 0.0,
        wall,
        int(stats["issued_total"]),
        int(stats["refused_total"]),
        [int(r["done"]) for r in results],
        dict(sum((Counter(r["errors"]) for r in results), Counter())),
    )


# --- linkvault: worker processes against the database -------------------------------------


async def linkvault_workers(
    admin: SandboxAdmin, opts: Options, processes: int, database_url: str, work: Path
) -> Run:
    reset(admin)
    await truncate(database_url)
    keys = generate_key("bench")
    seeded = await seed_due(database_url, admin, keys, opts.connections)
    env = worker_env(database_url, keys, admin.url) | {"LINKVAULT_LOG_LEVEL": opts.log_level}
    options = ["--until-idle", "--idle-poll", "0.2"]
    options += ["--concurrency", str(opts.concurrency), "--batch-size", str(opts.batch_size)]
    run_dir = work / f"workers-{processes}"
    run_dir.mkdir(parents=True)
    with Fleet(env, run_dir) as fleet:
        started = time.monotonic()
        workers = [fleet.start(f"worker-{n}", *options) for n in range(processes)]
        codes = await asyncio.to_thread(fleet.wait_all, workers, opts.run_timeout)
        wall = time.monotonic() - started
    if codes != [0] * processes:
        raise RuntimeError(f"worker exit codes {codes}; logs in {run_dir}")
    done, span = await updated_span(database_url, seeded.at)
    left = await schedule_summary(database_url)
    if left["leased"] or left["failing"]:
        raise RuntimeError(f"workers left {left['leased']} leased, {left['failing']} failing")
    stats = admin.stats()
    return Run(
        "linkvault",
        processes,
        done,
        span,
        wall,
        int(stats["issued_total"]),
        int(stats["refused_total"]),
        [refreshed(w) for w in workers],
        other_outcomes(workers),
    )


def refreshed(worker: WorkerProcess) -> int:
    summary = worker.summary()
    return summary[0] if summary else -1


def other_outcomes(workers: list[WorkerProcess]) -> dict[str, int]:
    """Outcomes other than `refreshed` over all workers (transient ones were retried)."""
    total: Counter[str] = Counter()
    for w in workers:
        summary = w.summary()
        if summary and summary[1] != "none":
            total.update(ast.literal_eval(summary[1]))
    return dict(total)


def reset(admin: SandboxAdmin) -> None:
    admin.reset(counters=True, faults=True, grants=True)
    admin.update_settings(rotate_refresh_tokens=True, revoke_family_on_reuse=True)


async def truncate(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE provider_connections, oauth_states")
    finally:
        await conn.close()


# --- the throwaway database -----------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(server_url, name)
    async with await PostgresConnectionRepository.connect(url, max_size=1) as store:
        await store.migrate()
    return url


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --- the report -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[Run], opts: Options) -> str:
    """Per worker count: median rates over rounds, and the median of each round's ratio.

    A round runs the sandbox alone and linkvault back to back for one process count, so a
    noisy neighbour weighs on both sides of a ratio alike.
    """
    best = max((r.rate for r in runs if r.kind == "sandbox-alone"), default=0.0)
    header = (
        f"{'workers':>7} | {'linkvault/s':>11} | {'wall/s':>7} | {'alone/s':>8} | "
        f"{'ratio':>5} | {'vs best':>7} | rounds"
    )
    lines = [header, "-" * len(header)]
    for n in opts.workers:
        lv = [r for r in runs if r.kind == "linkvault" and r.processes == n]
        alone = [r for r in runs if r.kind == "sandbox-alone" and r.processes == n]
        ratios = [a.rate and v.rate / a.rate for v, a in zip(lv, alone, strict=True)]
        lv_rate = median([r.rate for r in lv])
        lines.append(
            f"{n:>7} | {lv_rate:>11,.0f} | {median([r.wall_rate for r in lv]):>7,.0f} | "
            f"{median([r.rate for r in alone]):>8,.0f} | {median(ratios):>5.2f} | "
            f"{(lv_rate / best if best else float('nan')):>7.2f} | "
            + ", ".join(f"{v.rate:,.0f}/{a.rate:,.0f}" for v, a in zip(lv, alone, strict=True))
        )
    lines.append("")
    lines.append(
        "linkvault/s: refreshes per second from the first to the last save (updated_at); "
        "wall/s: over worker process start to exit. alone/s: the sandbox token endpoint alone, "
        f"as many client processes at concurrency {opts.concurrency} each, first to last "
        "answer. ratio: median over rounds of linkvault/alone within a round. vs best: "
        f"linkvault over the best sandbox-alone rate of the whole run ({best:,.0f}/s). "
        "rounds: linkvault/alone per round."
    )
    return "\n".join(lines)


async def bench(opts: Options) -> list[Run]:
    name = f"linkvault_bench_refresh_{os.getpid()}_{secrets.token_hex(3)}"
    database_url = await create_database(opts.postgres_url, name)
    runs: list[Run] = []
    try:
        with (
            sandbox_in_subprocess() as admin,
            tempfile.TemporaryDirectory(prefix="lv-bench-refresh-") as tmp,
        ):
            work = Path(tmp)
            log(f"sandbox at {admin.url}; database {name}")
            for r in range(opts.rounds):
                for n in opts.workers:
                    alone = sandbox_alone(admin, opts, n, work)
                    log(
                        f"  round {r + 1}, sandbox alone, {n} client process(es): {describe(alone)}"
                    )
                    lv = await linkvault_workers(admin, opts, n, database_url, work / f"r{r}")
                    log(f"  round {r + 1}, linkvault, {n} worker(s): {describe(lv)}")
                    runs += [alone, lv]
    finally:
        await drop_database(opts.postgres_url, name)
    return runs


def describe(run: Run) -> str:
    return (
        f"{run.done} refreshed in {run.span_s:.2f}s ({run.rate:,.0f}/s), wall {run.wall_s:.2f}s, "
        f"sandbox issued {run.issued}, refused {run.refused}, per process {run.per_process}, "
        f"other outcomes {run.other or 'none'}"
    )


def check(runs: list[Run], opts: Options) -> list[str]:
    """Runs that did not refresh every grant exactly once (their numbers mean nothing)."""
    return [
        f"{r.kind} x{r.processes}: done {r.done}, issued {r.issued}, refused {r.refused}"
        for r in runs
        if (r.done, r.issued, r.refused) != (opts.connections, opts.connections, 0)
    ]


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts, comma separated")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--log-level", default="INFO", help="LINKVAULT_LOG_LEVEL of the workers")
    parser.add_argument("--run-timeout", type=float, default=300.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2,000 connections, 1 round")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument("--client-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tokens-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    opts = Options(
        connections=2_000 if args.quick else args.connections,
        workers=tuple(int(n) for n in args.workers.split(",")),
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        log_level=args.log_level,
        run_timeout=60.0 if args.quick else args.run_timeout,
        rounds=1 if args.quick else args.rounds,
        postgres_url=os.environ.get("LINKVAULT_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        save=not args.no_save,
    )
    return args, opts


def main(argv: list[str] | None = None) -> int:
    args, opts = parse(argv)
    if args.client_loop:
        tokens: list[str] = json.loads(args.tokens_file.read_text())
        result = asyncio.run(client_loop(args.url, tokens, opts.concurrency))
        print(json.dumps(result), flush=True)
        return 0
    log(
        f"refresh benchmark: {opts.connections:,} due connections, workers {opts.workers}, "
        f"concurrency {opts.concurrency}, batch {opts.batch_size}, log level {opts.log_level}; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    began = time.monotonic()
    runs = asyncio.run(bench(opts))
    log("")
    log(report(runs, opts))
    problems = check(runs, opts)
    for p in problems:
        log(f"INVALID RUN: {p}")
    log(f"\ntotal {time.monotonic() - began:.0f}s")
    if opts.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"refresh-{stamp}.json"
        document = {
            "options": asdict(opts) | {"postgres_url": "<redacted>"},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "runs": [r.as_json() for r in runs],
            "invalid": problems,
        }
        path.write_text(json.dumps(document, indent=2))
        log(f"results: {path.relative_to(ROOT)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
