"""The HTTP API: JSON under /v1, bearer API keys with scopes, RFC 9457 problems for every error.

Connection responses describe credentials (type, expiry) and never carry them; the one
response that holds a secret is GET /v1/connections/{id}/credentials, and each such read
is logged with the connection id and the API key's name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import html
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from http import HTTPStatus
from pathlib import Path as PathType
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID, uuid4

import fastapi_offline
import uvicorn
from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from linkvault.access import ApiKeyEntry, ApiKeySet
from linkvault.access import Scope as KeyScope
from linkvault.connections import ConnectionService
from linkvault.credentials import (
    ApiKeyCredentials,
    CertificateCredentials,
    CredentialPayload,
    CustomCredentials,
    FileImportCredentials,
    LinkTokenCredentials,
    OAuth2Tokens,
    open_credentials,
)
from linkvault.domain import (
    MAX_ALIAS_LENGTH,
    Clock,
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    utc_now,
)
from linkvault.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    DecryptionError,
    InvalidArgumentError,
    InvalidCredentialsError,
    InvalidStateError,
    InvalidTransitionError,
    LinkvaultError,
    NotFoundError,
    StaleConnectionError,
    UnknownProviderError,
)
from linkvault.origins import MAX_RETURN_URL_LENGTH, ReturnOrigins
from linkvault.outage import OutageLog
from linkvault.providers import AuthStyle, Provider
from linkvault.refresher import Outcome, refresh_now
from linkvault.runtime import Runtime
from linkvault.serving import Server, bind_loopback, socket_url
from linkvault.settings import Settings
from linkvault.stores.common import MAX_MINUTES, ConnectionFilter

__all__ = [
    "CALLBACK_PATH",
    "RunningApi",
    "api_in_thread",
    "create_app",
    "serve",
]

log = logging.getLogger("linkvault.api")
audit = logging.getLogger("linkvault.api.audit")

CALLBACK_PATH = "/v1/oauth/callback"
HEALTH_PATH = "/v1/health"
DOCS_ASSETS = "/docs/assets"
PUBLIC_PATHS = frozenset({HEALTH_PATH, CALLBACK_PATH, "/openapi.json", "/docs"})
# Metrics label only these methods; any other is counted as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A validation problem lists at most this many fields, each name cut to a readable length.
MAX_LISTED_ERRORS = 20
MAX_ERROR_TEXT = 120
MAX_PAGE_SIZE = 500
PROBLEM_JSON = "application/problem+json"
_KEY_SCOPE = "linkvault.api_key"
_REAUTHORIZABLE = frozenset(
    {
        ConnectionStatus.PENDING,
        ConnectionStatus.EXPIRED,
        ConnectionStatus.REVOKED,
        ConnectionStatus.FAILED,
    }
)
_SLUG_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
# RFC 6749 section 3.3 scope-token characters.
_SCOPE_PATTERN = r"^[\x21\x23-\x5B\x5D-\x7E]{1,128}$"
# The If-Match values this API reads: *, "3", W/"3" or 3 (the OpenAPI schema says the same).
IF_MATCH_PATTERN = r'^\s*(?:\*|(?:W/)?"[0-9]{1,18}"|[0-9]{1,18})\s*$'
_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')
# encode_cursor's output: 16 bytes in unpadded base64url, whose last character holds 2 bits.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{21}[AQgw]$"


# --- request and response models ---------------------------------------------


def _plain_text(value: str) -> str:
    # PostgreSQL text holds no NUL, and no database stores a lone surrogate.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _return_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http or https URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in value):
        raise ValueError("must not contain whitespace, control characters or backslashes")
    if "@" in parts.netloc:
        raise ValueError("must not contain a user name or password")
    return value


def _secret_text(value: SecretStr) -> SecretStr:
    _plain_text(value.get_secret_value())
    return value


Alias = Annotated[
    str, Field(max_length=MAX_ALIAS_LENGTH, description="a name the user gave this connection")
]
ScopeToken = Annotated[str, Field(pattern=_SCOPE_PATTERN)]
ReturnTo = Annotated[
    str,
    Field(
        max_length=MAX_RETURN_URL_LENGTH,
        description="where the user's browser goes after consent: on an allowed return origin",
    ),
    AfterValidator(_return_url),
]
SecretText = Annotated[
    SecretStr, Field(min_length=1, max_length=4096), AfterValidator(_secret_text)
]


class Connection(BaseModel):
    """A connection as the API shows it: credentials are described, never included."""

    id: UUID
    user_id: UUID
    provider_id: UUID
    provider_slug: str
    alias: str | None
    status: ConnectionStatus
    status_reason: str | None
    credential_type: CredentialType | None
    expires_at: datetime | None = Field(description="when the credentials expire; null = never")
    connected_at: datetime | None
    last_sync_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int = Field(ge=0, description="optimistic-concurrency version; also the ETag")

    @classmethod
    def of(cls, c: ProviderConnection) -> Connection:
        creds = c.credentials
        return cls(
            id=c.id,
            user_id=c.user_id,
            provider_id=c.provider_id,
            provider_slug=c.provider_slug,
            alias=c.alias,
            status=c.status,
            status_reason=c.status_reason,
            credential_type=creds.credential_type if creds else None,
            expires_at=creds.expires_at if creds else None,
            connected_at=c.connected_at,
            last_sync_at=c.last_sync_at,
            created_at=c.created_at,
            updated_at=c.updated_at,
            version=c.version,
        )


class ConnectionRef(BaseModel):
    """What a write answers to a key without the `read` scope: which connection, which version."""

    id: UUID
    version: int = Field(ge=0, description="optimistic-concurrency version; also the ETag")


def _shown(conn: ProviderConnection, key: ApiKeyEntry) -> Connection | ConnectionRef:
    """A write's answer carries no more than the key could read."""
    if key.allows(KeyScope.READ):
        return Connection.of(conn)
    return ConnectionRef(id=conn.id, version=conn.version)


