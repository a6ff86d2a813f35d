"""Who is calling: the bearer API key, parsed once per request, and the scope each route needs.

AuthMiddleware reads the Authorization header and resolves the key before any route runs;
the scope guards read what it resolved. The `bearerAuth` dependency only declares the scheme
in the OpenAPI document and hands the resolved key on: it never parses the header again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from linkvault.access import ApiKeyEntry, ApiKeySet
from linkvault.access import Scope as KeyScope
from linkvault.api.problems import ApiProblem, header, send_problem, unauthorized

log = logging.getLogger("linkvault.api")

# Where AuthMiddleware leaves the resolved key in the ASGI scope.
KEY_SCOPE = "linkvault.api_key"


class AuthMiddleware:
    """Outside the public paths every request needs a known API key; routes check scopes."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeySet,
        public: frozenset[str],
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.keys = keys
        self.public = public
        self.public_prefixes = public_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.public or path.startswith(self.public_prefixes):
            await self.app(scope, receive, send)
            return
        value = header(scope, b"authorization")
        if not value:
            await send_problem(
                scope,
                send,
                unauthorized(
                    "an API key is required: Authorization: Bearer <key>", token_given=False
                ),
            )
            return
        kind, _, token = value.partition(" ")
        entry = self.keys.authenticate(token.strip()) if kind.lower() == "bearer" else None
        if entry is None:
            await send_problem(
                scope, send, unauthorized("the API key is not valid", token_given=True)
            )
            return
        scope[KEY_SCOPE] = entry
        await self.app(scope, receive, send)


class ResolvedBearer(HTTPBearer):
    """The `bearerAuth` scheme of the OpenAPI document; answers the key AuthMiddleware resolved."""

    async def __call__(self, request: Request) -> ApiKeyEntry | None:  # type: ignore[override]
        entry = request.scope.get(KEY_SCOPE)
        return entry if isinstance(entry, ApiKeyEntry) else None


_bearer = ResolvedBearer(auto_error=False, scheme_name="bearerAuth", description="an API key")
_Resolved = Annotated[ApiKeyEntry | None, Security(_bearer)]


def scope_guard(scope: KeyScope) -> Callable[[Request, ApiKeyEntry | None], Awaitable[ApiKeyEntry]]:
    """A dependency answering the caller's key when it holds `scope`: 401 or 403 otherwise."""

    async def guard(request: Request, entry: _Resolved) -> ApiKeyEntry:
        if entry is None:
            raise unauthorized(
                "an API key is required: Authorization: Bearer <key>", token_given=False
            )
        if not entry.allows(scope):
            log.warning(
                "API key %r lacks scope %s for %s %s",
                entry.name,
                scope.value,
                request.method,
                request.url.path,
            )
            raise ApiProblem(
                403,
                "forbidden",
                "Forbidden",
                f"the API key {entry.name!r} lacks the {scope.value!r} scope",
                headers={
                    "WWW-Authenticate": 'Bearer realm="linkvault", error="insufficient_scope", '
                    f'scope="{scope.value}"'
                },
            )
        return entry

    return guard


ReadKey = Annotated[ApiKeyEntry, Security(scope_guard(KeyScope.READ))]
WriteKey = Annotated[ApiKeyEntry, Security(scope_guard(KeyScope.WRITE))]
CredentialsKey = Annotated[ApiKeyEntry, Security(scope_guard(KeyScope.CREDENTIALS))]
TokenKey = Annotated[ApiKeyEntry, Security(scope_guard(KeyScope.TOKEN))]
ProxyKey = Annotated[ApiKeyEntry, Security(scope_guard(KeyScope.PROXY))]
