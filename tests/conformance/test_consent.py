"""Consent that ends by rule, in every store: warned of once per consent, ahead of its end."""

from __future__ import annotations

from datetime import timedelta

from linkvault.domain import ConnectionStatus
from linkvault.events import ConnectionEvent, EventType
from linkvault.providers import load_registry
from linkvault.services.connections import ConnectionService
from linkvault.services.consent import ConsentWatch
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock
from tests.factories import PLAID, creds, make, saved

WEEK = timedelta(days=7)


def watch(store: ConnectionStore, clock: FakeClock) -> ConsentWatch:
    # The built-in schwab provider ends every consent 7 days after it was given.
    return ConsentWatch(store, load_registry(), lead=timedelta(hours=24), clock=clock)


async def test_a_consent_is_announced_once_a_lead_time_before_its_end(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    consented = clock.now
    watcher = watch(store, clock)

    clock.advance(days=6, seconds=-1)
    assert await watcher.warn() == 0
    clock.advance(seconds=1)
    assert await watcher.warn() == 1
    assert await watcher.warn() == 0

    last = (await store.connection_events(conn.id))[-1]
    assert last.event.type is EventType.CONSENT_EXPIRING
    assert (last.event.from_status, last.event.to_status) == ("active", "active")
    assert last.event.data == {"consent_expires_at": (consented + WEEK).isoformat()}
    assert last.event.reason is not None
    assert "reconnect" in last.event.reason


async def test_a_reconnect_starts_a_new_consent_with_its_own_warning(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    watcher = watch(store, clock)
    clock.advance(days=6, hours=1)
    assert await watcher.warn() == 1

    conn.mark_expired("the consent ended", now=clock.now)
    conn.mark_connected(creds(), now=clock.now)  # the user consented again
    await store.save(conn)
    assert await watcher.warn() == 0
    clock.advance(days=6)

    assert await watcher.warn() == 1
    kinds = [e.event.type for e in await store.connection_events(conn.id)]
    assert kinds.count(EventType.CONSENT_EXPIRING) == 2


async def test_only_active_connections_at_a_provider_with_such_a_rule_are_warned(
    store: ConnectionStore, clock: FakeClock
) -> None:
    expired = await saved(store, make(clock, status=ConnectionStatus.EXPIRED))
    elsewhere = await saved(store, make(clock, status=ConnectionStatus.ACTIVE, provider_id=PLAID))
    clock.advance(days=30)

    assert await watch(store, clock).warn() == 0
    for conn in (expired, elsewhere):
        kinds = [e.event.type for e in await store.connection_events(conn.id)]
        assert EventType.CONSENT_EXPIRING not in kinds


async def test_a_warning_for_a_consent_that_is_no_longer_current_is_not_logged(
    store: ConnectionStore, clock: FakeClock
) -> None:
    conn = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    consented = clock.now
    clock.advance(days=6, hours=1)
    [(found, at)] = await store.consent_ending("schwab", consented_by=clock.now - timedelta(days=6))
    assert (found, at) == (conn.id, consented)
    conn.mark_expired("the consent ended", now=clock.now)
    conn.mark_connected(creds(), now=clock.now)
    await store.save(conn)
    event = ConnectionEvent(
        EventType.CONSENT_EXPIRING, conn.id, conn.user_id, "schwab", clock.now, "active", "active"
    )

    assert not await store.warn_consent(conn.id, consented, event)
    assert await store.warn_consent(conn.id, clock.now, event)
    assert not await store.warn_consent(conn.id, clock.now, event)


async def test_the_chore_looks_at_most_once_per_interval(
    store: ConnectionStore, clock: FakeClock
) -> None:
    await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    clock.advance(minutes=5)
    await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    watcher = ConsentWatch(store, load_registry(), every=timedelta(minutes=10), clock=clock)
    clock.advance(days=6, minutes=-4)

    assert await watcher.chore() == 1  # the first consent is due, the second in 5 minutes
    clock.advance(minutes=6)
    assert await watcher.chore() == 0  # the second is due, but the last look was 6 minutes ago
    clock.advance(minutes=4)
    assert await watcher.chore() == 1


async def test_the_connection_shows_when_its_consent_ends(
    store: ConnectionStore, clock: FakeClock
) -> None:
    schwab = await saved(store, make(clock, status=ConnectionStatus.ACTIVE))
    other = await saved(store, make(clock, status=ConnectionStatus.ACTIVE, provider_id=PLAID))
    expired = await saved(store, make(clock, status=ConnectionStatus.EXPIRED))
    service = ConnectionService(store, registry=load_registry(), clock=clock)

    health = await service.health_of([schwab, other, expired])

    assert health[schwab.id].consent_expires_at == clock.now + WEEK
    assert health[other.id].consent_expires_at is None  # no such rule at that provider
    assert health[expired.id].consent_expires_at is None  # no consent in force
    assert (await ConnectionService(store).health(schwab)).consent_expires_at is None
