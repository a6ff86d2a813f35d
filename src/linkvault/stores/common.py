"""Rules every store shares."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self
from uuid import UUID

from linkvault.domain import ConnectionStatus, ProviderConnection, ProviderCredentials, uuid7
from linkvault.errors import InvalidArgumentError
from linkvault.events import ConnectionEvent, EventType, StoredEvent

# How long an authorization nobody answered is kept after it expired: long enough for the
# worker to mark its PENDING connection FAILED (lapsed_authorizations), and for a late callback
# to be told it expired rather than that it is unknown.
LAPSED_KEPT = timedelta(days=1)


class ClosingOnExit:
    """`async with store:` closes the store on the way out."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# A year: far beyond any refresh horizon, and small enough for every datetime to hold.
MAX_MINUTES = 366 * 24 * 60


def check_minutes(minutes: int) -> int:
    """Validate the `minutes` argument of find_expiring_soon."""
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidArgumentError("minutes must be an integer")
    if not 0 <= minutes <= MAX_MINUTES:
        raise InvalidArgumentError(f"minutes must be between 0 and {MAX_MINUTES}")
    return minutes


MAX_PAGE = 1000
# What a circuit keeps of a provider's last error.
MAX_CIRCUIT_ERROR = 500


# How many refresh failures in a row the worker takes before it stops trying (the default of
# RefreshPolicy.max_attempts).
DEFAULT_MAX_ATTEMPTS = 8
# The statuses only the user can leave (by reconnecting).
USER_ACTION_STATUSES = frozenset(
    {ConnectionStatus.EXPIRED, ConnectionStatus.REVOKED, ConnectionStatus.FAILED}
)


@dataclass(frozen=True, slots=True)
class ConnectionFilter:
    """Optional filters of a listing; `expiring_before` keeps ACTIVE ones expiring by then.

    `needs_user_action` keeps (True) or leaves out (False) connections only the user can fix:
    expired, revoked or failed ones, and ACTIVE ones whose refreshes failed `max_attempts`
    times in a row (the worker no longer tries them).
    """

    user_id: UUID | None = None
    provider_id: UUID | None = None
    status: ConnectionStatus | None = None
    expiring_before: datetime | None = None
    needs_user_action: bool | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


@dataclass(frozen=True, slots=True)
class ConnectionHealth:
    """The refresh worker's record of a connection: failures in a row, next try, last error.

    `last_refresh_error` is text linkvault wrote ("outcome: reason"), never a provider's
    secret; None after a success or new credentials.
    """

    connection_id: UUID
    refresh_failures: int = 0
    next_refresh_at: datetime | None = None
    last_refresh_error: str | None = None


def check_max_attempts(max_attempts: int) -> int:
    """Validate the attempts threshold of a needs_user_action filter."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidArgumentError("max_attempts must be a positive integer")
    return max_attempts


def list_query(where: ConnectionFilter) -> str:
    """The named listing query whose index fits the filter: by user, by expiry, or by id."""
    if where.user_id is not None:
        return "list_by_user"
    if where.expiring_before is not None:
        return "list_expiring"
    return "list_all"


def check_limit(limit: int) -> int:
    """Validate a page size."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgumentError(f"limit must be an integer between 1 and {MAX_PAGE}")
    return limit


@dataclass(frozen=True, slots=True)
class Page:
    """Which page of a listing in id order: the one after the cursor `after`, `limit` long."""

    after: UUID | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        check_limit(self.limit)


FIRST_PAGE = Page()


@dataclass(frozen=True, slots=True)
class LostAttempt:
    """A refresh request sent earlier whose answer never came back.

    `how` says how the answer was lost ("read timeout", "connection reset"...); None means
    the worker that sent it stopped (crashed, or lost its lease) before the answer came.
    `fingerprint` identifies the refresh token it spent, never the token itself.
    """

    at: datetime
    fingerprint: str
    how: str | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A connection leased to one refresh worker, its failed attempts, and any lost attempt."""

    connection: ProviderConnection
    failures: int
    lost: LostAttempt | None = None


@dataclass(frozen=True, slots=True, repr=False)
class AttemptStart:
    """A refresh request about to be sent: the connection, the fingerprint of the refresh token
    it spends, and the sealed credentials it was read from (the grant the fence expects)."""

    connection_id: UUID
    fingerprint: str
    credentials: bytes

    def __repr__(self) -> str:
        return f"AttemptStart(connection_id={self.connection_id}, fingerprint={self.fingerprint})"


def check_attempts(attempts: Sequence[AttemptStart]) -> Sequence[AttemptStart]:
    """Refuse a fence naming one connection twice: one statement cannot fence a row twice."""
    if len({a.connection_id for a in attempts}) != len(attempts):
        raise InvalidArgumentError("a fence names each connection at most once")
    return attempts


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Which due connections a refresh worker leases with claim_due, and for how long.

    Due: ACTIVE, refreshable, expiring within `horizon`, fewer than `max_failures` failures in
    a row, and not at a `paused` provider (an open circuit). At most `limit`, each leased for
    `lease`.
    """

    horizon: timedelta
    lease: timedelta
    limit: int
    max_failures: int
    paused: Sequence[str] = ()

    def __post_init__(self) -> None:
        check_limit(self.limit)