class ConnectionPage(BaseModel):
    """One page of connections; pass `next_cursor` as `cursor` for the next one."""

    items: list[Connection]
    next_cursor: str | None


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartConnection(_Input):
    """Start a connection: OAuth2 providers get an authorize URL, API-key providers the key."""

    user_id: UUID
    provider: Annotated[str, Field(pattern=_SLUG_PATTERN, description="the provider's slug")]
    alias: Annotated[Alias | None, AfterValidator(lambda v: v and _plain_text(v))] = None
    scopes: list[ScopeToken] | None = Field(default=None, max_length=50)
    return_to: ReturnTo | None = None
    api_key: SecretText | None = None
    api_secret: SecretText | None = None


class ReconnectConnection(_Input):
    """Reconnect: OAuth2 connections go through consent again; API-key ones take a new key."""

    scopes: list[ScopeToken] | None = Field(default=None, max_length=50)
    return_to: ReturnTo | None = None
    api_key: SecretText | None = None
    api_secret: SecretText | None = None


class UpdateConnection(_Input):
    """Set (or, with null, clear) the alias; `version` or If-Match makes the change conditional."""

    alias: Annotated[Alias | None, AfterValidator(lambda v: v and _plain_text(v))]
    version: int | None = Field(default=None, ge=1, le=2**62)


class StartedConnection(BaseModel):
    """A started connection; `authorize_url` is where to send the user (OAuth2 only)."""

    connection: Connection | ConnectionRef
    authorize_url: str | None


class RefreshResult(BaseModel):
    """How an immediate refresh ended, and the connection afterwards."""

    outcome: Outcome
    connection: Connection | ConnectionRef


class OAuth2TokensPayload(BaseModel):
    type: Literal["oauth2"] = "oauth2"
    access_token: str
    refresh_token: str | None
    token_type: str
    scope: str | None
    expires_at: datetime | None


class ApiKeyPayload(BaseModel):
    type: Literal["api_key"] = "api_key"
    api_key: str
    api_secret: str | None


class LinkTokenPayload(BaseModel):
    type: Literal["link_token"] = "link_token"
    access_token: str
    item_id: str
    expires_at: datetime | None


class CertificatePayload(BaseModel):
    type: Literal["certificate"] = "certificate"
    certificate_pem: str
    private_key_pem: str


class FileImportPayload(BaseModel):
    type: Literal["file_import"] = "file_import"
    source: str
    passphrase: str | None


class CustomPayload(BaseModel):
    type: Literal["custom"] = "custom"
    values: dict[str, str]


RevealedPayload = Annotated[
    OAuth2TokensPayload
    | ApiKeyPayload
    | LinkTokenPayload
    | CertificatePayload
    | FileImportPayload
    | CustomPayload,
    Field(discriminator="type"),
]
_PAYLOAD_MODELS: Mapping[type[CredentialPayload], type[BaseModel]] = {
    OAuth2Tokens: OAuth2TokensPayload,
    ApiKeyCredentials: ApiKeyPayload,
    LinkTokenCredentials: LinkTokenPayload,
    CertificateCredentials: CertificatePayload,
    FileImportCredentials: FileImportPayload,
    CustomCredentials: CustomPayload,
}


class RevealedCredentials(BaseModel):
    """A connection's decrypted credentials: the one response that holds a secret."""

    connection_id: UUID
    credential_type: CredentialType
    expires_at: datetime | None
    payload: RevealedPayload


class ProviderInfo(BaseModel):
    """A provider linkvault can connect to."""

    id: UUID
    slug: str
    display_name: str
    auth_style: AuthStyle
    scopes: list[str]
    refreshes: bool
    configured: bool = Field(description="whether linkvault holds client credentials for it")


class ProviderList(BaseModel):
    items: list[ProviderInfo]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class Problem(BaseModel):
    """An RFC 9457 problem detail."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URI reference naming the kind of problem")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(default=None, description="the request path")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    """A 422 problem listing the offending fields (the first few, when there are many)."""

    errors: list[FieldError]
    errors_omitted: int | None = Field(
        default=None, ge=1, description="how many more fields were invalid than are listed"
    )


# --- problems ----------------------------------------------------------------


class ApiProblem(Exception):  # noqa: N818 - an answer to send, raised from anywhere
    """An error response: becomes an RFC 9457 problem (or an HTML page on the callback)."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def _problem_body(
    status: int, kind: str, title: str, detail: str | None, path: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank" if kind == "about:blank" else f"urn:linkvault:problem:{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": path,
    }
    body.update(extra)
    return body


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return request.url.path == CALLBACK_PATH and "text/html" in accept


def problem_response(request: Request, problem: ApiProblem) -> Response:
    """The response for `problem`: problem+json, or an HTML page for a browser on the callback."""
    if _wants_html(request):
        return HTMLResponse(
            _page(problem.title, f'<p id="error">{html.escape(problem.detail or "")}</p>'),
            status_code=problem.status,
            headers=problem.headers,
        )
    body = _problem_body(
        problem.status, problem.kind, problem.title, problem.detail, request.url.path, problem.extra
    )
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def _unauthorized(detail: str, *, token_given: bool) -> ApiProblem:
    challenge = 'Bearer realm="linkvault"'
    if token_given:
        challenge += ', error="invalid_token"'
    return ApiProblem(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge}
    )


def _not_found(connection_id: UUID) -> ApiProblem:
    return ApiProblem(404, "not-found", "Not Found", f"connection {connection_id} not found")


def _conflict(kind: str, detail: str, **extra: Any) -> ApiProblem:
    return ApiProblem(409, kind, "Conflict", detail, extra=extra)


def _invalid(
    detail: str, loc: Sequence[str | int], msg: str, kind: str = "value_error"
) -> ApiProblem:
    return ApiProblem(
        422,
        "validation-error",
        "Unprocessable Content",
        detail,
        extra={"errors": [{"loc": list(loc), "msg": msg, "type": kind}]},
    )


