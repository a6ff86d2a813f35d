"""One store engine: every repository method written once, over a dialect's primitives.

A dialect (postgres.py, sqlite.py) supplies its name (which picks its named queries), the
driver calls, the conversion of values to parameters and of columns to values, transactions
and migrations.
A primitive returns the dialect's call itself, not a coroutine of its own: the engine adds
no await to a call.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from linkvault.domain import Clock, ProviderConnection, uuid7
from linkvault.errors import NotFoundError, SchemaError, StaleConnectionError
from linkvault.events import ConnectionEvent, EventType, StoredEvent
from linkvault.stores import queries
from linkvault.stores.common import (
    FIRST_PAGE,
    LAPSED_KEPT,
    MAX_CIRCUIT_ERROR,
    AttemptStart,
    CircuitCount,
    Claim,
    ClaimRequest,
    ClaimResult,
    ClosingOnExit,
    ConnectionFilter,
    ConnectionHealth,
    EventRow,
    Page,
    PendingAuthorization,
    RefreshBacklog,
    Refreshed,
    check_attempts,
    check_limit,
    check_max_attempts,
    check_minutes,
    check_owner,
    check_sequence,
    created_event,
    event_rows,
    list_query,
    lost_attempt,
    parse_cursor,
    stored_event,
)
from linkvault.stores.migrations import latest_version
from linkvault.webhooks import (
    Delivery,
    DeliveryAttempt,
    DeliveryClaim,
    DeliveryResult,
    DeliveryStatus,
    WebhookEndpoint,
    event_matches,
    safe_error,
)


class Row(Protocol):
    """A result row of either driver: its columns by position."""

    def __getitem__(self, index: int, /) -> Any: ...


Statement = tuple[str, tuple[Any, ...]]


class StoreEngine(ClosingOnExit):
    """The repository methods over a dialect: subclasses supply the primitives below."""

    _dialect: str
    # The dialect's named queries (sql/<dialect>.sql), loaded once for each dialect class.
    _q: Mapping[str, str]
    _clock: Clock

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._q = queries.load(cls._dialect)

    # --- what a dialect supplies ---------------------------------------------

    def _fetch(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Sequence[Row]]:
        raise NotImplementedError

    def _fetchrow(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Row | None]:
        raise NotImplementedError

    def _fetchval(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Any]:
        """The first column of the first row, or None when there is no row."""
        raise NotImplementedError

    def _execute(self, operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[None]:
        raise NotImplementedError

    def _execute_all(self, operation: str, statements: Sequence[Statement]) -> Awaitable[None]:
        """Run statements in order on one connection."""
        raise NotImplementedError

    def _claim_rows(
        self, lost: Statement, due: Callable[[int], Statement], limit: int
    ) -> Awaitable[Sequence[Row]]:
        """Rows of `lost`, then of `due(limit - found)` while fewer than `limit` were found."""
        raise NotImplementedError

    def _fence_rows(
        self, owner: str, now: Any, until: Any, attempts: Sequence[AttemptStart]
    ) -> Awaitable[Sequence[Row]]:
        """Run the named fence `begin_attempts` for each of `attempts` (as parameters: the
        owner, the time now and the new lease end) and commit once; the rows of those fenced,
        (connection id, attempt's first time)."""
        raise NotImplementedError

    def _logged(
        self, operation: str, name: str, args: tuple[Any, ...], events: Sequence[EventRow]
    ) -> Awaitable[Any]:
        """Run the named change and append `events` to the log atomically with it.

        The change returns (value, last_seq, connection_id, user_id, provider_slug,
        from_status) and has already numbered the events (its last argument is how many); the
        events take their connection, user, provider and (where unset) from status from that
        row. Returns the value, or None when the change touched no row (and no event is kept).
        """
        raise NotImplementedError

    def _row_to_connection(self, row: Row) -> ProviderConnection:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A unit of work yielding a store of the same dialect bound to it."""
        raise NotImplementedError

    def _key(self, value: UUID) -> Any:
        """A UUID as a parameter."""
        raise NotImplementedError

    def _time(self, value: datetime | None) -> Any:
        """A timestamp (or None) as a parameter."""
        raise NotImplementedError

    def _list(self, values: Sequence[Any]) -> Any:
        """A list of keys (see `_key`), names or byte strings as one parameter."""
        raise NotImplementedError

    def _uuid(self, value: Any) -> UUID:
        """A UUID column."""
        raise NotImplementedError

    def _at(self, value: Any) -> datetime:
        """A non-null timestamp column."""
        raise NotImplementedError

    # --- shared plumbing -----------------------------------------------------

    def _maybe_at(self, value: Any) -> datetime | None:
        return None if value is None else self._at(value)

    def _maybe_key(self, value: UUID | None) -> Any:
        return None if value is None else self._key(value)

    def _connection_params(self, c: ProviderConnection) -> tuple[Any, ...]:
        """The entity's column values in the order of the named queries (version excluded)."""
        creds, key, time = c.credentials, self._key, self._time
        return (
            key(c.id),
            key(c.user_id),
            key(c.provider_id),
            c.provider_slug,
            c.alias,
            c.status.value,
            c.status_reason,
            None if creds is None else creds.credential_type.value,
            None if creds is None else creds.encrypted_data,
            None if creds is None else time(creds.expires_at),
            time(c.connected_at),
            time(c.last_sync_at),
            time(c.created_at),
            time(c.updated_at),
        )

    def _claim(self, row: Row) -> Claim:
        at = self._maybe_at(row[16])
        return Claim(self._row_to_connection(row), int(row[15]), lost_attempt(at, row[17], row[18]))

    # The named query of the operation of the same name, with its positional arguments.

    def _rows(self, name: str, *args: Any) -> Awaitable[Sequence[Row]]:
        return self._fetch(name, self._q[name], args)

    def _row(self, name: str, *args: Any) -> Awaitable[Row | None]:
        return self._fetchrow(name, self._q[name], args)

    def _value(self, name: str, *args: Any) -> Awaitable[Any]:
        return self._fetchval(name, self._q[name], args)

    async def _many(self, name: str, *args: Any) -> list[ProviderConnection]:
        rows = await self._rows(name, *args)
        to_connection = self._row_to_connection
        return [to_connection(r) for r in rows]

    async def _count(self, name: str, *args: Any) -> int:
        return int(await self._value(name, *args))

    # --- the port ------------------------------------------------------------

    async def find_by_id(self, connection_id: UUID) -> ProviderConnection | None:
        row = await self._row("find_by_id", self._key(connection_id))
        return None if row is None else self._row_to_connection(row)

    async def find_by_user_id(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._many("find_by_user_id", self._key(user_id))

    async def find_by_user_and_provider(
        self, user_id: UUID, provider_id: UUID
    ) -> list[ProviderConnection]:
        key = self._key
        return await self._many("find_by_user_and_provider", key(user_id), key(provider_id))

    async def find_active_by_user(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._many("find_active_by_user", self._key(user_id))

    async def _change(
        self, operation: str, name: str, args: tuple[Any, ...], events: Sequence[ConnectionEvent]
    ) -> Any:
        """A change that numbers `len(events)` events, with the events when there are any."""
        if not events:
            return await self._fetchval(operation, self._q[name], (*args, 0))
        return await self._logged(operation, name, (*args, len(events)), event_rows(events))

    async def save(self, connection: ProviderConnection) -> None:
        params = self._connection_params(connection)
        expected = connection.version
        events = connection.pending_events()
        if expected == 0:
            events = (created_event(connection), *events)
            version = await self._change("save", "insert", params, events)
        else:
            version = await self._change("save", "update", (*params, expected), events)
        if version is None:
            raise StaleConnectionError(connection.id, expected)
        connection.version = version
        connection.events_saved()

    async def delete(self, connection_id: UUID) -> None:
        deleted: EventRow = (
            uuid7(),
            EventType.DELETED.value,
            None,
            None,
            None,
            "{}",
            self._clock(),
        )
        args = (self._key(connection_id), 1)
        if await self._logged("delete", "delete", args, [deleted]) is None:
            raise NotFoundError(connection_id)

    async def find_expiring_soon(self, minutes: int = 30) -> list[ProviderConnection]:
        horizon = self._clock() + timedelta(minutes=check_minutes(minutes))
        return await self._many("find_expiring_soon", self._time(horizon))

    # --- beyond the port -----------------------------------------------------

    async def list_connections(
        self, where: ConnectionFilter | None = None, page: Page = FIRST_PAGE
    ) -> list[ProviderConnection]:
        """One page of connections matching `where`, in id order (one query)."""
        f = where or ConnectionFilter()
        args = (
            self._maybe_key(f.user_id),
            self._maybe_key(f.provider_id),
            f.status.value if f.status else None,
            self._time(f.expiring_before),
            self._maybe_key(page.after),
            page.limit,
            f.needs_user_action,
            check_max_attempts(f.max_attempts),
        )
        rows = await self._fetch("list_connections", self._q[list_query(f)], args)
        return [self._row_to_connection(r) for r in rows]

    async def connection_health(
        self, connection_ids: Sequence[UUID]
    ) -> dict[UUID, ConnectionHealth]:
        """The refresh worker's record of each connection that exists, by id (one query)."""
        if not connection_ids:
            return {}
        ids = self._list([self._key(i) for i in connection_ids])
        ordered = sorted(connection_ids, key=lambda i: i.bytes)
        low, high = self._key(ordered[0]), self._key(ordered[-1])
        rows = await self._rows("connection_health", ids, low, high)
        return {
            (key := self._uuid(r[0])): ConnectionHealth(key, int(r[1]), self._maybe_at(r[2]), r[3])
            for r in rows
        }

    async def claim_due(self, owner: str, request: ClaimRequest) -> list[Claim]:
        """Lease the connections `request` asks for: lost attempts first, then by expiry."""
        now, owner, limit = self._clock(), check_owner(owner), request.limit
        at, until = self._time(now), self._time(now + request.lease)
        max_failures, skip = request.max_failures, self._list(request.paused)
        lost_args = (at, max_failures, limit, owner, until, skip)
        due_query, due_by = self._q["claim_due"], self._time(now + request.horizon)

        def due(remaining: int) -> Statement:
            return due_query, (due_by, at, max_failures, remaining, owner, until, skip)

        rows = await self._claim_rows((self._q["claim_lost"], lost_args), due, limit)
        return [self._claim(r) for r in rows]

    async def claim_connection(
        self, connection_id: UUID, owner: str, *, lease: timedelta
    ) -> Claim | None:
        """Lease one ACTIVE connection now; None when absent, not active, or leased elsewhere."""
        now = self._clock()
        args = (
            self._key(connection_id),
            check_owner(owner),
            self._time(now),
            self._time(now + lease),
        )
        row = await self._row("claim_connection", *args)
        return None if row is None else self._claim(row)

    async def begin_attempts(
        self, owner: str, *, lease: timedelta, attempts: Sequence[AttemptStart]
    ) -> dict[UUID, datetime]:
        """Fence and record refresh requests about to be sent, many in one statement (group
        commit of fences); for each connection still held, when its attempt was first made.

        Each row is fenced on its own terms: the lease is extended and the attempt recorded
        only where `owner` still holds the lease and the row holds the grant it names.
        Returns the first time of each attempt fenced, by connection; the others are left
        out, their rows untouched: send them nothing.
        """
        if not check_attempts(attempts):
            return {}
        now = self._clock()
        # In id order: two statements locking rows in a different order could deadlock.
        ordered = sorted(attempts, key=lambda a: a.connection_id.bytes)
        rows = await self._fence_rows(owner, self._time(now), self._time(now + lease), ordered)
        return {self._uuid(r[0]): self._at(r[1]) for r in rows}

    async def extend_lease(self, connection_id: UUID, owner: str, *, lease: timedelta) -> bool:
        """Heartbeat: extend a lease `owner` still holds; False when it is gone."""
        now = self._clock()
        args = (self._key(connection_id), owner, self._time(now), self._time(now + lease))
        return await self._value("extend_lease", *args) is not None

    async def complete_refresh(self, connection_id: UUID, owner: str, refreshed: Refreshed) -> bool:
        """Store refreshed credentials and close the lease in one statement, with their events.

        False when the row no longer holds the grant they were refreshed from.
        """
        new = refreshed.credentials
        args = (
            self._key(connection_id),
            owner,
            refreshed.started_from,
            new.encrypted_data,
            self._time(new.expires_at),
            self._time(self._clock()),
            self._time(refreshed.next_refresh_at),
        )
        value = await self._change("complete_refresh", "complete_refresh", args, refreshed.events)
        return value is not None

    async def record_lost(self, connection_id: UUID, owner: str, *, how: str, error: str) -> bool:
        """A request whose answer never came: keep its record, hand the row back for a replay."""
        args = (self._key(connection_id), owner, how, error)
        return await self._value("record_lost", *args) is not None

    async def finish_claim(
        self, connection_id: UUID, owner: str, result: ClaimResult
    ) -> int | None:
        """Close a lease `owner` still holds, logging the result's events (one statement);
        the failure count after it, or None if the lease was lost (and no event is kept)."""
        key, next_at = self._key(connection_id), self._time(result.next_attempt_at)
        args = (key, owner, result.succeeded, next_at, result.error)
        value = await self._change("finish_claim", "finish_claim", args, result.events)
        return None if value is None else int(value)

    async def release_claims(self, connection_ids: Sequence[UUID], owner: str) -> None:
        """Hand back leases never started, keeping their schedule."""
        ids = self._list([self._key(i) for i in connection_ids])
        await self._execute("release_claims", self._q["release_claims"], (ids, owner))

    async def refresh_backlog(
        self, horizon: timedelta, *, max_failures: int | None = None
    ) -> RefreshBacklog:
        """Due connections (below `max_failures` if given): all, unleased, and the oldest expiry."""
        now = self._clock()
        args = (self._time(now + horizon), self._time(now), max_failures)
        row = await self._row("refresh_backlog", *args)
        assert row is not None
        return RefreshBacklog(int(row[0]), int(row[1]), self._maybe_at(row[2]))

    async def open_circuits(self) -> dict[str, datetime]:
        """Providers whose circuit is open now, and until when."""
        now = self._time(self._clock())
        rows = await self._rows("open_circuits", now)
        return {r[0]: self._at(r[1]) for r in rows}

    async def circuit_failure(
        self, provider_slug: str, *, window: timedelta, error: str
    ) -> CircuitCount:
        """Count a failure at a provider (failures older than `window` start afresh)."""
        now = self._clock()
        args = (provider_slug, self._time(now), self._time(now - window), error[:MAX_CIRCUIT_ERROR])
        row = await self._row("circuit_failure", *args)
        assert row is not None
        return CircuitCount(int(row[0]), int(row[1]), self._maybe_at(row[2]))

    async def open_circuit(self, provider_slug: str, *, until: datetime, opened: int) -> bool:
        """Open a provider's circuit until `until`, unless another worker just did."""
        args = (provider_slug, self._time(until), opened, self._time(self._clock()))
        return await self._value("open_circuit", *args) is not None

    async def close_circuit(self, provider_slug: str) -> bool:
        """Close a provider's circuit after a success; False when it was not failing."""
        return await self._value("close_circuit", provider_slug) is not None

    async def find_sealed_outside(
        self, prefix: bytes, *, after: UUID | None = None, limit: int = 500
    ) -> list[ProviderConnection]:
        """Connections holding credentials whose blob does not start with `prefix`, in id order."""
        return await self._many(
            "find_sealed_outside", prefix, self._maybe_key(after), check_limit(limit)
        )

    async def count_sealed_outside(self, prefixes: Sequence[bytes]) -> int:
        """How many connections hold credentials starting with none of `prefixes`."""
        return await self._count("count_sealed_outside", self._list(prefixes))

    async def count_states_sealed_with(self, prefix: bytes) -> int:
        """How many unexpired pending authorizations were sealed under the key of `prefix`."""
        return await self._count("count_states_sealed_with", prefix, self._time(self._clock()))

    async def count_sealed_with(self, prefix: bytes) -> int:
        """How many connections hold credentials whose blob starts with `prefix`."""
        return await self._count("count_sealed_with", prefix)

    async def put_state(self, pending: PendingAuthorization) -> None:
        """Keep a pending authorization until its callback (or its expiry)."""
        p = pending
        args = (
            p.state_hash,
            self._key(p.connection_id),
            p.sealed_verifier,
            p.redirect_uri,
            p.return_to,
            self._time(p.created_at),
            self._time(p.expires_at),
            p.renews,
        )
        purge = (self._q["purge_states"], (self._time(p.created_at - LAPSED_KEPT),))
        await self._execute_all("put_state", (purge, (self._q["put_state"], args)))

    async def lapsed_authorizations(self, *, limit: int = 100) -> list[UUID]:
        """PENDING connections whose every authorization expired unanswered."""
        rows = await self._rows(
            "lapsed_authorizations", self._time(self._clock()), check_limit(limit)
        )
        return [self._uuid(r[0]) for r in rows]

    async def take_state(self, state_hash: bytes) -> PendingAuthorization | None:
        """Remove and return the pending authorization with this state hash (single use)."""
        row = await self._row("take_state", state_hash)
        if row is None:
            return None
        connection_id, created, expires = self._uuid(row[0]), self._at(row[4]), self._at(row[5])
        return PendingAuthorization(
            state_hash, connection_id, row[1], row[2], row[3], created, expires, bool(row[6])
        )

    # --- the event log -------------------------------------------------------

    async def append_events(self, connection_id: UUID, events: Sequence[ConnectionEvent]) -> bool:
        """Log events that change nothing else on the connection; False when it is gone."""
        if not events:
            return await self.find_by_id(connection_id) is not None
        args = (self._key(connection_id), len(events))
        return (
            await self._logged("append_events", "append_events", args, event_rows(events))
            is not None
        )

    async def connection_events(
        self, connection_id: UUID, *, after: int = 0, limit: int = 100
    ) -> list[StoredEvent]:
        """One connection's events in order, after its sequence number `after`."""
        args = (self._key(connection_id), check_sequence(after), check_limit(limit))
        return [self._event(r) for r in await self._rows("connection_events", *args)]

    async def read_events(self, after: str | None = None, *, limit: int = 100) -> list[StoredEvent]:
        """The log after the cursor `after` (None: from the start), oldest first.

        Each event's `cursor` continues from it. On PostgreSQL an event shows here once every
        transaction older than its own has ended (in the whole cluster: PostgreSQL cannot
        tell whether one still open will add an earlier event), so a cursor never moves past
        one that commits late; a session left idle inside a transaction holds the log back
        until it ends (`idle_in_transaction_session_timeout` bounds that).
        """
        tx, position = parse_cursor(after)
        rows = await self._rows("events_after", tx, position, check_limit(limit))
        return [self._event(r) for r in rows]

    async def consent_ending(
        self, provider_slug: str, *, consented_by: datetime, limit: int = 100
    ) -> list[tuple[UUID, datetime]]:
        """ACTIVE connections at a provider that consented at or before `consented_by` and were
        not warned of that consent's end yet: (id, connected_at), oldest first."""
        args = (provider_slug, self._time(consented_by), check_limit(limit))
        rows = await self._rows("consent_ending", *args)
        return [(self._uuid(r[0]), self._at(r[1])) for r in rows]

    async def warn_consent(
        self, connection_id: UUID, consented_at: datetime, event: ConnectionEvent
    ) -> bool:
        """Log `event` (connection.consent_expiring) once for the consent given at
        `consented_at`; False when already warned, reconnected since, or no longer ACTIVE."""
        args = (self._key(connection_id), self._time(consented_at), 1)
        return (
            await self._logged("warn_consent", "warn_consent", args, event_rows([event]))
            is not None
        )

    def _event(self, row: Row) -> StoredEvent:
        uuid, at = self._uuid, self._at
        return stored_event(
            row[0], uuid(row[1]), uuid(row[2]), uuid(row[3]), row[4], row[5], row[6],
            row[7], row[8], row[9], row[10], at(row[11]), str(row[12]),
        )  # fmt: skip

    # --- webhooks ------------------------------------------------------------

    async def add_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Keep a new endpoint (enabled); its secret arrives sealed."""
        e, key, time = endpoint, self._key, self._time
        types = self._list(sorted(e.event_types))
        args = (key(e.id), e.url, types, e.sealed_secret, time(e.created_at))
        await self._execute("add_webhook_endpoint", self._q["webhook_insert_endpoint"], args)

    async def webhook_endpoints(self) -> list[WebhookEndpoint]:
        """Every endpoint, oldest first."""
        return [self._endpoint(r) for r in await self._rows("webhook_endpoints")]

    async def webhook_endpoint(self, endpoint_id: UUID) -> WebhookEndpoint | None:
        row = await self._row("webhook_endpoint", self._key(endpoint_id))
        return None if row is None else self._endpoint(row)

    async def delete_webhook_endpoint(self, endpoint_id: UUID) -> bool:
        """Remove an endpoint and its deliveries; False when there was none."""
        return await self._value("webhook_delete_endpoint", self._key(endpoint_id)) is not None

    async def set_webhook_endpoint_enabled(
        self, endpoint_id: UUID, enabled: bool, reason: str | None = None
    ) -> bool:
        """Enable an endpoint, or disable it saying why; False when there is none."""
        args = (self._key(endpoint_id), enabled, safe_error(reason), self._time(self._clock()))
        return await self._value("webhook_set_enabled", *args) is not None

    async def reseal_webhook_secret(self, endpoint_id: UUID, old: bytes, new: bytes) -> bool:
        """Replace an endpoint's sealed secret if it is still `old` (key rotation)."""
        return await self._value("webhook_reseal", self._key(endpoint_id), old, new) is not None

    async def fan_out_events(self, *, limit: int = 100) -> int:
        """Turn up to `limit` new events of the log into deliveries; how many events passed.

        The cursor row is locked, the deliveries inserted and the cursor moved in one
        transaction: with many workers, crashes and restarts, no event is fanned out twice
        or skipped. An endpoint gets the events that occurred since it was added.
        """
        async with self.transaction() as tx:
            moved: int = await tx._fan_out(check_limit(limit))
            return moved

    async def _fan_out(self, limit: int) -> int:
        cursor = await self._value("webhook_lock_cursor")
        events = await self.read_events(cursor, limit=limit)
        if not events:
            return 0
        endpoints = [e for e in await self.webhook_endpoints() if e.enabled]
        key, now = self._key, self._time(self._clock())
        insert = self._q["webhook_insert_delivery"]
        statements: list[Statement] = []
        for stored in events:
            ev = stored.event
            for ep in endpoints:
                if ep.created_at <= ev.occurred_at and event_matches(ep.event_types, ev.type):
                    body = json.dumps(stored.payload(), separators=(",", ":"))
                    args = (key(uuid7()), key(ep.id), key(stored.id), ev.type.value,
                            key(ev.connection_id), stored.sequence, body, now)  # fmt: skip
                    statements.append((insert, args))
        statements.append((self._q["webhook_move_cursor"], (events[-1].cursor,)))
        await self._execute_all("fan_out_events", statements)
        return len(events)

    async def claim_deliveries(
        self, owner: str, *, lease: timedelta, limit: int
    ) -> list[DeliveryClaim]:
        """Lease due deliveries of enabled endpoints, the head of each connection's chain."""
        now = self._clock()
        args = (self._time(now), check_limit(limit), check_owner(owner), self._time(now + lease))
        rows = await self._rows("webhook_claim", *args)
        if not rows:
            return []
        endpoints = {e.id: e for e in await self.webhook_endpoints()}
        claims = [self._delivery(r) for r in rows]
        # An endpoint removed since the claim took its deliveries with it.
        return [
            DeliveryClaim(d, endpoints[d.endpoint_id]) for d in claims if d.endpoint_id in endpoints
        ]

    async def finish_delivery(self, delivery_id: UUID, owner: str, result: DeliveryResult) -> bool:
        """Record an attempt and its result while `owner` holds the lease, in one transaction
        (with a `disable_reason`, the endpoint is disabled too); False when the lease was lost."""
        async with self.transaction() as tx:
            done: bool = await tx._finish_delivery(delivery_id, owner, result)
            return done

    async def _finish_delivery(self, delivery_id: UUID, owner: str, result: DeliveryResult) -> bool:
        r, error = result, safe_error(result.error)
        key, time, now = self._key, self._time, self._clock()
        args = (key(delivery_id), owner, r.status.value, r.attempts, time(r.next_attempt_at),
                r.status_code, error, time(now))  # fmt: skip
        endpoint = await self._value("webhook_finish", *args)
        if endpoint is None:
            return False
        attempt = (key(uuid7()), key(delivery_id), time(now), r.status_code, error)
        await self._execute("finish_delivery", self._q["webhook_insert_attempt"], attempt)
        if r.disable_reason is not None:
            await self.set_webhook_endpoint_enabled(self._uuid(endpoint), False, r.disable_reason)
        return True

    async def webhook_deliveries(self, endpoint_id: UUID, *, limit: int = 100) -> list[Delivery]:
        """An endpoint's deliveries, newest first."""
        args = (self._key(endpoint_id), check_limit(limit))
        return [self._delivery(r) for r in await self._rows("webhook_deliveries", *args)]

    async def webhook_delivery(self, delivery_id: UUID) -> Delivery | None:
        row = await self._row("webhook_delivery", self._key(delivery_id))
        return None if row is None else self._delivery(row)

    async def delivery_attempts(self, delivery_ids: Sequence[UUID]) -> list[DeliveryAttempt]:
        """The attempts of these deliveries, oldest first."""
        ids = self._list([self._key(i) for i in delivery_ids])
        rows = await self._rows("webhook_attempts", ids)
        uuid, at = self._uuid, self._at
        return [DeliveryAttempt(uuid(r[0]), uuid(r[1]), at(r[2]), r[3], r[4]) for r in rows]

    async def replay_delivery(self, endpoint_id: UUID, delivery_id: UUID) -> bool:
        """Make a delivery due now, from the start of the retry schedule; False if absent."""
        args = (self._key(endpoint_id), self._key(delivery_id), self._time(self._clock()))
        return await self._value("webhook_replay", *args) is not None

    def _endpoint(self, row: Row) -> WebhookEndpoint:
        types = row[2]
        names = json.loads(types) if isinstance(types, str) else types
        return WebhookEndpoint(
            self._uuid(row[0]), row[1], frozenset(names), bytes(row[3]), bool(row[4]), row[5],
            self._at(row[6]), self._at(row[7]),
        )  # fmt: skip

    def _delivery(self, row: Row) -> Delivery:
        uuid, at, maybe = self._uuid, self._at, self._maybe_at
        return Delivery(
            uuid(row[0]), uuid(row[1]), uuid(row[2]), row[3], uuid(row[4]), int(row[5]), row[6],
            DeliveryStatus(row[7]), int(row[8]), maybe(row[9]), row[10], row[11], at(row[12]),
            maybe(row[13]),
        )  # fmt: skip

    # --- schema --------------------------------------------------------------

    async def schema_version(self) -> int:
        raise NotImplementedError

    async def check_schema(self) -> None:
        """Raise SchemaError unless every migration of this linkvault has been applied."""
        current, needed = await self.schema_version(), latest_version(self._dialect)
        if current < needed:
            raise SchemaError(
                f"the database schema is at version {current}, this linkvault needs {needed}: "
                "run `linkvault migrate`"
            )