@dataclass(frozen=True, slots=True)
class Refreshed:
    """New credentials for a leased connection, stored with complete_refresh.

    They apply only while the row still holds the grant `started_from` (its sealed blob);
    `next_refresh_at` is when the connection is due again, `events` are logged with them.
    """

    started_from: bytes = field(repr=False)
    credentials: ProviderCredentials
    next_refresh_at: datetime | None
    events: Sequence[ConnectionEvent] = ()


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """How a refresh worker's lease ended, recorded with finish_claim.

    A success clears the failure count, a failure adds one; `next_attempt_at` is the next try
    (None: due again by expiry), `error` what went wrong, `events` are logged with it.
    """

    succeeded: bool
    next_attempt_at: datetime | None = None
    error: str | None = None
    events: Sequence[ConnectionEvent] = ()


@dataclass(frozen=True, slots=True)
class RefreshBacklog:
    """Due connections (whoever leases them), those nobody leases, and the oldest expiry."""

    due: int
    unclaimed: int
    oldest_due: datetime | None


@dataclass(frozen=True, slots=True)
class CircuitCount:
    """A provider's circuit after one more failure was counted."""

    failures: int
    opened: int
    open_until: datetime | None


def lost_attempt(
    at: datetime | None, fingerprint: str | None, how: str | None
) -> LostAttempt | None:
    """The lost attempt a claimed row records, if any."""
    if at is None or fingerprint is None:
        return None
    return LostAttempt(at, fingerprint, how)


def check_owner(owner: str) -> str:
    """Validate a worker's lease owner name."""
    if not isinstance(owner, str) or not 0 < len(owner) <= 200:
        raise InvalidArgumentError("a lease owner is a non-empty name of at most 200 characters")
    return owner


@dataclass(frozen=True, slots=True, repr=False)
class PendingAuthorization:
    """What the OAuth2 callback needs to finish a connect: kept server-side, keyed by state."""

    state_hash: bytes
    connection_id: UUID
    sealed_verifier: bytes
    redirect_uri: str
    return_to: str | None
    created_at: datetime
    expires_at: datetime
    # Started to renew the consent of a connection that is still ACTIVE (see reconnect).
    renews: bool = False

    def __repr__(self) -> str:
        return (
            f"PendingAuthorization(connection_id={self.connection_id}, "
            f"expires_at={self.expires_at.isoformat()}, renews={self.renews})"
        )


# --- the event log -----------------------------------------------------------

# An event as a store writes it: id, type, from status, to status, reason, data as JSON, time.
# The connection, its user and its provider come from the row the same statement changes.
EventRow = tuple[UUID, str, str | None, str | None, str | None, str, datetime]

_CURSOR = re.compile(r"(\d{1,20})\.(\d{1,19})")
MAX_TX = 2**64 - 1
MAX_BIGINT = 2**63 - 1
START = ("0", 0)


def event_rows(events: Sequence[ConnectionEvent]) -> list[EventRow]:
    """Events as the stores write them, each with a new id."""
    return [
        (
            uuid7(),
            e.type.value,
            e.from_status,
            e.to_status,
            e.reason,
            json.dumps(dict(e.data), sort_keys=True, default=_json_default),
            e.occurred_at,
        )
        for e in events
    ]


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"an event cannot hold a {type(value).__name__}")


def created_event(connection: ProviderConnection) -> ConnectionEvent:
    """connection.created, written with the row's insert."""
    return ConnectionEvent(
        type=EventType.CREATED,
        connection_id=connection.id,
        user_id=connection.user_id,
        provider_slug=connection.provider_slug,
        occurred_at=connection.created_at,
        to_status=connection.status.value,
    )


def deleted_event(connection_id: UUID, user_id: UUID, slug: str, at: datetime) -> ConnectionEvent:
    """connection.deleted (its from status is the row's, which the delete statement knows)."""
    return ConnectionEvent(
        type=EventType.DELETED,
        connection_id=connection_id,
        user_id=user_id,
        provider_slug=slug,
        occurred_at=at,
    )


def parse_cursor(cursor: str | None) -> tuple[str, int]:
    """The (transaction, position) an events cursor names; InvalidArgumentError if malformed."""
    if cursor is None:
        return START
    match = _CURSOR.fullmatch(cursor) if isinstance(cursor, str) else None
    # A transaction id is 64 bits unsigned, a position 63 (what the databases can hold).
    if match is None or int(match.group(1)) > MAX_TX or int(match.group(2)) > MAX_BIGINT:
        raise InvalidArgumentError("an events cursor is two numbers joined by a dot, e.g. 0.0")
    return match.group(1), int(match.group(2))


def stored_event(
    position: int,
    id: UUID,
    connection_id: UUID,
    user_id: UUID,
    provider_slug: str,
    seq: int,
    type: str,
    from_status: str | None,
    to_status: str | None,
    reason: str | None,
    data: str,
    occurred_at: datetime,
    tx: str,
) -> StoredEvent:
    """An event read back from a store's log."""
    # The arguments are the event's fields, in their order.
    event = ConnectionEvent(
        EventType(type),
        connection_id,
        user_id,
        provider_slug,
        occurred_at,
        from_status,
        to_status,
        reason,
        json.loads(data),
    )
    return StoredEvent(id, int(position), int(seq), event, f"{tx}.{int(position)}")


def check_sequence(after: int) -> int:
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_BIGINT:
        raise InvalidArgumentError("after must be a non-negative event sequence number")
    return after
