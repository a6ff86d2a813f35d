"""Consent that ends by rule: warn the application ahead of the end a provider fixes.

Some providers end every grant a fixed time after the user consented, whatever is refreshed
meanwhile (Schwab: 7 days). Their registry entry says so (`consent_lifetime`); a connection's
consent then ends at connected_at + consent_lifetime, and a reconnect starts a new one.
`ConsentWatch` logs connection.consent_expiring once per consent, `lead` ahead of its end, so
the application can ask its user to reconnect before anything breaks.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from uuid import UUID

from linkvault.domain import Clock, ConnectionStatus, utc_now
from linkvault.events import ConnectionEvent, EventType
from linkvault.providers import Provider, ProviderRegistry
from linkvault.stores import ConnectionStore

DEFAULT_LEAD = timedelta(hours=24)
CHECK_EVERY = timedelta(minutes=10)  # the lead is hours: a look every few minutes is enough
_PAGE = 100
_MAX_PAGES = 50  # per look: the rest wait for the next one

log = logging.getLogger("linkvault.consent")


class ConsentWatch:
    """Warns of consent about to end; `chore` is the refresh worker's periodic entry point."""

    def __init__(
        self,
        store: ConnectionStore,
        registry: ProviderRegistry,
        *,
        lead: timedelta = DEFAULT_LEAD,
        every: timedelta = CHECK_EVERY,
        clock: Clock = utc_now,
    ) -> None:
        if lead < timedelta(0):
            raise ValueError("the consent warning's lead time must not be negative")
        self.store = store
        self.registry = registry
        self.lead = lead
        self.every = every
        self.clock = clock
        self._next_look: datetime | None = None

    async def chore(self) -> int:
        """`warn()`, at most once every `every`; how many connections were warned."""
        now = self.clock()
        if self._next_look is not None and now < self._next_look:
            return 0
        self._next_look = now + self.every
        return await self.warn()

    async def warn(self) -> int:
        """Log connection.consent_expiring for every consent ending within the lead time and
        not announced yet; how many were."""
        warned = 0
        for provider in self.registry:
            if provider.consent_lifetime is not None:
                warned += await self._warn_at(provider, provider.consent_lifetime)
        if warned:
            log.info("%d connection(s) warned that their consent ends soon", warned)
        return warned

    async def _warn_at(self, provider: Provider, lifetime: timedelta) -> int:
        now = self.clock()
        consented_by = now + self.lead - lifetime
        warned = 0
        for _ in range(_MAX_PAGES):
            due = await self.store.consent_ending(
                provider.slug, consented_by=consented_by, limit=_PAGE
            )
            for connection_id, consented_at in due:
                warned += await self._warn_one(connection_id, consented_at, lifetime, now)
            if len(due) < _PAGE:
                break
        return warned

    async def _warn_one(
        self, connection_id: UUID, consented_at: datetime, lifetime: timedelta, now: datetime
    ) -> int:
        conn = await self.store.find_by_id(connection_id)
        if conn is None or conn.status is not ConnectionStatus.ACTIVE:
            return 0
        ends = consented_at + lifetime
        event = ConnectionEvent(
            type=EventType.CONSENT_EXPIRING,
            connection_id=conn.id,
            user_id=conn.user_id,
            provider_slug=conn.provider_slug,
            occurred_at=now,
            from_status=conn.status.value,
            to_status=conn.status.value,
            reason=(
                f"{conn.provider_slug} ends this consent at {ends:%Y-%m-%d %H:%M} UTC: "
                "ask the user to reconnect before then"
            ),
            data={"consent_expires_at": ends},
        )
        return int(await self.store.warn_consent(conn.id, consented_at, event))
