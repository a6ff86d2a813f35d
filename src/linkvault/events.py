"""What happened to a connection: the events the outbox keeps and webhooks deliver (pure).

An event is written in the same transaction as the change it describes, so none is lost and
none is invented. It names the connection, the user and the provider, says which status the
connection left and entered and why, in words safe to show anyone: no token, code, key or
secret ever goes into an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

MAX_EVENT_REASON = 500


class EventType(StrEnum):
    CREATED = "connection.created"
    ACTIVATED = "connection.activated"  # first connect, and every reconnect
    REFRESH_FAILED = "connection.refresh_failed"  # transient: it will be tried again
    RECOVERED = "connection.recovered"  # the first success after failed refreshes
    EXPIRED = "connection.expired"
    REVOKED = "connection.revoked"
    FAILED = "connection.failed"
    DISCONNECTED = "connection.disconnected"
    DELETED = "connection.deleted"
    NEEDS_ATTENTION = "connection.needs_attention"  # only an operator can fix it
    CONSENT_EXPIRING = "connection.consent_expiring"
    CREDENTIALS_REVEALED = "credentials.revealed"


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """One event about one connection, as recorded (before it has a place in the log)."""

    type: EventType
    connection_id: UUID
    user_id: UUID
    provider_slug: str
    occurred_at: datetime
    from_status: str | None = None
    to_status: str | None = None
    reason: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", safe_reason(self.reason))


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event with its place in the log: an id, the per-connection sequence, a position."""

    id: UUID
    position: int
    sequence: int
    event: ConnectionEvent
    # Where the whole log continues after this event (opaque: pass it back as `after`).
    cursor: str = ""

    def payload(self) -> dict[str, Any]:
        """The JSON body the feed and webhooks carry (Standard Webhooks' type/timestamp/data)."""
        e = self.event
        return {
            "id": str(self.id),
            "type": e.type.value,
            "timestamp": e.occurred_at.isoformat(),
            "data": {
                "connection_id": str(e.connection_id),
                "user_id": str(e.user_id),
                "provider": e.provider_slug,
                "sequence": self.sequence,
                "from_status": e.from_status,
                "to_status": e.to_status,
                "reason": e.reason,
                **dict(e.data),
            },
        }


def safe_reason(reason: str | None) -> str | None:
    """A reason cut to size, without control characters (it is shown in many places)."""
    if reason is None:
        return None
    cleaned = "".join(ch if ch.isprintable() else " " for ch in reason)
    return cleaned[:MAX_EVENT_REASON]
