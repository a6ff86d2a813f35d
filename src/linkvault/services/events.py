"""Reading the event log: one connection's history, and the whole log for applications that poll.

Events outlive their connection: a deleted connection's history is still read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from linkvault.errors import NotFoundError
from linkvault.events import StoredEvent
from linkvault.stores import ConnectionStore
from linkvault.stores.common import MAX_PAGE, check_limit, parse_cursor

__all__ = ["EventFeed", "EventPage", "EventService"]


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of a connection's events; `next_after` is the sequence to continue after,
    None on the last page."""

    events: list[StoredEvent]
    next_after: int | None


@dataclass(frozen=True, slots=True)
class EventFeed:
    """Events of the whole log, and the cursor to continue from (the same one when empty)."""

    events: list[StoredEvent]
    cursor: str


class EventService:
    """One connection's events by sequence, and the whole log by cursor."""

    def __init__(self, store: ConnectionStore) -> None:
        self.store = store

    async def connection_events(
        self, connection_id: UUID, *, after: int = 0, limit: int = 100
    ) -> EventPage:
        """A connection's events after sequence `after`; NotFoundError when there is no such
        connection and it has no events (a deleted connection's events are still read)."""
        size = check_limit(limit)
        events = await self.store.connection_events(
            connection_id, after=after, limit=min(size + 1, MAX_PAGE)
        )
        if not events and not await self._known(connection_id):
            raise NotFoundError(connection_id)
        more = len(events) > size or (size == MAX_PAGE and len(events) == size)
        events = events[:size]
        return EventPage(events, events[-1].sequence if more else None)

    async def feed(self, after: str | None = None, *, limit: int = 100) -> EventFeed:
        """The log after the cursor `after` (None: from the start), oldest first."""
        tx, position = parse_cursor(after)
        events = await self.store.read_events(after, limit=limit)
        cursor = events[-1].cursor if events else (after or f"{tx}.{position}")
        return EventFeed(events, cursor)

    async def _known(self, connection_id: UUID) -> bool:
        if await self.store.find_by_id(connection_id) is not None:
            return True
        return bool(await self.store.connection_events(connection_id, limit=1))