def _translate(exc: LinkvaultError) -> ApiProblem | None:
    """The problem a library error becomes; None for an error that is a bug (a 500)."""
    if isinstance(exc, NotFoundError):
        return _not_found(exc.connection_id)
    if isinstance(exc, StaleConnectionError):
        return _conflict(
            "stale-connection",
            f"connection {exc.connection_id} was changed meanwhile: reload it and try again",
        )
    if isinstance(exc, InvalidTransitionError):
        return _conflict("invalid-transition", str(exc), current_status=exc.current)
    if isinstance(exc, DatabaseError):
        # The driver's message stays in the log: it may name hosts, tables or queries.
        return ApiProblem(
            503,
            "database-unavailable",
            "Service Unavailable",
            "the database is unavailable; retry shortly",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, InvalidStateError):
        return ApiProblem(400, "invalid-state", "Bad Request", str(exc))
    if isinstance(exc, UnknownProviderError):
        return _invalid(str(exc), ["body", "provider"], "unknown provider", "unknown_provider")
    if isinstance(exc, InvalidArgumentError):
        if exc.field is not None:
            return _invalid(str(exc), ["body", exc.field], "not accepted")
        return ApiProblem(
            422, "validation-error", "Unprocessable Content", str(exc), extra={"errors": []}
        )
    if isinstance(exc, DecryptionError):
        return ApiProblem(
            500,
            "decryption-failed",
            "Internal Server Error",
            "the stored credentials could not be decrypted with the configured keys",
        )
    if isinstance(exc, ConfigurationError):
        # Configuration messages are written for operators and name settings, never values.
        return ApiProblem(503, "not-configured", "Service Unavailable", str(exc))
    return None


def _internal(request: Request, exc: BaseException) -> Response:
    error_id = uuid4().hex
    log.error(
        "unhandled %s on %s %s (error id %s)",
        type(exc).__name__,
        request.method,
        request.url.path,
        error_id,
        exc_info=exc,
    )
    return problem_response(
        request,
        ApiProblem(
            500,
            "internal-error",
            "Internal Server Error",
            "linkvault failed unexpectedly; the error id is in its log",
            extra={"error_id": error_id},
        ),
    )


async def _on_api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return problem_response(request, exc)


async def _on_linkvault_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LinkvaultError)
    problem = _translate(exc)
    if problem is None:
        return _internal(request, exc)
    outage = getattr(request.app.state, "outage", None)
    if isinstance(exc, DatabaseError) and isinstance(outage, OutageLog):
        outage.failure(exc)  # one line when an outage starts, not one per request
    elif problem.status >= 500:
        log.warning(
            "%s %s answered %d: %s: %s",
            request.method,
            request.url.path,
            problem.status,
            type(exc).__name__,
            exc,
        )
    return problem_response(request, problem)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: the offending input may be a secret (an API key in a body). A body
    # of many unknown fields gets a short answer: the first few fields, then how many more.
    found = exc.errors()
    errors = [
        {
            "loc": [_cut(str(p)) if not isinstance(p, int) else p for p in e.get("loc", ())],
            "msg": _cut(str(e.get("msg", ""))),
            "type": _cut(str(e.get("type", ""))),
        }
        for e in found[:MAX_LISTED_ERRORS]
    ]
    fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]) for e in errors)
    omitted = len(found) - len(errors)
    if omitted:
        fields += f" and {omitted} more"
    extra: dict[str, Any] = {"errors": errors}
    if omitted:
        extra["errors_omitted"] = omitted
    return problem_response(
        request,
        ApiProblem(
            422,
            "validation-error",
            "Unprocessable Content",
            f"invalid input: {fields}" if fields else "invalid input",
            extra=extra,
        ),
    )


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "Error"
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path; a path has several.
        headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
    return problem_response(
        request, ApiProblem(exc.status_code, "about:blank", title, detail, headers=headers)
    )


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route answers on this scope's path; HEAD wherever GET is."""
    methods: set[str] = set()
    probe = {**scope, "method": "GET"}
    for route in routes:
        match, _ = route.matches(probe)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


