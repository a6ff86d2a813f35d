"""The ports linkvault is built around: structural Protocols, implemented by adapters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from uuid import UUID

from linkvault.domain import ProviderConnection
from linkvault.events import ConnectionEvent, StoredEvent

if TYPE_CHECKING:
    from linkvault.oauth import TokenResponse
    from linkvault.providers import Provider


@runtime_checkable
class ProviderConnectionRepository(Protocol):
    """Persistence of provider connections (the fixed port)."""

    async def find_by_id(self, connection_id: UUID) -> ProviderConnection | None:
        """The connection, or None."""
        ...

    async def find_by_user_id(self, user_id: UUID) -> list[ProviderConnection]:
        """All of the user's connections, in every status, disconnected included."""
        ...

    async def find_by_user_and_provider(
        self, user_id: UUID, provider_id: UUID
    ) -> list[ProviderConnection]:
        """All of the user's connections to one provider (one per account)."""
        ...

    async def find_active_by_user(self, user_id: UUID) -> list[ProviderConnection]:
        """The user's connections whose status is ACTIVE."""
        ...

    async def save(self, connection: ProviderConnection) -> None:
        """Create or update; raises StaleConnectionError for an outdated copy, DatabaseError."""
        ...

    async def delete(self, connection_id: UUID) -> None:
        """Hard delete; raises NotFoundError when absent, DatabaseError."""
        ...

    async def find_expiring_soon(self, minutes: int = 30) -> list[ProviderConnection]:
        """ACTIVE connections whose credentials expire within `minutes` (or already have)."""
        ...


class EventLog(Protocol):
    """The log of what happened to connections (a transactional outbox).

    Stores write a connection's events with the change they describe: `save` writes the
    connection's pending events (and connection.created for a new one), `delete` writes
    connection.deleted; a change that does not commit leaves no event.
    """

    async def append_events(self, connection_id: UUID, events: Sequence[ConnectionEvent]) -> bool:
        """Log events that change nothing else on the connection; False when it is gone."""
        ...

    async def connection_events(
        self, connection_id: UUID, *, after: int = 0, limit: int = 100
    ) -> list[StoredEvent]:
        """One connection's events in order, after its sequence number `after`."""
        ...

    async def read_events(self, after: str | None = None, *, limit: int = 100) -> list[StoredEvent]:
        """The whole log after the cursor `after` (None: from the start), oldest first."""
        ...


class Cipher(Protocol):
    """Authenticated encryption of credential payloads bound to their connection."""

    def seal(self, plaintext: bytes, *, connection_id: UUID) -> bytes:
        """Encrypt under the active key; the blob names its key."""
        ...

    def open(self, blob: bytes, *, connection_id: UUID) -> bytes:
        """Decrypt a blob sealed for this connection; raises DecryptionError."""
        ...


class TokenClient(Protocol):
    """A provider's OAuth2 token endpoint."""

    async def exchange_code(
        self, provider: Provider, *, code: str, redirect_uri: str, code_verifier: str | None
    ) -> TokenResponse:
        """Trade an authorization code (and its PKCE verifier) for tokens."""
        ...

    async def refresh(
        self, provider: Provider, *, refresh_token: str, scopes: Sequence[str] | None = None
    ) -> TokenResponse:
        """Trade a refresh token for new tokens (the refresh token may rotate)."""
        ...
