"""Stores implementing the repository port, and `open_store` to open one from a URL."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import urlsplit
from uuid import UUID

from linkvault.domain import Clock, ProviderConnection, utc_now
from linkvault.errors import InvalidArgumentError
from linkvault.events import ConnectionEvent
from linkvault.ports import EventLog, ProviderConnectionRepository
from linkvault.stores.common import (
    FIRST_PAGE,
    AttemptStart,
    CircuitCount,
    Claim,
    ClaimRequest,
    ClaimResult,
    ConnectionFilter,
    ConnectionHealth,
    Page,
    PendingAuthorization,
    RefreshBacklog,
    Refreshed,
)
from linkvault.webhooks import (
    Delivery,
    DeliveryAttempt,
    DeliveryClaim,
    DeliveryResult,
    WebhookEndpoint,
)

DEFAULT_URL = "sqlite:///./linkvault.db"


class ConnectionStore(ProviderConnectionRepository, EventLog, Protocol):
    """A repository that owns its resources: transactions, schema, close."""

    def transaction(self) -> AbstractAsyncContextManager[ConnectionStore]: ...

    async def list_connections(
        self, where: ConnectionFilter | None = None, page: Page = FIRST_PAGE
    ) -> list[ProviderConnection]: ...

    async def connection_health(
        self, connection_ids: Sequence[UUID]
    ) -> dict[UUID, ConnectionHealth]: ...

    async def claim_due(self, owner: str, request: ClaimRequest) -> list[Claim]: ...

    async def claim_connection(
        self, connection_id: UUID, owner: str, *, lease: timedelta
    ) -> Claim | None: ...

    async def begin_attempts(
        self, owner: str, *, lease: timedelta, attempts: Sequence[AttemptStart]
    ) -> dict[UUID, datetime]: ...

    async def extend_lease(self, connection_id: UUID, owner: str, *, lease: timedelta) -> bool: ...

    async def complete_refresh(
        self, connection_id: UUID, owner: str, refreshed: Refreshed
    ) -> bool: ...

    async def record_lost(
        self, connection_id: UUID, owner: str, *, how: str, error: str
    ) -> bool: ...

    async def finish_claim(
        self, connection_id: UUID, owner: str, result: ClaimResult
    ) -> int | None: ...

    async def release_claims(self, connection_ids: Sequence[UUID], owner: str) -> None: ...

    async def refresh_backlog(
        self, horizon: timedelta, *, max_failures: int | None = None
    ) -> RefreshBacklog: ...

    async def open_circuits(self) -> dict[str, datetime]: ...

    async def circuit_failure(
        self, provider_slug: str, *, window: timedelta, error: str
    ) -> CircuitCount: ...

    async def open_circuit(self, provider_slug: str, *, until: datetime, opened: int) -> bool: ...

    async def close_circuit(self, provider_slug: str) -> bool: ...

    async def find_sealed_outside(
        self, prefix: bytes, *, after: UUID | None = None, limit: int = 500
    ) -> list[ProviderConnection]: ...

    async def count_sealed_with(self, prefix: bytes) -> int: ...

    async def count_states_sealed_with(self, prefix: bytes) -> int: ...

    async def count_sealed_outside(self, prefixes: Sequence[bytes]) -> int: ...

    async def put_state(self, pending: PendingAuthorization) -> None: ...

    async def lapsed_authorizations(self, *, limit: int = 100) -> list[UUID]: ...

    async def consent_ending(
        self, provider_slug: str, *, consented_by: datetime, limit: int = 100
    ) -> list[tuple[UUID, datetime]]: ...

    async def warn_consent(
        self, connection_id: UUID, consented_at: datetime, event: ConnectionEvent
    ) -> bool: ...

    async def take_state(self, state_hash: bytes) -> PendingAuthorization | None: ...

    async def add_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None: ...

    async def webhook_endpoints(self) -> list[WebhookEndpoint]: ...

    async def webhook_endpoint(self, endpoint_id: UUID) -> WebhookEndpoint | None: ...

    async def delete_webhook_endpoint(self, endpoint_id: UUID) -> bool: ...

    async def set_webhook_endpoint_enabled(
        self, endpoint_id: UUID, enabled: bool, reason: str | None = None
    ) -> bool: ...

    async def reseal_webhook_secret(self, endpoint_id: UUID, old: bytes, new: bytes) -> bool: ...

    async def fan_out_events(self, *, limit: int = 100) -> int: ...

    async def claim_deliveries(
        self, owner: str, *, lease: timedelta, limit: int
    ) -> list[DeliveryClaim]: ...

    async def finish_delivery(
        self, delivery_id: UUID, owner: str, result: DeliveryResult
    ) -> bool: ...

    async def webhook_deliveries(
        self, endpoint_id: UUID, *, limit: int = 100
    ) -> list[Delivery]: ...

    async def webhook_delivery(self, delivery_id: UUID) -> Delivery | None: ...

    async def delivery_attempts(self, delivery_ids: Sequence[UUID]) -> list[DeliveryAttempt]: ...

    async def replay_delivery(self, endpoint_id: UUID, delivery_id: UUID) -> bool: ...

    async def migrate(self) -> list[int]: ...

    async def schema_version(self) -> int: ...

    async def check_schema(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def sqlite_path(url: str) -> str:
    """The file path of a `sqlite:///relative` or `sqlite:////absolute` URL."""
    if not url.startswith("sqlite:///"):
        raise InvalidArgumentError("a SQLite URL looks like sqlite:///path/to/file.db")
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path:
        raise InvalidArgumentError("the SQLite URL names no file: sqlite:///path/to/file.db")
    return str(Path(path).expanduser())


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


async def open_store(
    url: str = DEFAULT_URL, *, clock: Clock = utc_now, migrate: bool | None = None
) -> ConnectionStore:
    """Open the store a URL names: sqlite:///path, postgresql://…, or memory://.

    By default a SQLite file is created (mode 0600) and migrated on open, and a PostgreSQL
    schema that is behind is refused with the command to run; `migrate=True` migrates any
    store, `migrate=False` opens it as it is.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    store: ConnectionStore
    if scheme == "sqlite":
        from linkvault.stores.sqlite import SqliteConnectionRepository

        store = await SqliteConnectionRepository.open(sqlite_path(url), clock=clock)
    elif scheme in ("postgresql", "postgres"):
        from linkvault.stores.postgres import PostgresConnectionRepository

        store = await PostgresConnectionRepository.connect(url, clock=clock)
    elif scheme == "memory":
        from linkvault.stores.memory import InMemoryConnectionRepository

        store = InMemoryConnectionRepository(clock=clock)
    else:
        raise InvalidArgumentError(
            f"unsupported database URL {redact_url(url)!r}: "
            "use sqlite:///path, postgresql://user@host/db or memory://"
        )
    try:
        if migrate or (migrate is None and scheme == "sqlite"):
            await store.migrate()
        elif migrate is None:
            await store.check_schema()
    except BaseException:
        await store.close()
        raise
    return store
