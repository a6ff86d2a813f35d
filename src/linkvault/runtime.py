"""Everything a running linkvault needs, assembled from one Settings object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Self

from linkvault.crypto import AesGcmCipher, KeyRing, keyring_from_settings
from linkvault.domain import Clock, utc_now
from linkvault.oauth import HttpxTokenClient
from linkvault.origins import ReturnOrigins
from linkvault.providers import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    ClientCredentials,
    ProviderRegistry,
    load_registry,
)
from linkvault.services.access_tokens import AccessTokenService
from linkvault.services.connect import ConnectService
from linkvault.services.connections import ConnectionService
from linkvault.services.consent import ConsentWatch
from linkvault.services.events import EventService
from linkvault.services.proxy import ProviderProxy, ProxyPolicy
from linkvault.services.refresh import RefreshPolicy, RefreshWorker
from linkvault.services.webhooks import DeliveryPolicy, WebhookDispatcher, WebhookService
from linkvault.settings import Settings, environment
from linkvault.stores import ConnectionStore, open_store
from linkvault.stores.common import ClosingOnExit


def refresh_policy(settings: Settings) -> RefreshPolicy:
    """The refresh worker's policy as the settings describe it."""
    return RefreshPolicy(
        horizon=timedelta(minutes=settings.refresh_horizon_minutes),
        lease=timedelta(seconds=settings.refresh_lease_seconds),
        heartbeat=(
            None
            if settings.refresh_heartbeat_seconds is None
            else timedelta(seconds=settings.refresh_heartbeat_seconds)
        ),
        connect_timeout=settings.refresh_connect_timeout_seconds,
        batch_size=settings.refresh_batch_size,
        concurrency=settings.refresh_concurrency,
        max_attempts=settings.refresh_max_attempts,
    )


def with_sandbox_client(registry: ProviderRegistry) -> ProviderRegistry:
    """Give the built-in loopback sandbox its demo client when none is configured."""
    if "sandbox" not in registry:
        return registry
    provider = registry.get("sandbox")
    if provider.client is not None:
        return registry
    demo = ClientCredentials(SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
    return registry.replace(provider.with_client(demo))


def provider_registry(settings: Settings, env: Mapping[str, str]) -> ProviderRegistry:
    """The providers a process serves: built in, the providers file, clients from `env`."""
    return with_sandbox_client(load_registry(settings.providers_file, env=env))


@dataclass
class Runtime(ClosingOnExit):
    """The store, keys, providers, token client and services of one process."""

    settings: Settings
    store: ConnectionStore
    keyring: KeyRing
    cipher: AesGcmCipher
    registry: ProviderRegistry
    tokens: HttpxTokenClient
    connect: ConnectService
    worker: RefreshWorker
    clock: Clock = field(default=utc_now)
    connections: ConnectionService = field(init=False)
    access_tokens: AccessTokenService = field(init=False)
    proxy: ProviderProxy = field(init=False)
    events: EventService = field(init=False)
    webhooks: WebhookService = field(init=False)
    dispatcher: WebhookDispatcher = field(init=False)

    def __post_init__(self) -> None:
        self.connections = ConnectionService(
            self.store,
            clock=self.clock,
            registry=self.registry,
            cipher=self.cipher,
            worker=self.worker,
        )
        self.access_tokens = AccessTokenService(
            self.store, self.registry, self.cipher, self.worker, clock=self.clock
        )
        s = self.settings
        self.proxy = ProviderProxy(
            self.access_tokens,
            policy=ProxyPolicy(
                timeout=s.proxy_timeout_seconds,
                connect_timeout=s.proxy_connect_timeout_seconds,
                max_body_bytes=s.proxy_max_body_bytes,
            ),
        )
        self.events = EventService(self.store)
        self.webhooks = WebhookService(
            self.store,
            self.cipher,
            clock=self.clock,
            allow_http_loopback=s.webhook_allow_http_loopback,
        )
        policy = DeliveryPolicy(
            timeout=s.webhook_timeout_seconds,
            connect_timeout=s.webhook_connect_timeout_seconds,
            lease=timedelta(seconds=s.webhook_lease_seconds),
        )
        self.dispatcher = WebhookDispatcher(
            self.store, self.cipher, policy=policy, clock=self.clock, owner=self.worker.owner
        )

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        migrate: bool | None = None,
        check_schema: bool = True,
        clock: Clock = utc_now,
    ) -> Self:
        """Open the store and build the services; embedded SQLite migrates itself by default."""
        environ = environment() if env is None else env
        policy = refresh_policy(settings)
        policy.check()  # a lease that could lapse under a live request is refused at start
        embedded = settings.is_embedded
        keyring = keyring_from_settings(
            settings.keys.get_secret_value() if settings.keys else None,
            settings.key_file,
            embedded=embedded,
            active=settings.active_key_id,
        )
        registry = provider_registry(settings, environ)
        cipher = AesGcmCipher(keyring)
        store = await open_store(
            settings.database_url, clock=clock, migrate=embedded if migrate is None else migrate
        )
        try:
            if check_schema:
                await store.check_schema()
        except BaseException:
            await store.close()
            raise
        tokens = HttpxTokenClient(
            timeout=settings.refresh_timeout_seconds,
            connect_timeout=settings.refresh_connect_timeout_seconds,
            clock=clock,
        )
        connect = ConnectService(
            store,
            registry,
            tokens,
            cipher,
            clock=clock,
            return_origins=ReturnOrigins(settings.return_origins),
        )
        consent = ConsentWatch(
            store,
            registry,
            lead=timedelta(hours=settings.consent_warning_hours),
            clock=clock,
        )
        worker = RefreshWorker(
            store,
            registry,
            tokens,
            cipher,
            policy=policy,
            clock=clock,
            chores=[connect.fail_lapsed, consent.chore],
        )
        return cls(settings, store, keyring, cipher, registry, tokens, connect, worker, clock)

    async def close(self) -> None:
        await self.dispatcher.aclose()
        await self.proxy.aclose()
        await self.tokens.aclose()
        await self.store.close()
