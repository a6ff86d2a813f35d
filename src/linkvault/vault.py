"""linkvault inside an application: one object for its connections and their tokens.

    async with await Vault.open("sqlite:///app.db") as vault:
        token = await vault.access_token(connection_id)
        async with httpx.AsyncClient(auth=vault.httpx_auth(connection_id)) as http:
            ...

Settings not given come from the environment (LINKVAULT_*), as for `linkvault serve`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Mapping
from datetime import timedelta
from typing import Self
from uuid import UUID

import httpx

from linkvault.runtime import Runtime
from linkvault.services.access_tokens import DEFAULT_MIN_VALID, AccessToken, check_min_valid
from linkvault.services.connect import ConnectService
from linkvault.services.connections import ConnectionService
from linkvault.settings import Settings
from linkvault.stores.common import ClosingOnExit

__all__ = ["AccessToken", "ConnectionAuth", "Vault"]


class Vault(ClosingOnExit):
    """The connections, their tokens and the services around them, for library users."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @classmethod
    async def open(
        cls,
        database_url: str | None = None,
        *,
        settings: Settings | None = None,
        env: Mapping[str, str] | None = None,
        migrate: bool | None = None,
    ) -> Self:
        """Open the store named by `database_url` (or the settings') with keys and providers
        from `settings` or the environment; embedded SQLite migrates itself by default.

        `env` stands in for the process environment where provider clients are read from
        (LINKVAULT_PROVIDER_<SLUG>_CLIENT_ID and the like).
        """
        settings = settings or Settings()
        if database_url is not None:
            settings = settings.model_copy(update={"database_url": database_url})
        return cls(await Runtime.open(settings, env=env, migrate=migrate))

    @property
    def connections(self) -> ConnectionService:
        """Get, list, rename, disconnect, delete, reveal and refresh connections."""
        return self.runtime.connections

    @property
    def connect(self) -> ConnectService:
        """Start, complete and renew connections."""
        return self.runtime.connect

    async def access_token(
        self, connection_id: UUID, *, min_valid: timedelta = DEFAULT_MIN_VALID
    ) -> AccessToken:
        """An access token good for at least `min_valid`, refreshed first when needed.

        One refresh however many callers ask at once, in however many processes.
        NeedsUserActionError when only a reconnect can help; TokenUnavailableError (with
        `retry_after`) while the provider is failing.
        """
        return await self.runtime.access_tokens.access_token(connection_id, min_valid=min_valid)

    def httpx_auth(
        self, connection_id: UUID, *, min_valid: timedelta = DEFAULT_MIN_VALID
    ) -> ConnectionAuth:
        """An `httpx.Auth` for an `httpx.AsyncClient` that calls the provider as this
        connection: it sends a current token, and on a 401 refreshes once and retries once."""
        return ConnectionAuth(self, connection_id, min_valid=min_valid)

    async def close(self) -> None:
        """Close the store and the HTTP clients; `async with` does it on the way out."""
        await self.runtime.close()

    aclose = close


class ConnectionAuth(httpx.Auth):
    """Bearer auth from a vault connection, for `httpx.AsyncClient` only.

    A 401 from the provider makes one refresh (single-flight: when another caller has
    already replaced the refused token, its token is used) and one retry; a second 401 is
    the caller's to handle. The request body is kept so that the retry can send it again.
    """

    requires_request_body = True

    def __init__(self, vault: Vault, connection_id: UUID, *, min_valid: timedelta) -> None:
        self._tokens = vault.runtime.access_tokens
        self._connection_id = connection_id
        self._min_valid = check_min_valid(min_valid)

    def __repr__(self) -> str:
        return f"ConnectionAuth(connection_id={self._connection_id})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise TypeError("ConnectionAuth works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._tokens.access_token(self._connection_id, min_valid=self._min_valid)
        request.headers["Authorization"] = token.authorization
        response = yield request
        if response.status_code != 401:
            return
        # httpx reads the refused answer itself once the retry is under way.
        token = await self._tokens.after_rejection(self._connection_id, token)
        request.headers["Authorization"] = token.authorization
        yield request
