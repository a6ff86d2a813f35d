"""How long the event loop stalls while the SQLite store serves writers and point readers.

The stall is the longest single step the loop ran (asyncio's debug mode times every
callback; steps over 1 ms are collected). A probe task also asks to wake every millisecond
and records how late it wakes: that lateness adds up every ready task's work, so it grows
with the load even when no step is long. Beside them,
`--writers` tasks save connections as fast as they can (each save waits for the write
lock on a worker thread) and `--readers` tasks read connections by id (on the loop's own
thread). A read that waited for a lock on the loop would show here as a stall as long as
the writer's transaction; the target is a worst stall under 5 ms. The same probe runs
once with nothing else going on, as the baseline of this machine.

    .venv/bin/python bench/bench_sqlite_stall.py [--seconds 10] [--writers 8] [--readers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.stores.sqlite import SqliteConnectionRepository

TARGET_MS = 5.0


class _SlowSteps(logging.Handler):
    """Collects the durations asyncio's debug mode reports for slow callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "took" in str(record.msg) and isinstance(record.args, tuple) and record.args:
            took = record.args[-1]
            if isinstance(took, float):
                self.seconds.append(took)


def _watch_slow_steps() -> _SlowSteps:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.001
    handler = _SlowSteps()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    return handler


async def probe(stop: asyncio.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        lateness.append((time.perf_counter() - asked - 0.001) * 1000)


def summary(name: str, lateness: list[float], ops: dict[str, int], seconds: float) -> str:
    cuts = statistics.quantiles(lateness, n=1000)
    rates = ", ".join(f"{k} {v / seconds:,.0f}/s" for k, v in ops.items())
    worst = max(lateness)
    verdict = "ok" if worst < TARGET_MS else f"ABOVE {TARGET_MS} ms"
    return (
        f"{name:<22} wakes {len(lateness):>7,}  late p50 {statistics.median(lateness):6.3f} ms  "
        f"p99 {cuts[989]:6.3f} ms  p99.9 {cuts[998]:6.3f} ms  worst {worst:7.3f} ms  {verdict}"
        + (f"  ({rates})" if rates else "")
    )


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as folder:
        store = await SqliteConnectionRepository.open(Path(folder) / "stall.db", pool_size=4)
        async with store:
            await store.migrate()
            conns = [
                ProviderConnection(
                    user_id=uuid4(),
                    provider_id=uuid4(),
                    provider_slug="bench",
                    status=ConnectionStatus.PENDING,
                )
                for _ in range(2000)
            ]
            async with store.transaction() as tx:
                for conn in conns:
                    await tx.save(conn)
            ids = [c.id for c in conns]

            steps = _watch_slow_steps()
            # Baseline: the probe alone.
            stop = asyncio.Event()
            alone: list[float] = []
            task = asyncio.create_task(probe(stop, alone))
            await asyncio.sleep(args.seconds / 2)
            stop.set()
            await task

            alone_steps, steps.seconds = steps.seconds, []
            stop = asyncio.Event()
            loaded: list[float] = []
            ops = {"saves": 0, "reads": 0}

            async def writer(rng: random.Random) -> None:
                while not stop.is_set():
                    conn = await store.find_by_id(rng.choice(ids))
                    assert conn is not None
                    conn.rename(f"n{rng.randrange(1_000_000)}")
                    try:
                        await store.save(conn)
                    except Exception:  # a stale copy: another writer got there first
                        continue
                    ops["saves"] += 1

            async def reader(rng: random.Random) -> None:
                while not stop.is_set():
                    await store.find_by_id(rng.choice(ids))
                    ops["reads"] += 1
                    # A point read can finish without suspending (it waits for nothing), as
                    # a cache hit does: a loop of nothing but reads must yield of itself.
                    await asyncio.sleep(0)

            tasks = [asyncio.create_task(probe(stop, loaded))]
            tasks += [asyncio.create_task(writer(random.Random(n))) for n in range(args.writers)]
            tasks += [asyncio.create_task(reader(random.Random(-n))) for n in range(args.readers)]
            await asyncio.sleep(args.seconds)
            stop.set()
            await asyncio.gather(*tasks)
    print(f"event loop lateness: {args.writers} writers, {args.readers} point readers, "
          f"{args.seconds:.0f} s; target: worst under {TARGET_MS} ms")  # fmt: skip
    print(summary("probe alone", alone, {}, args.seconds / 2))
    print(summary("writers + readers", loaded, ops, args.seconds))
    for name, slow in (("alone", alone_steps), ("writers + readers", steps.seconds)):
        worst = max(slow, default=0.0) * 1000
        verdict = "ok" if worst < TARGET_MS else f"ABOVE {TARGET_MS} ms"
        print(
            f"longest single loop step, {name}: {worst:.3f} ms "
            f"({len(slow)} steps over 1 ms)  {verdict}"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=8)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
