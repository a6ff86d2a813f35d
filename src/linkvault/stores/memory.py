"""In-memory store, shipped for users' unit tests; it passes the same conformance suite."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID

from linkvault import webhooks
from linkvault.domain import Clock, ConnectionStatus, ProviderConnection, utc_now, uuid7
from linkvault.errors import ConstraintViolationError, NotFoundError, StaleConnectionError
from linkvault.events import ConnectionEvent, StoredEvent
from linkvault.stores import common

T = TypeVar("T")


def _copy(connection: ProviderConnection) -> ProviderConnection:
    # Credentials are frozen, every other field immutable: a shallow copy is a full copy.
    return dataclasses.replace(connection)


@dataclasses.dataclass(slots=True)
class _Schedule:
    owner: str | None = None
    until: datetime | None = None
    failures: int = 0
    next_at: datetime | None = None
    error: str | None = None
    attempt_at: datetime | None = None
    fingerprint: str | None = None
    lost_how: str | None = None

    def leased_at(self, now: datetime) -> bool:
        return self.until is not None and self.until > now

    def clear_attempt(self) -> None:
        self.attempt_at = self.fingerprint = self.lost_how = None

    def claim(self, c: ProviderConnection, owner: str, until: datetime) -> common.Claim:
        self.owner, self.until = owner, until
        return common.Claim(
            _copy(c),
            self.failures,
            common.lost_attempt(self.attempt_at, self.fingerprint, self.lost_how),
        )


@dataclasses.dataclass(slots=True)
class _Webhooks:
    endpoints: dict[UUID, webhooks.WebhookEndpoint] = dataclasses.field(default_factory=dict)
    deliveries: dict[UUID, webhooks.Delivery] = dataclasses.field(default_factory=dict)
    leases: dict[UUID, tuple[str, datetime]] = dataclasses.field(default_factory=dict)
    attempts: list[webhooks.DeliveryAttempt] = dataclasses.field(default_factory=list)
    cursor: str | None = None


@dataclasses.dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened: int = 0
    open_until: datetime | None = None
    error: str | None = None
    updated_at: datetime | None = None


def _due_expiry(c: ProviderConnection, horizon: datetime) -> datetime | None:
    """The expiry of an ACTIVE refreshable connection due by `horizon`, else None."""
    creds = c.credentials
    if (
        c.status is ConnectionStatus.ACTIVE
        and creds is not None
        and creds.supports_refresh
        and creds.expires_at is not None
        and creds.expires_at <= horizon
    ):
        return creds.expires_at
    return None


def _ordered(rows: list[ProviderConnection]) -> list[ProviderConnection]:
    return sorted(rows, key=lambda c: (c.created_at, c.id))


class InMemoryConnectionRepository(common.ClosingOnExit):
    """The repository port in a dict: same semantics as the database stores, no I/O."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._rows: dict[UUID, ProviderConnection] = {}
        self._schedules: dict[UUID, _Schedule] = {}
        self._states: dict[bytes, common.PendingAuthorization] = {}
        self._circuits: dict[str, _Circuit] = {}
        self._clock = clock
        self._lock = asyncio.Lock()
        self._in_transaction = False
        # The event log, and each connection's last event sequence (kept after a delete).
        self._log: list[StoredEvent] = []
        self._seqs: dict[UUID, int] = {}
        self._webhooks = _Webhooks()
        # The consent (its connected_at) whose end each connection was warned of.
        self._warned: dict[UUID, datetime] = {}

    async def close(self) -> None:
        return None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryConnectionRepository]:
        """A unit of work: changes through the yielded repository apply together or not at all."""
        if self._in_transaction:
            snapshot = dict(self._rows)
            schedules = {k: dataclasses.replace(v) for k, v in self._schedules.items()}
            states = dict(self._states)
            log, seqs, warned = list(self._log), dict(self._seqs), dict(self._warned)
            try:
                yield self
            except BaseException:
                self._rows = snapshot
                self._schedules = schedules
                self._states = states
                self._log, self._seqs, self._warned = log, seqs, warned
                raise
            return
        async with self._lock:
            staged = InMemoryConnectionRepository(clock=self._clock)
            staged._rows = {k: _copy(v) for k, v in self._rows.items()}
            staged._schedules = {k: dataclasses.replace(v) for k, v in self._schedules.items()}
            staged._states = dict(self._states)
            staged._circuits = self._circuits
            staged._webhooks = self._webhooks
            staged._log, staged._seqs = list(self._log), dict(self._seqs)
            staged._warned = dict(self._warned)
            staged._in_transaction = True
            yield staged
            self._rows = staged._rows
            self._schedules = staged._schedules
            self._states = staged._states
            self._log, self._seqs = staged._log, staged._seqs
            self._warned = staged._warned

    async def _exclusive(self, work: Callable[[], T]) -> T:
        """Run `work` holding the store's lock (a transaction already holds it)."""
        if self._in_transaction:
            return work()
        async with self._lock:
            return work()

    async def _read(self, pick: Callable[[ProviderConnection], bool]) -> list[ProviderConnection]:
        return await self._exclusive(
            lambda: _ordered([_copy(c) for c in self._rows.values() if pick(c)])
        )

    async def find_by_id(self, connection_id: UUID) -> ProviderConnection | None:
        found = await self._read(lambda c: c.id == connection_id)
        return found[0] if found else None

    async def find_by_user_id(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._read(lambda c: c.user_id == user_id)

    async def find_by_user_and_provider(
        self, user_id: UUID, provider_id: UUID
    ) -> list[ProviderConnection]:
        return await self._read(lambda c: c.user_id == user_id and c.provider_id == provider_id)

    async def find_active_by_user(self, user_id: UUID) -> list[ProviderConnection]:
        return await self._read(
            lambda c: c.user_id == user_id and c.status is ConnectionStatus.ACTIVE
        )

    async def find_expiring_soon(self, minutes: int = 30) -> list[ProviderConnection]:
        horizon = self._clock() + timedelta(minutes=common.check_minutes(minutes))

        def due(c: ProviderConnection) -> bool:
            return (
                c.status is ConnectionStatus.ACTIVE
                and c.credentials is not None
                and c.credentials.expires_at is not None
                and c.credentials.expires_at <= horizon
            )

        rows = await self._read(due)
        return sorted(rows, key=lambda c: (c.credentials.expires_at, c.id))  # type: ignore[union-attr]

    async def save(self, connection: ProviderConnection) -> None:
        await self._exclusive(lambda: self._save(connection))

    def _save(self, connection: ProviderConnection) -> None:
        stored = self._rows.get(connection.id)
        expected = connection.version
        if (expected == 0 and stored is not None) or (
            expected > 0 and (stored is None or stored.version != expected)
        ):
            raise StaleConnectionError(connection.id, expected)
        copy = _copy(connection)
        copy.version = expected + 1
        old_blob = stored.credentials.encrypted_data if stored and stored.credentials else None
        new_blob = connection.credentials.encrypted_data if connection.credentials else None
        schedule = self._schedules.setdefault(connection.id, _Schedule())
        if old_blob != new_blob:
            schedule.failures, schedule.next_at, schedule.error = 0, None, None
            schedule.clear_attempt()
        self._rows[connection.id] = copy
        events = connection.pending_events()
        self._append(copy, (common.created_event(copy), *events) if expected == 0 else events)
        connection.version = expected + 1
        connection.events_saved()

    def _append(
        self, row: ProviderConnection, events: Sequence[ConnectionEvent], was: str | None = None
    ) -> None:
        """Log events about `row` (its user and provider; `was`: an unset from status)."""
        seq = self._seqs.get(row.id, 0)
        for eid, kind, from_status, to_status, reason, data, at in common.event_rows(events):
            seq += 1
            position = len(self._log) + 1
            self._log.append(
                common.stored_event(
                    position, eid, row.id, row.user_id, row.provider_slug, seq, kind,
                    from_status or was, to_status, reason, data, at, "0",
                )
            )  # fmt: skip
        self._seqs[row.id] = seq

    async def delete(self, connection_id: UUID) -> None:
        await self._exclusive(lambda: self._delete(connection_id))

    def _delete(self, connection_id: UUID) -> None:
        row = self._rows.pop(connection_id, None)
        if row is None:
            raise NotFoundError(connection_id)
        gone = common.deleted_event(row.id, row.user_id, row.provider_slug, self._clock())
        self._append(row, [gone], was=row.status.value)
        self._schedules.pop(connection_id, None)
        for key in [k for k, v in self._states.items() if v.connection_id == connection_id]:
            del self._states[key]

    async def list_connections(
        self, where: common.ConnectionFilter | None = None, page: common.Page = common.FIRST_PAGE
    ) -> list[ProviderConnection]:
        """One page of the connections matching `where`, in id order."""
        f, after = where or common.ConnectionFilter(), page.after
        attempts = common.check_max_attempts(f.max_attempts)

        def needs_user(c: ProviderConnection) -> bool:
            failures = self._schedules.get(c.id, _Schedule()).failures
            return c.status in common.USER_ACTION_STATUSES or (
                c.status is ConnectionStatus.ACTIVE and failures >= attempts
            )

        def pick(c: ProviderConnection) -> bool:
            expiry = c.credentials.expires_at if c.credentials else None
            return (
                (f.user_id is None or c.user_id == f.user_id)
                and (f.provider_id is None or c.provider_id == f.provider_id)
                and (f.status is None or c.status is f.status)
                and (
                    f.expiring_before is None
                    or (
                        c.status is ConnectionStatus.ACTIVE
                        and expiry is not None
                        and expiry <= f.expiring_before
                    )
                )
                and (after is None or c.id.bytes > after.bytes)
                and (f.needs_user_action is None or needs_user(c) == f.needs_user_action)
            )

        rows = await self._read(pick)
        return sorted(rows, key=lambda c: c.id.bytes)[: page.limit]

    async def connection_health(
        self, connection_ids: Sequence[UUID]
    ) -> dict[UUID, common.ConnectionHealth]:
        """The refresh worker's record of each connection that exists, by id."""
        wanted = set(connection_ids)
        async with self._lock:
            found = {}
            for i in wanted & self._rows.keys():
                s = self._schedules.get(i, _Schedule())
                found[i] = common.ConnectionHealth(i, s.failures, s.next_at, s.error)
            return found

    async def claim_due(self, owner: str, request: common.ClaimRequest) -> list[common.Claim]:
        """Lease the connections `request` asks for: lost attempts first, then by expiry."""
        common.check_owner(owner)
        limit, skip = request.limit, set(request.paused)
        async with self._lock:
            now = self._clock()
            lost, due = [], []
            for c in self._rows.values():
                s = self._schedules.setdefault(c.id, _Schedule())
                if (
                    s.leased_at(now)
                    or s.failures >= request.max_failures
                    or c.provider_slug in skip
                    or c.status is not ConnectionStatus.ACTIVE
                ):
                    continue
                expiry = _due_expiry(c, now + request.horizon)
                if s.attempt_at is not None and s.lost_how is not None:
                    lost.append((s.attempt_at, c))
                elif expiry is not None and (s.next_at is None or s.next_at <= now):
                    due.append((expiry, c))
            lost.sort(key=lambda pair: pair[0])
            due.sort(key=lambda pair: pair[0])
            picked = [c for _, c in lost[:limit]]
            picked += [c for _, c in due[: limit - len(picked)]]
            until = now + request.lease
            return [self._schedules[c.id].claim(c, owner, until) for c in picked]

    async def claim_connection(
        self, connection_id: UUID, owner: str, *, lease: timedelta
    ) -> common.Claim | None:
        """Lease one ACTIVE connection now; None when absent, not active, or leased elsewhere."""
        common.check_owner(owner)
        async with self._lock:
            now = self._clock()
            c = self._rows.get(connection_id)
            if c is None or c.status is not ConnectionStatus.ACTIVE:
                return None
            s = self._schedules.setdefault(connection_id, _Schedule())
            if s.leased_at(now):
                return None
            return s.claim(c, owner, now + lease)

    def _held(self, connection_id: UUID, owner: str) -> _Schedule | None:
        s = self._schedules.get(connection_id)
        if s is None or s.owner != owner or connection_id not in self._rows:
            return None
        return s

    async def begin_attempts(
        self, owner: str, *, lease: timedelta, attempts: Sequence[common.AttemptStart]
    ) -> dict[UUID, datetime]:
        """Fence and record refresh requests about to be sent; the first time of each one fenced.

        A connection missing from the answer: its lease is gone, or its grant changed: send
        nothing for it."""
        common.check_attempts(attempts)
        fenced: dict[UUID, datetime] = {}
        async with self._lock:
            now = self._clock()
            for a in attempts:
                s = self._held(a.connection_id, owner)
                c = self._rows.get(a.connection_id)
                if (
                    s is None
                    or c is None
                    or not s.leased_at(now)
                    or c.status is not ConnectionStatus.ACTIVE
                    or c.credentials is None
                    or c.credentials.encrypted_data != a.credentials
                ):
                    continue
                s.until = now + lease
                if s.fingerprint != a.fingerprint or s.attempt_at is None:
                    s.attempt_at = now
                s.fingerprint = a.fingerprint
                fenced[a.connection_id] = s.attempt_at
        return fenced

    async def extend_lease(self, connection_id: UUID, owner: str, *, lease: timedelta) -> bool:
        """Heartbeat: extend a lease `owner` still holds; False when it is gone."""
        async with self._lock:
            now = self._clock()
            s = self._held(connection_id, owner)
            if s is None or not s.leased_at(now):
                return False
            s.until = now + lease
            return True

    async def complete_refresh(
        self, connection_id: UUID, owner: str, refreshed: common.Refreshed
    ) -> bool:
        """Store refreshed credentials and close the lease in one step, with their events;
        False when the row no longer holds the grant they were refreshed from."""
        async with self._lock:
            c = self._rows.get(connection_id)
            if (
                c is None
                or c.status is not ConnectionStatus.ACTIVE
                or c.credentials is None
                or c.credentials.encrypted_data != refreshed.started_from
            ):
                return False
            copy = _copy(c)
            copy.update_credentials(refreshed.credentials, now=self._clock())
            copy.version = c.version + 1
            self._rows[connection_id] = copy
            s = self._schedules.setdefault(connection_id, _Schedule())
            if s.owner == owner:
                s.owner, s.until = None, None
            s.failures, s.next_at, s.error = 0, refreshed.next_refresh_at, None
            s.clear_attempt()
            self._append(copy, refreshed.events)
            return True

    async def record_lost(self, connection_id: UUID, owner: str, *, how: str, error: str) -> bool:
        """A request whose answer never came: keep its record, hand the row back for a replay."""
        async with self._lock:
            s = self._held(connection_id, owner)
            if s is None or s.attempt_at is None:
                return False
            s.owner, s.until, s.next_at = None, None, None
            s.lost_how, s.error = how, error
            return True

    async def finish_claim(
        self, connection_id: UUID, owner: str, result: common.ClaimResult
    ) -> int | None:
        """Close a lease `owner` still holds, logging the result's events; the failure count
        after it, or None if the lease was lost (and no event is kept)."""
        async with self._lock:
            s = self._held(connection_id, owner)
            if s is None:
                return None
            s.owner, s.until = None, None
            s.failures = 0 if result.succeeded else s.failures + 1
            s.next_at, s.error = result.next_attempt_at, result.error
            s.clear_attempt()
            self._append(self._rows[connection_id], result.events)
            return s.failures

    # --- the event log -------------------------------------------------------

    async def append_events(self, connection_id: UUID, events: Sequence[ConnectionEvent]) -> bool:
        """Log events that change nothing else on the connection; False when it is gone."""
        return await self._exclusive(lambda: self._append_to(connection_id, events))

    def _append_to(self, connection_id: UUID, events: Sequence[ConnectionEvent]) -> bool:
        row = self._rows.get(connection_id)
        if row is not None:
            self._append(row, events)
        return row is not None

    async def consent_ending(
        self, provider_slug: str, *, consented_by: datetime, limit: int = 100
    ) -> list[tuple[UUID, datetime]]:
        """ACTIVE connections at a provider that consented at or before `consented_by` and were
        not warned of that consent's end yet: (id, connected_at), oldest first."""
        limit = common.check_limit(limit)
        async with self._lock:
            found = [
                (c.connected_at, c.id)
                for c in self._rows.values()
                if c.provider_slug == provider_slug
                and c.status is ConnectionStatus.ACTIVE
                and c.connected_at is not None
                and c.connected_at <= consented_by
                and self._warned.get(c.id) != c.connected_at
            ]
        return [(cid, at) for at, cid in sorted(found)[:limit]]

    async def warn_consent(
        self, connection_id: UUID, consented_at: datetime, event: ConnectionEvent
    ) -> bool:
        """Log `event` (connection.consent_expiring) once for the consent given at
        `consented_at`; False when already warned, reconnected since, or no longer ACTIVE."""
        async with self._lock:
            c = self._rows.get(connection_id)
            if (
                c is None
                or c.status is not ConnectionStatus.ACTIVE
                or c.connected_at != consented_at
                or self._warned.get(connection_id) == consented_at
            ):
                return False
            self._warned[connection_id] = consented_at
            self._append(c, [event])
            return True

    async def connection_events(
        self, connection_id: UUID, *, after: int = 0, limit: int = 100
    ) -> list[StoredEvent]:
        """One connection's events in order, after its sequence number `after`."""
        after, limit = common.check_sequence(after), common.check_limit(limit)
        found = [
            e for e in self._log if e.event.connection_id == connection_id and e.sequence > after
        ]
        return found[:limit]

    async def read_events(self, after: str | None = None, *, limit: int = 100) -> list[StoredEvent]:
        """The log after the cursor `after` (None: from the start), oldest first."""
        _, position = common.parse_cursor(after)
        return self._log[position : position + common.check_limit(limit)]

    # --- webhooks ------------------------------------------------------------

    async def add_webhook_endpoint(self, endpoint: webhooks.WebhookEndpoint) -> None:
        """Keep a new endpoint (enabled); its secret arrives sealed."""
        if endpoint.id in self._webhooks.endpoints:
            raise ConstraintViolationError("add_webhook_endpoint: the endpoint id is taken")
        self._webhooks.endpoints[endpoint.id] = dataclasses.replace(
            endpoint, enabled=True, disabled_reason=None, updated_at=endpoint.created_at
        )

    async def webhook_endpoints(self) -> list[webhooks.WebhookEndpoint]:
        """Every endpoint, oldest first."""
        return sorted(self._webhooks.endpoints.values(), key=lambda e: (e.created_at, e.id))

    async def webhook_endpoint(self, endpoint_id: UUID) -> webhooks.WebhookEndpoint | None:
        return self._webhooks.endpoints.get(endpoint_id)

    async def delete_webhook_endpoint(self, endpoint_id: UUID) -> bool:
        """Remove an endpoint and its deliveries; False when there was none."""
        w = self._webhooks
        if w.endpoints.pop(endpoint_id, None) is None:
            return False
        gone = {d.id for d in w.deliveries.values() if d.endpoint_id == endpoint_id}
        w.deliveries = {k: v for k, v in w.deliveries.items() if k not in gone}
        w.attempts = [a for a in w.attempts if a.delivery_id not in gone]
        return True

    async def set_webhook_endpoint_enabled(
        self, endpoint_id: UUID, enabled: bool, reason: str | None = None
    ) -> bool:
        """Enable an endpoint, or disable it saying why; False when there is none."""
        e = self._webhooks.endpoints.get(endpoint_id)
        if e is None:
            return False
        self._webhooks.endpoints[endpoint_id] = dataclasses.replace(
            e,
            enabled=enabled,
            disabled_reason=webhooks.safe_error(reason),
            updated_at=self._clock(),
        )
        return True

    async def reseal_webhook_secret(self, endpoint_id: UUID, old: bytes, new: bytes) -> bool:
        """Replace an endpoint's sealed secret if it is still `old` (key rotation)."""
        e = self._webhooks.endpoints.get(endpoint_id)
        if e is None or e.sealed_secret != old:
            return False
        self._webhooks.endpoints[endpoint_id] = dataclasses.replace(e, sealed_secret=new)
        return True

    async def fan_out_events(self, *, limit: int = 100) -> int:
        """Turn up to `limit` new events of the log into deliveries; how many events passed."""
        limit = common.check_limit(limit)
        if self._in_transaction:
            return await self._fan_out(limit)
        async with self._lock:
            return await self._fan_out(limit)

    async def _fan_out(self, limit: int) -> int:
        w = self._webhooks
        events = await self.read_events(w.cursor, limit=limit)
        now = self._clock()
        endpoints = [e for e in await self.webhook_endpoints() if e.enabled]
        taken = {(d.endpoint_id, d.event_id) for d in w.deliveries.values()}
        for stored in events:
            ev = stored.event
            for ep in endpoints:
                if (ep.id, stored.id) in taken or ep.created_at > ev.occurred_at:
                    continue
                if webhooks.event_matches(ep.event_types, ev.type):
                    body = json.dumps(stored.payload(), separators=(",", ":"))
                    d = webhooks.Delivery(
                        uuid7(), ep.id, stored.id, ev.type.value, ev.connection_id,
                        stored.sequence, body, webhooks.DeliveryStatus.PENDING, 0, now, None,
                        None, now, None,
                    )  # fmt: skip
                    w.deliveries[d.id] = d
        if events:
            w.cursor = events[-1].cursor
        return len(events)

    async def claim_deliveries(
        self, owner: str, *, lease: timedelta, limit: int
    ) -> list[webhooks.DeliveryClaim]:
        """Lease due deliveries of enabled endpoints, the head of each connection's chain."""
        owner, limit, now = common.check_owner(owner), common.check_limit(limit), self._clock()
        w = self._webhooks
        pending = [d for d in w.deliveries.values() if d.status is webhooks.DeliveryStatus.PENDING]
        heads: dict[tuple[UUID, UUID], webhooks.Delivery] = {}
        for d in pending:
            chain = (d.endpoint_id, d.connection_id)
            if chain not in heads or d.sequence < heads[chain].sequence:
                heads[chain] = d
        due = [
            d
            for d in heads.values()
            if w.endpoints[d.endpoint_id].enabled
            and d.next_attempt_at is not None
            and d.next_attempt_at <= now
            and (d.id not in w.leases or w.leases[d.id][1] <= now)
        ]
        due.sort(key=lambda d: (d.next_attempt_at or now, d.sequence))
        claims = []
        for d in due[:limit]:
            w.leases[d.id] = (owner, now + lease)
            claims.append(webhooks.DeliveryClaim(d, w.endpoints[d.endpoint_id]))
        return claims

    async def finish_delivery(
        self, delivery_id: UUID, owner: str, result: webhooks.DeliveryResult
    ) -> bool:
        """Record an attempt and its result while `owner` holds the lease."""
        w, now, r = self._webhooks, self._clock(), result
        d = w.deliveries.get(delivery_id)
        if d is None or w.leases.get(delivery_id, ("", now))[0] != owner:
            return False
        del w.leases[delivery_id]
        error = webhooks.safe_error(r.error)
        w.deliveries[delivery_id] = dataclasses.replace(
            d,
            status=r.status,
            attempts=r.attempts,
            next_attempt_at=r.next_attempt_at,
            last_status_code=r.status_code,
            last_error=error,
            delivered_at=now if r.status is webhooks.DeliveryStatus.DELIVERED else d.delivered_at,
        )
        w.attempts.append(webhooks.DeliveryAttempt(uuid7(), delivery_id, now, r.status_code, error))
        if r.disable_reason is not None:
            await self.set_webhook_endpoint_enabled(d.endpoint_id, False, r.disable_reason)
        return True

    async def webhook_deliveries(
        self, endpoint_id: UUID, *, limit: int = 100
    ) -> list[webhooks.Delivery]:
        """An endpoint's deliveries, newest first."""
        found = [d for d in self._webhooks.deliveries.values() if d.endpoint_id == endpoint_id]
        return sorted(found, key=lambda d: d.id, reverse=True)[: common.check_limit(limit)]

    async def webhook_delivery(self, delivery_id: UUID) -> webhooks.Delivery | None:
        return self._webhooks.deliveries.get(delivery_id)

    async def delivery_attempts(
        self, delivery_ids: Sequence[UUID]
    ) -> list[webhooks.DeliveryAttempt]:
        """The attempts of these deliveries, oldest first."""
        wanted = set(delivery_ids)
        found = [a for a in self._webhooks.attempts if a.delivery_id in wanted]
        return sorted(found, key=lambda a: (a.attempted_at, a.id))

    async def replay_delivery(self, endpoint_id: UUID, delivery_id: UUID) -> bool:
        """Make a delivery due now, from the start of the retry schedule; False if absent."""
        w = self._webhooks
        d = w.deliveries.get(delivery_id)
        if d is None or d.endpoint_id != endpoint_id:
            return False
        w.leases.pop(delivery_id, None)
        w.deliveries[delivery_id] = dataclasses.replace(
            d, status=webhooks.DeliveryStatus.PENDING, attempts=0, next_attempt_at=self._clock()
        )
        return True

    async def release_claims(self, connection_ids: Sequence[UUID], owner: str) -> None:
        """Hand back leases never started, keeping their schedule."""
        async with self._lock:
            for connection_id in connection_ids:
                s = self._schedules.get(connection_id)
                if s is not None and s.owner == owner:
                    s.owner, s.until = None, None

    async def refresh_backlog(
        self, horizon: timedelta, *, max_failures: int | None = None
    ) -> common.RefreshBacklog:
        """Due connections (below `max_failures` if given): all, unleased, and the oldest expiry."""
        async with self._lock:
            now = self._clock()
            due, unclaimed = 0, 0
            expiries = []
            for c in self._rows.values():
                s = self._schedules.get(c.id, _Schedule())
                expiry = _due_expiry(c, now + horizon)
                if c.status is not ConnectionStatus.ACTIVE or (
                    max_failures is not None and s.failures >= max_failures
                ):
                    continue
                scheduled = s.next_at is None or s.next_at <= now or s.failures > 0
                if s.attempt_at is None and (expiry is None or not scheduled):
                    continue
                due += 1
                if s.leased_at(now):
                    continue
                unclaimed += 1
                if c.credentials is not None and c.credentials.expires_at is not None:
                    expiries.append(c.credentials.expires_at)
            return common.RefreshBacklog(due, unclaimed, min(expiries) if expiries else None)

    async def open_circuits(self) -> dict[str, datetime]:
        """Providers whose circuit is open now, and until when."""
        async with self._lock:
            now = self._clock()
            return {
                slug: c.open_until
                for slug, c in self._circuits.items()
                if c.open_until is not None and c.open_until > now
            }

    async def circuit_failure(
        self, provider_slug: str, *, window: timedelta, error: str
    ) -> common.CircuitCount:
        """Count a failure at a provider (failures older than `window` start afresh)."""
        async with self._lock:
            now = self._clock()
            c = self._circuits.setdefault(provider_slug, _Circuit())
            stale = c.updated_at is None or c.updated_at < now - window
            c.failures = 1 if stale else c.failures + 1
            c.error, c.updated_at = error[: common.MAX_CIRCUIT_ERROR], now
            return common.CircuitCount(c.failures, c.opened, c.open_until)

    async def open_circuit(self, provider_slug: str, *, until: datetime, opened: int) -> bool:
        """Open a provider's circuit until `until`, unless another worker just did."""
        async with self._lock:
            now = self._clock()
            c = self._circuits.get(provider_slug)
            if c is None or c.opened != opened or (c.open_until is not None and c.open_until > now):
                return False
            c.opened, c.open_until, c.failures, c.updated_at = opened + 1, until, 0, now
            return True

    async def close_circuit(self, provider_slug: str) -> bool:
        """Close a provider's circuit after a success; False when it was not failing."""
        async with self._lock:
            c = self._circuits.get(provider_slug)
            if c is None or (c.failures == 0 and c.opened == 0):
                return False
            c.failures, c.opened, c.open_until = 0, 0, None
            return True

    async def find_sealed_outside(
        self, prefix: bytes, *, after: UUID | None = None, limit: int = 500
    ) -> list[ProviderConnection]:
        """Connections holding credentials whose blob does not start with `prefix`, in id order."""
        size = common.check_limit(limit)
        rows = await self._read(
            lambda c: (
                c.credentials is not None
                and not c.credentials.encrypted_data.startswith(prefix)
                and (after is None or c.id.bytes > after.bytes)
            )
        )
        return sorted(rows, key=lambda c: c.id.bytes)[:size]

    async def count_sealed_outside(self, prefixes: Sequence[bytes]) -> int:
        """How many connections hold credentials starting with none of `prefixes`."""
        headers = tuple(prefixes)
        rows = await self._read(
            lambda c: (
                c.credentials is not None
                and not any(c.credentials.encrypted_data.startswith(h) for h in headers)
            )
        )
        return len(rows)

    async def count_states_sealed_with(self, prefix: bytes) -> int:
        """How many unexpired pending authorizations were sealed under the key of `prefix`."""
        async with self._lock:
            now = self._clock()
            return sum(
                1
                for p in self._states.values()
                if p.expires_at > now and p.sealed_verifier.startswith(prefix)
            )

    async def count_sealed_with(self, prefix: bytes) -> int:
        """How many connections hold credentials whose blob starts with `prefix`."""
        rows = await self._read(
            lambda c: c.credentials is not None and c.credentials.encrypted_data.startswith(prefix)
        )
        return len(rows)

    async def put_state(self, pending: common.PendingAuthorization) -> None:
        """Keep a pending authorization until its callback (or its expiry)."""
        await self._exclusive(lambda: self._put_state(pending))

    def _put_state(self, pending: common.PendingAuthorization) -> None:
        kept_from = pending.created_at - common.LAPSED_KEPT
        for key in [k for k, v in self._states.items() if v.expires_at < kept_from]:
            del self._states[key]
        if pending.connection_id not in self._rows:
            raise ConstraintViolationError("put_state: the connection does not exist")
        if pending.state_hash in self._states:
            raise ConstraintViolationError("put_state: the state is already in use")
        self._states[pending.state_hash] = pending

    async def lapsed_authorizations(self, *, limit: int = 100) -> list[UUID]:
        """PENDING connections whose every authorization expired unanswered."""
        limit = common.check_limit(limit)
        async with self._lock:
            now = self._clock()
            live = {p.connection_id for p in self._states.values() if p.expires_at >= now}
            lapsed = {
                p.connection_id
                for p in self._states.values()
                if p.connection_id not in live
                and (c := self._rows.get(p.connection_id)) is not None
                and c.status is ConnectionStatus.PENDING
            }
            return sorted(lapsed)[:limit]

    async def take_state(self, state_hash: bytes) -> common.PendingAuthorization | None:
        """Remove and return the pending authorization with this state hash (single use)."""
        return await self._exclusive(lambda: self._states.pop(state_hash, None))

    async def migrate(self) -> list[int]:
        return []

    async def schema_version(self) -> int:
        return 0

    async def check_schema(self) -> None:
        return None
