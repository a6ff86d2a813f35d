"""Webhook deliveries per second to a loopback receiver, next to the receiver fed directly.

    .venv/bin/python bench/bench_webhooks.py [--events 5000] [--rounds 3] [--quick]

A throwaway PostgreSQL database (from LINKVAULT_BENCH_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/postgres) holds `--events` connection.created events and
one endpoint; linkvault's WebhookDispatcher fans them out and delivers them, signed, to a
receiver in its own process that answers 204 and counts. The baseline, in the same round:
the same number of signed POSTs of the same payloads, from one httpx client in this
process, as many at a time as the dispatcher's batch (no database, no fan-out, no leases).
ratio = linkvault deliveries/s over the baseline's POSTs/s, the median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import httpx

from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.domain import ProviderConnection
from linkvault.services.webhooks import DeliveryPolicy, WebhookDispatcher, WebhookService
from linkvault.serving import bind_loopback, socket_url
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.webhooks import new_secret, signed_headers

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    print(message, flush=True)


# --- the receiver (a child process) -------------------------------------------


def _receiver(port_out: Connection) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    seen = {"count": 0}

    async def hook(request: Request) -> Response:
        await request.body()
        seen["count"] += 1
        return Response(status_code=204)

    async def count(request: Request) -> Response:
        return JSONResponse(seen)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/count", count)])
    sock = bind_loopback()
    port_out.send(socket_url(sock))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class Receiver:
    process: SpawnProcess
    url: str

    def count(self) -> int:
        return int(httpx.get(f"{self.url}/count").json()["count"])


def start_receiver() -> Receiver:
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    process = ctx.Process(target=_receiver, args=(there,), daemon=True)
    process.start()
    url = here.recv()
    for _ in range(100):
        try:
            httpx.get(f"{url}/count")
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return Receiver(process, url)


# --- one round ----------------------------------------------------------------


async def linkvault_round(database_url: str, receiver: Receiver, events: int) -> float:
    """Seed `events` events and one endpoint, deliver them all; deliveries per second."""
    cipher = AesGcmCipher(KeyRing([Key.generate("bench")]))
    async with await PostgresConnectionRepository.connect(database_url) as store:
        await store.migrate()
        # An endpoint gets the events that happen after it is added.
        service = WebhookService(store, cipher, allow_http_loopback=True)
        await service.register(f"{receiver.url}/hook")
        async with store.transaction() as tx:
            for _ in range(events):
                await tx.save(
                    ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug="b")
                )
        dispatcher = WebhookDispatcher(store, cipher, policy=DeliveryPolicy(idle_poll=0.05))
        before = receiver.count()
        try:
            started = time.perf_counter()
            while (delivered := receiver.count() - before) < events:
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"only {delivered} of {events} delivered in 10 minutes")
                await dispatcher.run(asyncio.Event(), until_idle=True)
            elapsed = time.perf_counter() - started
        finally:
            await dispatcher.aclose()
    return events / elapsed


async def baseline_round(receiver: Receiver, events: int, concurrency: int) -> float:
    """The same number of signed POSTs, `concurrency` at a time; POSTs per second."""
    secret = new_secret()
    body = b'{"type":"connection.created","data":{"connection_id":"x"}}'
    before = receiver.count()
    async with httpx.AsyncClient(follow_redirects=False) as client:

        async def post(i: int) -> None:
            headers = signed_headers(secret, f"evt-{i}", int(time.time()), body)
            response = await client.post(f"{receiver.url}/hook", content=body, headers=headers)
            response.raise_for_status()

        started = time.perf_counter()
        for first in range(0, events, concurrency):
            await asyncio.gather(*(post(i) for i in range(first, min(first + concurrency, events))))
        elapsed = time.perf_counter() - started
    assert receiver.count() - before == events
    return events / elapsed


# --- databases ----------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def fresh_database(url: str, name: str) -> str:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(url, name)


async def drop_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 events, 1 round")
    opts = parser.parse_args(argv)
    events, rounds = (1000, 1) if opts.quick else (opts.events, opts.rounds)
    server = os.environ.get("LINKVAULT_BENCH_POSTGRES_URL", DEFAULT_PG)
    concurrency = DeliveryPolicy().batch_size
    log(
        f"webhook benchmark: {events:,} events, {rounds} round(s), {concurrency} at a time; "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    receiver = start_receiver()
    ratios, rates = [], []
    try:
        for n in range(1, rounds + 1):
            name = f"linkvault_bench_webhooks_{os.getpid()}_{n}"
            url = await fresh_database(server, name)
            try:
                lv = await linkvault_round(url, receiver, events)
            finally:
                await drop_database(server, name)
            raw = await baseline_round(receiver, events, concurrency)
            ratios.append(lv / raw)
            rates.append((lv, raw))
            log(
                f"  round {n}: linkvault {lv:,.0f} deliveries/s, receiver fed directly {raw:,.0f}/s"
            )
    finally:
        receiver.process.terminate()
        receiver.process.join(5)
    lv_median = statistics.median(r[0] for r in rates)
    raw_median = statistics.median(r[1] for r in rates)
    log(
        f"deliveries/s: linkvault {lv_median:,.0f}, receiver fed directly {raw_median:,.0f}, "
        f"ratio {statistics.median(ratios):.2f} (median of per-round ratios)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