# --- middleware --------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _send_problem(scope: Scope, send: Send, problem: ApiProblem) -> None:
    body = _problem_body(
        problem.status,
        problem.kind,
        problem.title,
        problem.detail,
        scope.get("path", ""),
        problem.extra,
    )
    response = JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


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
        header = _header(scope, b"authorization")
        if not header:
            await _send_problem(
                scope,
                send,
                _unauthorized(
                    "an API key is required: Authorization: Bearer <key>", token_given=False
                ),
            )
            return
        kind, _, token = header.partition(" ")
        entry = self.keys.authenticate(token.strip()) if kind.lower() == "bearer" else None
        if entry is None:
            await _send_problem(
                scope, send, _unauthorized("the API key is not valid", token_given=True)
            )
            return
        scope[_KEY_SCOPE] = entry
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads a request body only up to `max_bytes`; a larger one is a 413, unread beyond that.

    The body is read here, before any route parses it, and handed on in one piece.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_problem(scope, send, self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left: the app gets the disconnect as the first message
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _send_problem(scope, send, self._too_large())
                return
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": bytes(body)}
                break
        pending = [message]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiProblem:
        return ApiProblem(
            413,
            "body-too-large",
            "Content Too Large",
            f"a request body may hold at most {self.max_bytes} bytes",
            headers={"Connection": "close"},
            extra={"max_bytes": self.max_bytes},
        )


class HeadAsGetMiddleware:
    """HEAD is answered as GET would be; the server sends the headers without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "HEAD":
            # A copy: the server reads the method from its own scope to leave the body out.
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


class OutageMiddleware:
    """Tells the outage log that the database answered: a 2xx from a route that needs it."""

    def __init__(self, app: ASGIApp, outage: OutageLog, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.outage = outage
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefixes):
            await self.app(scope, receive, send)
            return

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.outage.success()
            await send(message)

        await self.app(scope, receive, watching_send)


class CatchAllMiddleware:
    """Turns an exception no handler took into a 500 problem that names no internals."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            response = _internal(Request(scope), exc)
            await response(scope, receive, send)


class HttpMetrics:
    """Request counters and latency histograms in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "linkvault_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "linkvault_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class MetricsMiddleware:
    """Counts and times every request under its route template; logs it without the query."""

    def __init__(
        self, app: ASGIApp, metrics: HttpMetrics, routes: Callable[[], Sequence[Any]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            elapsed = time.perf_counter() - started
            route = self._route(scope)
            method = str(scope.get("method", ""))
            if method not in HTTP_METHODS:
                method = "other"  # a made-up method must not add a series per spelling
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            # The path only: a callback's query carries the authorization code and state.
            log.debug("%s %s %d %.1fms", method, scope.get("path", ""), status, elapsed * 1000)

    def _route(self, scope: Scope) -> str:
        # A route template, or one bucket for every path no route has: never the raw path.
        route = scope.get("route")
        if route is None:
            probe = {**scope, "method": "GET"}
            for candidate in self.routes():
                match, _ = candidate.matches(probe)
                if match is not Match.NONE:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return str(path) if path else "<unmatched>"


class RefreshCollector(Collector):
    """The refresh worker's counters and backlog gauges, read at scrape time."""

    def __init__(self, runtime: Runtime, worker_running: Callable[[], bool]) -> None:
        self.runtime = runtime
        self.worker_running = worker_running

    def collect(self) -> Iterator[Metric]:
        m = self.runtime.worker.metrics
        yield CounterMetricFamily(
            "linkvault_refresh_refreshed", "Connections refreshed", value=m.refreshed
        )
        failed = CounterMetricFamily(
            "linkvault_refresh_failed", "Refresh attempts that failed, by class", labels=["class"]
        )
        for outcome in Outcome:
            if outcome is not Outcome.REFRESHED:
                failed.add_metric([outcome.value], m.outcomes[outcome])
        yield failed
        yield CounterMetricFamily("linkvault_refresh_claimed", "Leases taken", value=m.claimed)
        yield CounterMetricFamily("linkvault_refresh_batches", "Batches claimed", value=m.batches)
        yield GaugeMetricFamily(
            "linkvault_refresh_due_unclaimed",
            "Connections due for refresh that no worker holds a lease on",
            value=m.due_unclaimed,
        )
        yield GaugeMetricFamily(
            "linkvault_refresh_oldest_overdue_seconds",
            "How long the most overdue connection has been past its refresh time",
            value=m.oldest_overdue_seconds,
        )
        yield GaugeMetricFamily(
            "linkvault_refresh_worker_running",
            "Whether this process runs the refresh worker",
            value=1 if self.worker_running() else 0,
        )


# --- helpers ----------------------------------------------------------------


def encode_cursor(connection_id: UUID) -> str:
    """An opaque cursor for the page after `connection_id`."""
    return base64.urlsafe_b64encode(connection_id.bytes).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> UUID:
    """The connection id a cursor stands for; raises ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("malformed cursor") from None
    if len(raw) != 16 or encode_cursor(UUID(bytes=raw)) != cursor:
        raise ValueError("malformed cursor")
    return UUID(bytes=raw)


def _etag(conn: ProviderConnection) -> dict[str, str]:
    return {"ETag": f'"{conn.version}"'}


def _payload_out(payload: CredentialPayload) -> BaseModel:
    values = {f.name: getattr(payload, f.name) for f in dataclasses.fields(payload)}
    if isinstance(payload, CustomCredentials):
        values = {"values": dict(payload.values)}
    return _PAYLOAD_MODELS[type(payload)].model_validate(values)


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>linkvault: {html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _api_key_credentials(
    api_key: SecretStr | None, api_secret: SecretStr | None
) -> ApiKeyCredentials:
    if api_key is None:
        raise _invalid(
            "this provider connects with an API key: send api_key",
            ["body", "api_key"],
            "Field required",
            "missing",
        )
    try:
        return ApiKeyCredentials(
            api_key.get_secret_value(), api_secret.get_secret_value() if api_secret else None
        )
    except InvalidCredentialsError as exc:
        # The message names the field, never its value.
        raise _invalid(str(exc), ["body", "api_key"], "invalid credentials") from None


def _reject_key_for_oauth(body: StartConnection | ReconnectConnection, provider: Provider) -> None:
    if body.api_key is not None or body.api_secret is not None:
        raise _invalid(
            f"provider {provider.slug!r} connects through OAuth2: do not send an API key",
            ["body", "api_key"],
            "not accepted for an OAuth2 provider",
        )


def _reject_oauth_fields(body: StartConnection | ReconnectConnection, provider: Provider) -> None:
    for name in ("scopes", "return_to"):
        if getattr(body, name) is not None:
            raise _invalid(
                f"provider {provider.slug!r} does not use OAuth2: {name} does not apply",
                ["body", name],
                "only for OAuth2 providers",
            )


def _one_version(body: int | None, header: int | None) -> int | None:
    if body is not None and header is not None and body != header:
        raise ApiProblem(
            422,
            "validation-error",
            "Unprocessable Content",
            f"the body's version {body} and If-Match {header} disagree: send one of them",
            extra={
                "errors": [
                    {
                        "loc": ["body", "version"],
                        "msg": "disagrees with If-Match",
                        "type": "value_error",
                    },
                    {
                        "loc": ["header", "If-Match"],
                        "msg": "disagrees with version",
                        "type": "value_error",
                    },
                ]
            },
        )
    return body if body is not None else header


def _precondition_failed(exc: StaleConnectionError) -> ApiProblem:
    return ApiProblem(
        412,
        "precondition-failed",
        "Precondition Failed",
        f"connection {exc.connection_id} is no longer at version {exc.expected_version}: "
        "reload it and try again",
    )


def _parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.match(value)
    if match is None:
        raise _invalid(
            'If-Match must be an ETag this API issued, like "3"',
            ["header", "If-Match"],
            "malformed ETag",
        )
    return int(match.group(1))


# --- the app -------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, scheme_name="bearerAuth", description="an API key")
_Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
ConnectionId = Annotated[UUID, Path(description="the connection's id")]

_E400 = {"model": Problem, "description": "a body that cannot be parsed"}
_E401 = {"model": Problem, "description": "no API key, or an unknown one"}
_E403 = {"model": Problem, "description": "the API key lacks the scope"}
_E404 = {"model": Problem, "description": "no such connection"}
_E409 = {"model": Problem, "description": "stale version, or not allowed in the current status"}
_E412 = {"model": Problem, "description": "If-Match names a version that is no longer current"}
_E422 = {"model": ValidationProblem, "description": "invalid input"}
_E500 = {"model": Problem, "description": "internal error"}
_E503 = {"model": Problem, "description": "the database is unavailable"}
_E413 = {"model": Problem, "description": "the request body is larger than the limit"}
_COMMON: dict[int | str, dict[str, Any]] = {
    401: _E401,
    403: _E403,
    413: _E413,
    422: _E422,
    500: _E500,
    503: _E503,
}


# Providers add their own parameters to the callback (iss, error_description, ...).
_ANY_QUERY = frozenset({CALLBACK_PATH, HEALTH_PATH})
_QUERY_NAMES: dict[int, frozenset[str]] = {}


async def _known_query_only(request: Request) -> None:
    """Unknown query parameters are refused: a mistyped filter must not widen a listing."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.path in _ANY_QUERY:
        return
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        names = _QUERY_NAMES[id(route)] = frozenset(_query_names(route.dependant))
    unknown = sorted(set(request.query_params) - names)
    if unknown:
        raise ApiProblem(
            422,
            "validation-error",
            "Unprocessable Content",
            f"unknown query parameter(s): {', '.join(map(repr, unknown))}",
            extra={
                "errors": [
                    {
                        "loc": ["query", n],
                        "msg": "unknown query parameter",
                        "type": "extra_forbidden",
                    }
                    for n in unknown
                ]
            },
        )


def _query_names(dependant: Dependant) -> Iterator[str]:
    yield from (param.alias for param in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _query_names(sub)


def _page_or_problem(description: str, model: str) -> dict[str, Any]:
    # The callback answers browsers with a page and other clients with a problem.
    return {
        "description": description,
        "content": {
            "text/html": {"schema": {"type": "string"}},
            PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{model}"}},
        },
    }


def _scope_guard(
    scope: KeyScope,
) -> Callable[[Request, HTTPAuthorizationCredentials | None], Awaitable[ApiKeyEntry]]:
    async def guard(request: Request, _credentials: _Bearer) -> ApiKeyEntry:
        entry = request.scope.get(_KEY_SCOPE)
        if not isinstance(entry, ApiKeyEntry):
            raise _unauthorized(
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


ReadKey = Annotated[ApiKeyEntry, Security(_scope_guard(KeyScope.READ))]
WriteKey = Annotated[ApiKeyEntry, Security(_scope_guard(KeyScope.WRITE))]
CredentialsKey = Annotated[ApiKeyEntry, Security(_scope_guard(KeyScope.CREDENTIALS))]


def create_app(
    runtime: Runtime,
    access: ApiKeySet,
    *,
    run_worker: bool = False,
    public_docs: bool = True,
) -> FastAPI:
    """The API on `runtime`; with `run_worker` its lifespan also runs the refresh worker."""
    worker_state: dict[str, bool] = {"running": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not run_worker:
            yield
            return
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.worker.run(stop), name="linkvault-refresh-worker")
        worker_state["running"] = True
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, timeout=runtime.settings.refresh_timeout_seconds + 10)
            except TimeoutError:
                log.warning("the refresh worker did not stop in time; cancelled")
            worker_state["running"] = False

    app = FastAPI(
        title="linkvault",
        version="1",
        summary="Users' connections to external data providers, with encrypted credentials.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        dependencies=[Depends(_known_query_only)],
        # A redirect to the slash-less path would be built from the Host header.
        redirect_slashes=False,
    )
    app.state.outage = OutageLog(log, "the database", clock=runtime.clock)
    store = runtime.store
    connections = ConnectionService(store, clock=runtime.clock)
    redirect_uri = runtime.settings.base_url + CALLBACK_PATH

    async def load(connection_id: UUID) -> ProviderConnection:
        return await connections.get(connection_id)

    def provider_of(conn: ProviderConnection) -> Provider:
        try:
            return runtime.registry.by_id(conn.provider_id)
        except UnknownProviderError:
            raise _conflict(
                "unknown-provider",
                f"provider {conn.provider_slug!r} of this connection is no longer configured",
            ) from None

    # --- connections ---------------------------------------------------------

    @app.get(
        "/v1/connections",
        response_model=ConnectionPage,
        tags=["connections"],
        summary="List connections",
        description="Scope `read`. Connections in id order, filtered, one page at a time.",
        responses=_COMMON,
    )
    async def list_connections(
        _key: ReadKey,
        user_id: UUID | None = None,
        provider: Annotated[
            str | None, Query(max_length=100, description="a provider slug or id")
        ] = None,
        status: ConnectionStatus | None = None,
        expiring_within: Annotated[
            int | None,
            Query(ge=0, le=MAX_MINUTES, description="only active ones expiring within N minutes"),
        ] = None,
        cursor: Annotated[
            str | None, Query(pattern=CURSOR_PATTERN, description="a next_cursor from a page")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    ) -> ConnectionPage:
        provider_id: UUID | None = None
        if provider is not None:
            try:
                provider_id = UUID(provider)
            except ValueError:
                try:
                    provider_id = runtime.registry.get(provider).id
                except UnknownProviderError:
                    raise _invalid(
                        f"no provider {provider!r}",
                        ["query", "provider"],
                        "unknown provider",
                        "unknown_provider",
                    ) from None
        after: UUID | None = None
        if cursor is not None:
            try:
                after = decode_cursor(cursor)
            except ValueError:
                raise _invalid(
                    "the cursor is not one this API issued", ["query", "cursor"], "malformed cursor"
                ) from None
        expiring_before = (
            None
            if expiring_within is None
            else runtime.clock() + timedelta(minutes=expiring_within)
        )
        where = ConnectionFilter(user_id, provider_id, status, expiring_before)
        rows = await store.list_connections(where, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return ConnectionPage(
            items=[Connection.of(c) for c in rows],
            next_cursor=encode_cursor(rows[-1].id) if more else None,
        )

    @app.get(
        "/v1/connections/{connection_id}",
        response_model=Connection,
        tags=["connections"],
        summary="Get a connection",
        description="Scope `read`. The ETag header holds the version, for If-Match.",
        responses={**_COMMON, 404: _E404},
    )
    async def get_connection(
        connection_id: ConnectionId, response: Response, _key: ReadKey
    ) -> Connection:
        conn = await load(connection_id)
        response.headers.update(_etag(conn))
        return Connection.of(conn)

    @app.post(
        "/v1/connections",
        response_model=StartedConnection,
        status_code=201,
        tags=["connections"],
        summary="Start a connection",
        description=(
            "Scope `write`. For an OAuth2 provider: a pending connection and the URL to send "
            "the user to. For an API-key provider: an active connection at once."
        ),
        responses={**_COMMON, 400: _E400, 409: _E409},
    )
    async def start_connection(
        body: Annotated[StartConnection, Body()], response: Response, key: WriteKey
    ) -> StartedConnection:
        try:
            provider = runtime.registry.get(body.provider)
        except UnknownProviderError:
            raise _invalid(
                f"no provider {body.provider!r}",
                ["body", "provider"],
                "unknown provider",
                "unknown_provider",
            ) from None
        if provider.auth_style is AuthStyle.OAUTH2:
            _reject_key_for_oauth(body, provider)
            started = await runtime.connect.start_oauth(
                user_id=body.user_id,
                provider_slug=provider.slug,
                redirect_uri=redirect_uri,
                alias=body.alias,
                scopes=body.scopes,
                return_to=body.return_to,
            )
            conn, url = started.connection, started.authorize_url
        elif provider.auth_style is AuthStyle.API_KEY:
            _reject_oauth_fields(body, provider)
            conn = await runtime.connect.connect_with_credentials(
                user_id=body.user_id,
                provider_slug=provider.slug,
                credentials=_api_key_credentials(body.api_key, body.api_secret),
                alias=body.alias,
            )
            url = None
        else:
            raise _invalid(
                f"provider {provider.slug!r} ({provider.auth_style.value}) cannot be connected "
                "through the API yet",
                ["body", "provider"],
                "unsupported auth style",
            )
        response.headers["Location"] = f"/v1/connections/{conn.id}"
        response.headers.update(_etag(conn))
        return StartedConnection(connection=_shown(conn, key), authorize_url=url)

    @app.post(
        "/v1/connections/{connection_id}/reconnect",
        response_model=StartedConnection,
        tags=["connections"],
        summary="Reconnect a connection",
        description=(
            "Scope `write`. A pending, expired, revoked or failed OAuth2 connection gets a new "
            "authorize URL; an API-key connection takes a new key and is active at once."
        ),
        responses={**_COMMON, 400: _E400, 404: _E404, 409: _E409},
    )
    async def reconnect(
        connection_id: ConnectionId,
        key: WriteKey,
        body: Annotated[ReconnectConnection | None, Body()] = None,
    ) -> StartedConnection:
        body = body or ReconnectConnection()
        conn = await load(connection_id)
        provider = provider_of(conn)
        if conn.status not in _REAUTHORIZABLE:
            raise _conflict(
                "invalid-transition",
                f"cannot reconnect a {conn.status.value} connection",
                current_status=conn.status.value,
            )
        if provider.auth_style is AuthStyle.OAUTH2:
            _reject_key_for_oauth(body, provider)
            started = await runtime.connect.reconnect(
                connection_id,
                redirect_uri=redirect_uri,
                scopes=body.scopes,
                return_to=body.return_to,
            )
            return StartedConnection(
                connection=_shown(started.connection, key), authorize_url=started.authorize_url
            )
        _reject_oauth_fields(body, provider)
        if provider.auth_style is not AuthStyle.API_KEY:
            raise _invalid(
                f"provider {provider.slug!r} cannot be reconnected through the API yet",
                ["path", "connection_id"],
                "unsupported auth style",
            )
        credentials = _api_key_credentials(body.api_key, body.api_secret)
        conn = await runtime.connect.reconnect_with_credentials(connection_id, credentials)
        return StartedConnection(connection=_shown(conn, key), authorize_url=None)

    @app.patch(
        "/v1/connections/{connection_id}",
        response_model=Connection | ConnectionRef,
        tags=["connections"],
        summary="Rename a connection",
        description=(
            "Scope `write`. Sets or clears (null) the alias. Without a version the rename "
            "applies to whatever version is current. With an If-Match header, a connection "
            "changed since that version is left alone (412); with `version` in the body, "
            "likewise (409); both at once must agree (422). A key without `read` gets only "
            "the id and the version back."
        ),
        responses={**_COMMON, 400: _E400, 404: _E404, 409: _E409, 412: _E412},
    )
    async def update_connection(
        connection_id: ConnectionId,
        body: Annotated[UpdateConnection, Body()],
        response: Response,
        key: WriteKey,
        if_match: Annotated[
            str | None, Header(alias="If-Match", pattern=IF_MATCH_PATTERN, max_length=24)
        ] = None,
    ) -> Connection | ConnectionRef:
        header_version = _parse_if_match(if_match)
        expected = _one_version(body.version, header_version)
        try:
            conn = await connections.rename(connection_id, body.alias, expected_version=expected)
        except StaleConnectionError as exc:
            if header_version is None:
                raise
            raise _precondition_failed(exc) from None
        response.headers.update(_etag(conn))
        return _shown(conn, key)

    @app.post(
        "/v1/connections/{connection_id}/refresh",
        response_model=RefreshResult,
        tags=["connections"],
        summary="Refresh a connection now",
        description=(
            "Scope `write`. Refreshes an active OAuth2 connection at once; `outcome` says how "
            "it went (a refused grant leaves the connection expired or revoked). 409 when the "
            "connection is not active, cannot refresh, or a refresh is already running."
        ),
        responses={**_COMMON, 404: _E404, 409: _E409},
    )
    async def refresh(connection_id: ConnectionId, key: WriteKey) -> RefreshResult:
        conn = await load(connection_id)
        if conn.status is not ConnectionStatus.ACTIVE:
            raise _conflict(
                "invalid-transition",
                f"cannot refresh a {conn.status.value} connection",
                current_status=conn.status.value,
            )
        provider = provider_of(conn)
        creds = conn.credentials
        if (
            provider.auth_style is not AuthStyle.OAUTH2
            or not provider.refreshes
            or creds is None
            or not creds.supports_refresh
        ):
            raise _conflict(
                "not-refreshable", f"the credentials of provider {provider.slug!r} do not refresh"
            )
        outcome = await refresh_now(runtime.worker, connection_id)
        after = await load(connection_id)
        if outcome is None:
            if after.status is not ConnectionStatus.ACTIVE:
                raise _conflict(
                    "invalid-transition",
                    f"cannot refresh a {after.status.value} connection",
                    current_status=after.status.value,
                )
            raise _conflict(
                "refresh-in-progress", "a refresh of this connection is already running"
            )
        return RefreshResult(outcome=outcome, connection=_shown(after, key))

    @app.post(
        "/v1/connections/{connection_id}/disconnect",
        response_model=Connection | ConnectionRef,
        tags=["connections"],
        summary="Disconnect a connection",
        description="Scope `write`. Soft delete: the record stays, the credentials are dropped.",
        responses={**_COMMON, 404: _E404, 409: _E409},
    )
    async def disconnect(
        connection_id: ConnectionId, response: Response, key: WriteKey
    ) -> Connection | ConnectionRef:
        conn = await connections.disconnect(connection_id)
        response.headers.update(_etag(conn))
        return _shown(conn, key)

    @app.delete(
        "/v1/connections/{connection_id}",
        status_code=204,
        response_class=Response,
        tags=["connections"],
        summary="Delete a connection",
        description="Scope `write`. Hard delete, for good.",
        responses={**_COMMON, 404: _E404},
    )
    async def delete(connection_id: ConnectionId, _key: WriteKey) -> Response:
        await store.delete(connection_id)
        return Response(status_code=204)

    @app.get(
        "/v1/connections/{connection_id}/credentials",
        response_model=RevealedCredentials,
        tags=["credentials"],
        summary="Read a connection's decrypted credentials",
        description=(
            "Scope `credentials`. The only response that holds a secret; every read is logged "
            "with the connection id and the API key's name. 409 when it holds none."
        ),
        responses={**_COMMON, 404: _E404, 409: _E409},
    )
    async def read_credentials(
        connection_id: ConnectionId, response: Response, key: CredentialsKey
    ) -> RevealedCredentials:
        conn = await load(connection_id)
        if conn.credentials is None:
            raise _conflict(
                "no-credentials", f"a {conn.status.value} connection holds no credentials"
            )
        payload = open_credentials(conn.credentials, connection_id=conn.id, cipher=runtime.cipher)
        audit.info(
            "credentials read connection_id=%s api_key=%s credential_type=%s",
            conn.id,
            key.name,
            conn.credentials.credential_type.value,
            extra={
                "connection_id": str(conn.id),
                "api_key": key.name,
                "credential_type": conn.credentials.credential_type.value,
            },
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return RevealedCredentials(
            connection_id=conn.id,
            credential_type=conn.credentials.credential_type,
            expires_at=conn.credentials.expires_at,
            payload=_payload_out(payload),  # type: ignore[arg-type]
        )

    # --- OAuth2 callback -----------------------------------------------------

    @app.get(
        CALLBACK_PATH,
        tags=["oauth"],
        summary="OAuth2 callback",
        description=(
            "No API key: the single-use state protects it. Success redirects (303) to the "
            "`return_to` given at start, or shows a page; failure answers 400 with the reason."
        ),
        response_class=HTMLResponse,
        responses={
            200: {
                "description": "connected",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            303: {"description": "connected; back to the application's return_to"},
            400: _page_or_problem("the authorization failed", "Problem"),
            422: _page_or_problem("invalid input", "ValidationProblem"),
            500: _page_or_problem("internal error", "Problem"),
            503: _page_or_problem("the database is unavailable", "Problem"),
        },
    )
    async def oauth_callback(
        request: Request,
        state: Annotated[str | None, Query(max_length=512)] = None,
        code: Annotated[str | None, Query(max_length=2048)] = None,
        error: Annotated[str | None, Query(max_length=200, pattern=r"^[\x20-\x7E]*$")] = None,
    ) -> Response:
        result = await runtime.connect.complete_oauth(state=state or "", code=code, error=error)
        conn = result.connection
        if not result.succeeded:
            link = ""
            if result.return_to:
                href = html.escape(result.return_to)
                link = f'<p><a id="return" href="{href}">Back to the application</a></p>'
            problem = ApiProblem(
                400,
                "authorization-failed",
                "Connection failed",
                result.error,
                extra={"connection_id": str(conn.id), "connection_status": conn.status.value},
            )
            if _wants_html(request):
                body = (
                    f'<p id="error">{html.escape(result.error or "")}</p>'
                    f'<p>Connection <code id="connection-id">{conn.id}</code> is '
                    f'<strong id="status">{conn.status.value}</strong>.</p>{link}'
                )
                return HTMLResponse(_page("Connection failed", body), status_code=400)
            return problem_response(request, problem)
        if result.return_to:
            target = _with_query(
                result.return_to, {"connection_id": str(conn.id), "status": conn.status.value}
            )
            return RedirectResponse(target, status_code=303)
        body = (
            f"<p>The connection to {html.escape(conn.provider_slug)} is "
            f'<strong id="status">{conn.status.value}</strong>.</p>'
            f'<p>Connection id: <code id="connection-id">{conn.id}</code></p>'
            "<p>You can close this window.</p>"
        )
        return HTMLResponse(_page("Connected", body))

    # --- docs ---------------------------------------------------------------------

    app.mount(DOCS_ASSETS, StaticFiles(directory=_swagger_ui_assets()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # The validator badge would send the schema to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    # --- providers, health, metrics ------------------------------------------

    @app.get(
        "/v1/providers",
        response_model=ProviderList,
        tags=["providers"],
        summary="List providers",
        description="Scope `read`.",
        responses={401: _E401, 403: _E403, 422: _E422, 500: _E500},
    )
    async def list_providers(_key: ReadKey) -> ProviderList:
        return ProviderList(
            items=[
                ProviderInfo(
                    id=p.id,
                    slug=p.slug,
                    display_name=p.display_name,
                    auth_style=p.auth_style,
                    scopes=list(p.scopes),
                    refreshes=p.refreshes,
                    configured=p.configured,
                )
                for p in runtime.registry
            ]
        )

    @app.get(
        HEALTH_PATH,
        response_model=Health,
        tags=["operations"],
        summary="Health",
        description="No API key. 200 when the database answers, 503 when it does not.",
        responses={500: _E500, 503: _E503},
    )
    async def health() -> Health:
        try:
            async with asyncio.timeout(5):
                await store.schema_version()
        except TimeoutError:
            raise DatabaseUnavailableError("health check timed out") from None
        return Health(status="ok", database="ok")

    registry = CollectorRegistry(auto_describe=True)
    http_metrics = HttpMetrics(registry)
    registry.register(RefreshCollector(runtime, lambda: worker_state["running"]))

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        description="Scope `read`. Prometheus text format.",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}}},
            401: _E401,
            403: _E403,
            422: _E422,
            500: _E500,
        },
    )
    async def metrics(_key: ReadKey) -> Response:
        if not worker_state["running"]:
            # Without a worker here, the backlog gauges would never move: read them now.
            try:
                async with asyncio.timeout(2):
                    await runtime.worker.update_gauges()
            except (DatabaseError, TimeoutError) as exc:
                log.debug("metrics: backlog gauges not updated: %s", type(exc).__name__)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    # --- errors, middleware, schema ----------------------------------------

    app.add_exception_handler(ApiProblem, _on_api_problem)
    app.add_exception_handler(LinkvaultError, _on_linkvault_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    public = PUBLIC_PATHS if public_docs else frozenset({HEALTH_PATH, CALLBACK_PATH})
    # Added innermost first: metrics see every answer, 401s and 500s included; a body is
    # read only for a known key, and only up to the limit.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.max_body_bytes)
    app.add_middleware(
        AuthMiddleware,
        keys=access,
        public=public,
        public_prefixes=(f"{DOCS_ASSETS}/",) if public_docs else (),
    )
    app.add_middleware(
        OutageMiddleware,
        outage=app.state.outage,
        prefixes=("/v1/connections", HEALTH_PATH, CALLBACK_PATH),
    )
    app.add_middleware(MetricsMiddleware, metrics=http_metrics, routes=lambda: app.router.routes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            _problem_media_types(schema)
            app.openapi_schema = _what_this_deployment_accepts(
                schema, [p.slug for p in runtime.registry], runtime.connect.return_origins
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _swagger_ui_assets() -> PathType:
    """Swagger UI's files as fastapi-offline ships them: /docs needs no CDN."""
    return PathType(fastapi_offline.__file__).parent / "static"


def _what_this_deployment_accepts(
    schema: dict[str, Any], slugs: list[str], origins: ReturnOrigins | None
) -> dict[str, Any]:
    """Narrow the inputs that depend on configuration to exactly what is accepted."""
    models = schema.get("components", {}).get("schemas", {})
    provider = models["StartConnection"]["properties"]["provider"]
    provider.pop("pattern", None)
    provider["enum"] = sorted(slugs)
    for name in ("StartConnection", "ReconnectConnection"):
        properties = models[name]["properties"]
        if origins is None:
            continue  # the connect service leaves return_to to its caller
        if origins.pattern is None:
            properties.pop("return_to")  # additionalProperties is false: the schema says no
            continue
        for branch in properties["return_to"]["anyOf"]:
            if branch.get("type") == "string":
                branch["pattern"] = origins.pattern
    listing = schema["paths"]["/v1/connections"]["get"]
    for parameter in listing["parameters"]:
        if parameter["name"] == "provider":
            parameter["schema"]["anyOf"] = [
                {"type": "string", "enum": sorted(slugs)},
                {"type": "string", "format": "uuid"},
                {"type": "null"},
            ]
    return schema


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are application/problem+json, as the handlers send them."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status.isdigit() and int(status) >= 400 and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    return schema


# --- serving -------------------------------------------------------------------


def _config(app: FastAPI, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        lifespan="on",
        # The access log would print the callback's query: its authorization code and state.
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        backlog=2048,
    )


async def serve(
    runtime: Runtime,
    access: ApiKeySet,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    run_worker: bool = True,
    log_level: str = "info",
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve the API (and, by default, the refresh worker) until SIGINT/SIGTERM, then return."""
    app = create_app(runtime, access, run_worker=run_worker)
    server = Server(_config(app, host, port, log_level))
    await server.serve(sockets=sockets)


@dataclasses.dataclass(frozen=True, slots=True)
class RunningApi:
    """An API served from a background thread at `url`."""

    url: str


@contextmanager
def api_in_thread(
    settings: Settings,
    access: ApiKeySet,
    *,
    env: Mapping[str, str] | None = None,
    run_worker: bool = False,
    sock: socket.socket | None = None,
    startup_timeout: float = 30.0,
    clock: Clock = utc_now,
) -> Iterator[RunningApi]:
    """Open a runtime and serve the API on a loopback port in a thread; all closed on exit.

    The runtime is opened on the thread's own event loop, where the server runs.
    """
    sock = sock or bind_loopback()
    started = threading.Event()
    failure: list[BaseException] = []
    servers: list[uvicorn.Server] = []

    async def main() -> None:
        runtime = await Runtime.open(settings, env=env, clock=clock)
        try:
            app = create_app(runtime, access, run_worker=run_worker)
            server = Server(_config(app, "127.0.0.1", 0, "warning"), started.set)
            servers.append(server)
            await server.serve(sockets=[sock])
        finally:
            await runtime.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="linkvault-api", daemon=True)
    thread.start()
    try:
        if not started.wait(startup_timeout) or failure or not servers or not servers[0].started:
            raise RuntimeError("the API server did not start") from (
                failure[0] if failure else None
            )
        yield RunningApi(socket_url(sock))
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()
