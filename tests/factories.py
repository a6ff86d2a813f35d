"""Shared builders for tests: connections in any status, stored or not, and failing calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID, uuid4

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.errors import DatabaseError, LinkvaultError
from linkvault.events import ConnectionEvent, EventType, StoredEvent
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock

SCHWAB = UUID("0d3c3b1e-6c1a-4c43-9d0e-2c1f0c5a7a01")
PLAID = UUID("7f1e9a40-59c4-4f6b-8a52-3b8d2c6e9b02")


def creds(
    expires_at: datetime | None = None,
    data: bytes = b"sealed-credentials",
    kind: CredentialType = CredentialType.OAUTH2,
) -> ProviderCredentials:
    return ProviderCredentials(data, kind, expires_at)


def make(
    clock: FakeClock,
    *,
    user_id: UUID | None = None,
    provider_id: UUID = SCHWAB,
    status: ConnectionStatus = ConnectionStatus.PENDING,
    expires_at: datetime | None = None,
    alias: str | None = None,
) -> ProviderConnection:
    conn = ProviderConnection(
        user_id=user_id or uuid4(),
        provider_id=provider_id,
        provider_slug="schwab" if provider_id == SCHWAB else "plaid",
        alias=alias,
        created_at=clock.now,
        updated_at=clock.now,
    )
    move_to(conn, status, clock, expires_at)
    return conn


def move_to(
    conn: ProviderConnection,
    status: ConnectionStatus,
    clock: FakeClock,
    expires_at: datetime | None = None,
) -> None:
    S = ConnectionStatus  # noqa: N806
    if status is S.PENDING:
        return
    if status is S.FAILED:
        conn.mark_failed("the provider refused the authorization code", now=clock.now)
        return
    if status is S.DISCONNECTED:
        conn.mark_disconnected(now=clock.now)
        return
    conn.mark_connected(creds(expires_at), now=clock.now)
    if status is S.EXPIRED:
        conn.mark_expired("refresh token expired", now=clock.now)
    elif status is S.REVOKED:
        conn.mark_revoked("revoked by the user at the provider", now=clock.now)


async def saved(store: ConnectionStore, conn: ProviderConnection) -> ProviderConnection:
    await store.save(conn)
    return conn


# --- database failures --------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

PortCall = Callable[[ConnectionStore], Awaitable[object]]


def active(
    alias: str | None = "main", blob: bytes = b"sealed", *, expires_at: datetime | None = NOW
) -> ProviderConnection:
    """A new ACTIVE connection holding credentials, at a provider of its own."""
    return ProviderConnection(
        user_id=uuid4(),
        provider_id=uuid4(),
        provider_slug="schwab",
        alias=alias,
        status=ConnectionStatus.ACTIVE,
        credentials=ProviderCredentials(blob, CredentialType.OAUTH2, expires_at),
        connected_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


def stored_copy(connection: ProviderConnection) -> ProviderConnection:
    """A copy of `connection` as if loaded at version 1."""
    copy = active(connection.alias)
    copy.id = connection.id
    copy.version = 1
    return copy


# Each port method, called with arguments that reach the database.
PORT_CALLS: dict[str, PortCall] = {
    "find_by_id": lambda r: r.find_by_id(uuid4()),
    "find_by_user_id": lambda r: r.find_by_user_id(uuid4()),
    "find_by_user_and_provider": lambda r: r.find_by_user_and_provider(uuid4(), uuid4()),
    "find_active_by_user": lambda r: r.find_active_by_user(uuid4()),
    "find_expiring_soon": lambda r: r.find_expiring_soon(30),
    "save (insert)": lambda r: r.save(active()),
    "save (update)": lambda r: r.save(stored_copy(active())),
    "delete": lambda r: r.delete(uuid4()),
}


def assert_translated(exc: BaseException, expected: type[DatabaseError]) -> BaseException:
    """Check `exc` is linkvault's `expected` chained to the driver's error; return that."""
    assert isinstance(exc, expected), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    assert cause is not None, "the driver's error must be chained as __cause__"
    assert not isinstance(cause, LinkvaultError)
    return cause


async def raised_by(call: Awaitable[object]) -> BaseException:
    """The exception `call` raises; fails the test when it raises none."""
    try:
        await call
    except BaseException as exc:
        return exc
    raise AssertionError("the call did not fail")


# --- the event log ------------------------------------------------------------

MARKER_USER = UUID("00000000-0000-4000-8000-00000000beef")


async def read_all(store: ConnectionStore, after: str | None = None) -> list[StoredEvent]:
    """The log after `after`, every page of it, as the feed shows it now."""
    events: list[StoredEvent] = []
    while page := await store.read_events(after, limit=1000):
        events += page
        after = page[-1].cursor
    return events


async def settled_log(store: ConnectionStore, after: str | None = None) -> list[StoredEvent]:
    """The log after `after` once it shows everything committed before this call.

    PostgreSQL's feed holds an event back while any older transaction of the cluster is open
    (another test's included). A marker connection saved now shows only once everything
    committed before it does: waiting for it is waiting for the log to catch up. Marker
    events are left out of the answer.
    """
    marker = ProviderConnection(user_id=MARKER_USER, provider_id=uuid4(), provider_slug="marker")
    await store.save(marker)
    deadline = time.monotonic() + 30
    while True:
        events = await read_all(store, after)
        if any(e.event.connection_id == marker.id for e in events):
            return [e for e in events if e.event.user_id != MARKER_USER]
        assert time.monotonic() < deadline, "the event log did not catch up in 30 s"
        await asyncio.sleep(0.02)


async def feed_shows(store: ConnectionStore, *connection_ids: UUID) -> None:
    """Wait until the feed shows every event of these connections (see `settled_log`), without
    writing a marker: webhook tests fan out whatever the feed holds."""
    wanted = {e.id for c in connection_ids for e in await store.connection_events(c, limit=1000)}
    deadline = time.monotonic() + 60
    while not wanted <= {e.id for e in await read_all(store)}:
        assert time.monotonic() < deadline, "the event log did not catch up in 60 s"
        await asyncio.sleep(0.02)


def refresh_failed(clock: FakeClock, connection_id: UUID) -> ConnectionEvent:
    """A connection.refresh_failed to append (the store takes user and provider from the row)."""
    return ConnectionEvent(
        type=EventType.REFRESH_FAILED,
        connection_id=connection_id,
        user_id=uuid4(),
        provider_slug="ignored",
        occurred_at=clock.now,
        reason="provider unavailable",
    )
