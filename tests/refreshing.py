"""A refresh worker on a fake clock against the sandbox: what the refresh tests share."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from linkvault.credentials import OAuth2Tokens, open_credentials, seal_credentials
from linkvault.crypto import AesGcmCipher
from linkvault.domain import ProviderConnection
from linkvault.oauth import HttpxTokenClient, TokenResponse
from linkvault.providers import Provider, ProviderRegistry, load_registry
from linkvault.services.refresh import RefreshPolicy, RefreshWorker
from linkvault.stores import ConnectionStore
from linkvault.stores.common import ClaimRequest
from linkvault.testing import FakeClock, RunningSandbox

POLICY = RefreshPolicy(
    horizon=timedelta(minutes=10),
    lease=timedelta(minutes=2),
    batch_size=100,
    concurrency=4,
    max_attempts=3,
    backoff_base=timedelta(seconds=10),
    backoff_max=timedelta(minutes=15),
    idle_poll=0.01,
)


class WatchedTokenClient(HttpxTokenClient):
    """A real token client that counts refreshes in flight and can act before answering."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        super().__init__(timeout=timeout)
        self.in_flight = 0
        self.peak = 0
        self.meanwhile: Callable[[], Awaitable[None]] | None = None
        self._changed = asyncio.Condition()

    async def until_in_flight(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight >= count)

    async def refresh(
        self, provider: Provider, *, refresh_token: str, scopes: Sequence[str] | None = None
    ) -> TokenResponse:
        async with self._changed:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self._changed.notify_all()
        try:
            response = await super().refresh(provider, refresh_token=refresh_token, scopes=scopes)
        finally:
            self.in_flight -= 1
        if self.meanwhile is not None:
            await self.meanwhile()
        return response


@dataclass
class Bench:
    store: ConnectionStore
    registry: ProviderRegistry
    cipher: AesGcmCipher
    running: RunningSandbox
    clock: FakeClock
    tokens: WatchedTokenClient
    seeded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def provider(self) -> Provider:
        return self.registry.get("sandbox")

    def reject_client(self) -> None:
        """From now on the sandbox refuses this client: its secret here is wrong."""
        env = {**self.running.env(), "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": "not-the-secret"}
        self.registry = load_registry(env=env)

    def worker(
        self,
        policy: RefreshPolicy = POLICY,
        *,
        tokens: HttpxTokenClient | None = None,
        seed: int = 7,
        owner: str = "worker-1",
    ) -> RefreshWorker:
        return RefreshWorker(
            self.store,
            self.registry,
            tokens or self.tokens,
            self.cipher,
            policy=policy,
            owner=owner,
            clock=self.clock,
            rng=random.Random(seed),
        )

    async def connection(
        self,
        subject: str = "alice",
        *,
        expires_in: timedelta = timedelta(minutes=5),
        alias: str | None = None,
    ) -> ProviderConnection:
        [grant] = self.running.sandbox.seed_grants([subject])
        self.seeded.append(grant)
        now = self.clock.now
        conn = ProviderConnection(
            user_id=uuid4(),
            provider_id=self.provider.id,
            provider_slug="sandbox",
            alias=alias,
            created_at=now,
            updated_at=now,
        )
        tokens = OAuth2Tokens(
            access_token=grant["access_token"],
            refresh_token=grant["refresh_token"],
            scope=grant["scope"],
            expires_at=now + expires_in,
        )
        conn.mark_connected(
            seal_credentials(tokens, connection_id=conn.id, cipher=self.cipher), now=now
        )
        await self.store.save(conn)
        return conn

    async def stored(self, connection_id: UUID) -> ProviderConnection:
        conn = await self.store.find_by_id(connection_id)
        assert conn is not None
        return conn

    async def tokens_of(self, connection_id: UUID) -> OAuth2Tokens:
        conn = await self.stored(connection_id)
        assert conn.credentials is not None
        return open_credentials(
            conn.credentials, connection_id=conn.id, cipher=self.cipher, expect=OAuth2Tokens
        )

    def grant(self, subject: str = "alice") -> dict[str, Any]:
        [grant] = self.running.sandbox.grants(subject)
        return grant

    def stats(self) -> dict[str, Any]:
        return self.running.sandbox.stats()

    def refreshes_issued(self) -> int:
        issued: int = self.stats()["issued"].get("refresh_token", 0)
        return issued

    def refresh_requests(self) -> int:
        stats = self.stats()
        refused: int = sum(stats["refused"].get("refresh_token", {}).values())
        return self.refreshes_issued() + refused

    async def claimable(self, policy: RefreshPolicy = POLICY) -> set[UUID]:
        claims = await self.store.claim_due(
            "probe",
            ClaimRequest(policy.horizon, policy.lease, limit=100, max_failures=policy.max_attempts),
        )
        ids = [c.connection.id for c in claims]
        await self.store.release_claims(ids, "probe")
        return set(ids)
