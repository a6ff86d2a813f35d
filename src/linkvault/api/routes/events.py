"""/v1/events: the whole event log, for applications that poll."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from linkvault.api.routes.common import COMMON, CurrentRuntime, make_router
from linkvault.api.schemas import EVENTS_CURSOR_PATTERN, MAX_PAGE_SIZE, Event, EventFeed
from linkvault.api.security import ReadKey

router = make_router("/v1/events")


@router.get(
    "",
    tags=["events"],
    response_model=EventFeed,
    summary="Read the event log",
    description=(
        "Scope `read`. Every connection's events, oldest first, at least once: poll with "
        "`after` = the last `next_cursor` (none: from the start). An event shows once every "
        "transaction older than its own has ended, so a cursor never passes one that "
        "commits late. Cursors are opaque."
    ),
    responses=COMMON,
)
async def read_events(
    runtime: CurrentRuntime,
    _key: ReadKey,
    after: Annotated[
        str | None,
        Query(pattern=EVENTS_CURSOR_PATTERN, description="a next_cursor from an earlier answer"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
) -> EventFeed:
    feed = await runtime.events.feed(after, limit=limit)
    return EventFeed(data=[Event.of(e) for e in feed.events], next_cursor=feed.cursor)
