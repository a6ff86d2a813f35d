"""`linkvault events`: the event log, once or followed until interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from linkvault.cli.common import (
    DatabaseOption,
    JsonOption,
    markup_safe,
    out,
    print_json,
    run,
    say,
    warn,
    with_existing_store,
)
from linkvault.events import StoredEvent
from linkvault.services.events import EventFeed, EventService
from linkvault.stores import ConnectionStore


def print_events(events: Sequence[StoredEvent], *, with_connection: bool = True) -> None:
    """Events as a table; reasons and data come from outside and are shown inert.

    Ids are never cut (they are copied into other commands); the details column folds.
    """
    if not events:
        say("No events.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_lines=True)
    table.add_column("time (UTC)\ntype", no_wrap=True)
    table.add_column("connection\nsequence" if with_connection else "seq", no_wrap=True)
    table.add_column("status change\nreason", overflow="fold", ratio=1)
    for stored in events:
        e = stored.event
        change = f"{e.from_status or ''} → {e.to_status}".lstrip() if e.to_status else ""
        details = [change, e.reason or "", *(f"{k}: {v}" for k, v in sorted(e.data.items()))]
        where = f"{e.connection_id}\n{stored.sequence}" if with_connection else str(stored.sequence)
        table.add_row(
            f"{e.occurred_at.strftime('%Y-%m-%d %H:%M:%S')}\n{markup_safe(e.type.value)}",
            where,
            markup_safe("\n".join(d for d in details if d)),
        )
    out.print(table)


def events(
    after: Annotated[
        str | None,
        typer.Option(
            help="Continue from this cursor (a next cursor printed before).", metavar="CURSOR"
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep polling for new events until interrupted.")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between polls with --follow.", min=0.05, max=3600)
    ] = 1.0,
    limit: Annotated[
        int, typer.Option(help="At most this many per read.", min=1, max=1000, metavar="N")
    ] = 100,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the event log of every connection, oldest first.

    With --json, one document {"data": [...], "next_cursor": ...} (with --follow, one line
    each time new events arrive). Ctrl-C or SIGTERM ends --follow cleanly.
    """

    async def once(store: ConnectionStore) -> EventFeed:
        return await EventService(store).feed(after, limit=limit)

    if not follow:
        feed = run(with_existing_store(database_url, once))
        if as_json:
            print_json(_document(feed))
            return
        print_events(feed.events)
        say(f"Next cursor: {feed.cursor}")
        return
    cursor = run(
        with_existing_store(database_url, lambda s: _follow(s, after, limit, interval, as_json))
    )
    if not as_json:
        warn(f"Stopped. Continue with --after {cursor}")


def _document(feed: EventFeed) -> dict[str, object]:
    return {"data": [e.payload() for e in feed.events], "next_cursor": feed.cursor}


async def _follow(
    store: ConnectionStore, after: str | None, limit: int, interval: float, as_json: bool
) -> str | None:
    """Print new events as they come until SIGINT or SIGTERM; the cursor reached."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    service, cursor = EventService(store), after
    try:
        while not stop.is_set():
            feed = await service.feed(cursor, limit=limit)
            cursor = feed.cursor
            if feed.events and as_json:
                sys.stdout.write(json.dumps(_document(feed), ensure_ascii=True) + "\n")
                sys.stdout.flush()
            elif feed.events:
                print_events(feed.events)
            if len(feed.events) < limit:  # caught up: wait before asking again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
        return cursor
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
