"""OAuth2 over httpx: authorize URLs (state and PKCE), code exchange, refresh, revocation.

Token-endpoint failures are raised as typed OAuthError subclasses whose messages never
hold a token, code, verifier or client secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import httpx

from linkvault.errors import (
    AnswerLostError,
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    OAuthError,
    ProviderConfigError,
    ProviderUnavailableError,
    RateLimitedError,
    RevokedError,
    UnauthorizedClientError,
)
from linkvault.providers import ClientCredentials, Provider, TokenEndpointAuth

Clock = Callable[[], datetime]

DEFAULT_TIMEOUT = 10.0
# A token request waits this long to connect, and this long for its answer: a loaded provider
# can take many seconds to answer, and an answer given up on may still have spent the grant.
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 60.0
MAX_DESCRIPTION = 200

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# RFC 6749 error_description characters, minus anything that could smuggle markup or quotes.
_DESCRIPTION_DROP = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
# Long opaque runs look like tokens; a provider echoing one must not leak it into our logs.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9\-._~+/=]{24,}")

_INVALID_GRANT = frozenset({"invalid_grant"})
_UNAUTHORIZED = frozenset({"unauthorized_client", "invalid_client"})
_REVOKED = frozenset({"access_denied", "token_revoked", "revoked"})
_UNAVAILABLE = frozenset({"temporarily_unavailable", "server_error"})
_RATE_LIMITED = frozenset({"slow_down", "rate_limited", "too_many_requests"})


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- PKCE and state ----------------------------------------------------------


def generate_code_verifier(length: int = 64) -> str:
    """A random PKCE code verifier of `length` characters (43 to 128, RFC 7636)."""
    if not 43 <= length <= 128:
        raise ValueError("a PKCE code verifier must be 43 to 128 characters long")
    return secrets.token_urlsafe(length)[:length]


def code_challenge_s256(verifier: str) -> str:
    """The S256 code challenge of a verifier: BASE64URL(SHA256(verifier)) without padding."""
    if not _VERIFIER.match(verifier):
        raise ValueError("a PKCE code verifier must be 43 to 128 unreserved characters")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def generate_state() -> str:
    """A random, unguessable `state` value for one authorization request."""
    return secrets.token_urlsafe(32)


def build_authorize_url(
    provider: Provider,
    *,
    redirect_uri: str,
    state: str,
    code_challenge: str | None,
    scopes: Sequence[str] | None = None,
    extra_params: Mapping[str, str] | None = None,
) -> str:
    """The URL to send the user's browser to: code flow with state and PKCE S256."""
    if provider.authorize_url is None:
        raise ProviderConfigError(f"provider {provider.slug!r} has no authorize endpoint")
    client = _client(provider)
    if provider.pkce and not code_challenge:
        raise ProviderConfigError(f"provider {provider.slug!r} uses PKCE: a challenge is needed")
    if not state:
        raise ValueError("state must not be empty")
    params: dict[str, str] = dict(provider.extra_authorize_params)
    params.update(extra_params or {})
    params.update(response_type="code", client_id=client.client_id, redirect_uri=redirect_uri)
    chosen = provider.scopes if scopes is None else tuple(scopes)
    if chosen:
        params["scope"] = provider.scope_separator.join(chosen)
    params["state"] = state
    if code_challenge:
        params.update(code_challenge=code_challenge, code_challenge_method="S256")
    parts = urlsplit(provider.authorize_url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- token responses ---------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class TokenResponse:
    """What a token endpoint issued; `refresh_token` is None when the provider sent none."""

    access_token: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    expires_in: int | None = None
    scope: str | None = None

    def expires_at(self, now: datetime) -> datetime | None:
        """When the access token expires, counted from `now` (None when the provider said not)."""
        if self.expires_in is None:
            return None
        return now + timedelta(seconds=self.expires_in)

    def __repr__(self) -> str:
        refresh = "present" if self.refresh_token else "absent"
        return (
            f"TokenResponse(token_type={self.token_type!r}, expires_in={self.expires_in}, "
            f"scope={self.scope!r}, access_token=<hidden>, refresh_token={refresh})"
        )

    __str__ = __repr__


def token_expiry(response: TokenResponse, provider: Provider, now: datetime) -> datetime | None:
    """When new tokens expire: as the provider said, else its documented lifetime, else never."""
    said = response.expires_at(now)
    if said is not None or provider.access_token_lifetime is None:
        return said
    return now + provider.access_token_lifetime


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return None
    return seconds


# --- the token endpoint ------------------------------------------------------


async def exchange_code(
    http: httpx.AsyncClient,
    provider: Provider,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str | None,
    request_timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    clock: Clock = _utc_now,
) -> TokenResponse:
    """Trade an authorization code (and its PKCE verifier) for tokens."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier is not None:
        form["code_verifier"] = code_verifier
    return await _token_request(
        http,
        provider,
        form,
        operation="code exchange",
        secrets_sent=(code, code_verifier),
        request_timeout=request_timeout,
        clock=clock,
    )


async def refresh(
    http: httpx.AsyncClient,
    provider: Provider,
    *,
    refresh_token: str,
    scopes: Sequence[str] | None = None,
    request_timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    clock: Clock = _utc_now,
) -> TokenResponse:
    """Trade a refresh token for new tokens (the refresh token may rotate)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scopes:
        form["scope"] = provider.scope_separator.join(scopes)
    return await _token_request(
        http,
        provider,
        form,
        operation="refresh",
        secrets_sent=(refresh_token,),
        request_timeout=request_timeout,
        clock=clock,
    )


async def revoke(
    http: httpx.AsyncClient,
    provider: Provider,
    *,
    token: str,
    token_type_hint: str | None = "refresh_token",  # noqa: S107
    request_timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Ask the provider to revoke a token (RFC 7009); raises OAuthError when it refuses."""
    if provider.revoke_url is None:
        raise ProviderConfigError(f"provider {provider.slug!r} has no revoke endpoint")
    form = {"token": token}
    if token_type_hint:
        form["token_type_hint"] = token_type_hint
    response = await _post(http, provider, provider.revoke_url, form, "revocation", request_timeout)
    if not response.is_success:
        raise _failure(response, provider, "revocation", (token,), _utc_now())


async def _token_request(
    http: httpx.AsyncClient,
    provider: Provider,
    form: dict[str, str],
    *,
    operation: str,
    secrets_sent: Iterable[str | None],
    request_timeout: float | httpx.Timeout,
    clock: Clock,
) -> TokenResponse:
    if provider.token_url is None:
        raise ProviderConfigError(f"provider {provider.slug!r} has no token endpoint")
    sent = tuple(s for s in secrets_sent if s)
    response = await _post(http, provider, provider.token_url, form, operation, request_timeout)
    if not response.is_success:
        raise _failure(response, provider, operation, sent, clock())
    return _parse_success(response, provider, operation, sent)


async def _post(
    http: httpx.AsyncClient,
    provider: Provider,
    url: str,
    form: dict[str, str],
    operation: str,
    request_timeout: float | httpx.Timeout,
) -> httpx.Response:
    client = _client(provider)
    headers = {"Accept": "application/json"}
    body = dict(form)
    if client.client_secret is None:
        body["client_id"] = client.client_id
    elif provider.token_endpoint_auth is TokenEndpointAuth.CLIENT_SECRET_POST:
        body["client_id"] = client.client_id
        body["client_secret"] = client.client_secret
    else:
        headers["Authorization"] = _basic_auth(client)
    try:
        return await http.post(url, data=body, headers=headers, timeout=request_timeout)
    except _NEVER_SENT as exc:
        # Nothing reached the provider: an ordinary failure, safe to retry.
        raise ProviderUnavailableError(
            f"{provider.slug}: {operation} failed before sending: {type(exc).__name__}",
            provider=provider.slug,
        ) from exc
    except httpx.TransportError as exc:
        # The request was sent, or partly: the provider may have acted on it.
        how = _LOST_HOW.get(type(exc), type(exc).__name__)
        raise AnswerLostError(
            f"{provider.slug}: {operation} sent, answer lost ({how})",
            how=how,
            provider=provider.slug,
        ) from exc


# Failures that happen before any byte of the request left: connecting, or waiting for a
# pooled connection. Everything else after the request started may have reached the provider.
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)
_LOST_HOW: dict[type[Exception], str] = {
    httpx.ReadTimeout: "read timeout",
    httpx.WriteTimeout: "write timeout",
    httpx.ReadError: "connection reset while reading",
    httpx.WriteError: "connection reset while sending",
    httpx.RemoteProtocolError: "connection closed without an answer",
}


def _client(provider: Provider) -> ClientCredentials:
    if provider.client is None:
        raise ProviderConfigError(
            f"provider {provider.slug!r} has no client credentials: set "
            f"{provider.env_prefix}CLIENT_ID and {provider.env_prefix}CLIENT_SECRET"
        )
    return provider.client


def _basic_auth(client: ClientCredentials) -> str:
    # RFC 6749 2.3.1: form-encode id and secret before joining them.
    pair = f"{quote_plus(client.client_id)}:{quote_plus(client.client_secret or '')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _parse_success(
    response: httpx.Response, provider: Provider, operation: str, sent: Sequence[str]
) -> TokenResponse:
    where = f"{provider.slug}: {operation}"

    def malformed(problem: str) -> MalformedResponseError:
        return MalformedResponseError(
            f"{where}: HTTP {response.status_code} {problem}",
            provider=provider.slug,
            status_code=response.status_code,
        )

    try:
        body: Any = response.json()
    except ValueError:
        raise malformed("with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise malformed("with a JSON body that is not an object")
    if "access_token" not in body and isinstance(body.get("error"), str):
        raise _failure(response, provider, operation, sent, _utc_now())
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise malformed("without an access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not token_type:
        raise malformed("with an invalid token_type")
    refresh_token = body.get("refresh_token")
    if refresh_token is not None and not isinstance(refresh_token, str):
        raise malformed("with an invalid refresh_token")
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        refresh_token=refresh_token or None,
        expires_in=_expires_in(body.get("expires_in"), malformed),
        scope=_scope(body.get("scope"), malformed),
    )


def _expires_in(value: object, malformed: Callable[[str], MalformedResponseError]) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise malformed("with an invalid expires_in")
    return int(value)


def _scope(value: object, malformed: Callable[[str], MalformedResponseError]) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    raise malformed("with an invalid scope")


def _failure(
    response: httpx.Response,
    provider: Provider,
    operation: str,
    sent: Sequence[str],
    now: datetime,
) -> OAuthError:
    status = response.status_code
    error, description = _error_fields(response, sent)
    summary = f"{provider.slug}: {operation} failed: HTTP {status}"
    if error:
        summary += f" {error}"
    if description:
        summary += f" ({description})"
    fields: dict[str, Any] = {
        "provider": provider.slug,
        "status_code": status,
        "error": error,
        "description": description,
    }
    if status == 429 or error in _RATE_LIMITED:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
        return RateLimitedError(summary, retry_after=retry_after, **fields)
    if status >= 500 or status == 408 or error in _UNAVAILABLE:
        return ProviderUnavailableError(summary, **fields)
    if error in _INVALID_GRANT:
        return InvalidGrantError(summary, **fields)
    if error == "invalid_client" or (status == 401 and error is None):
        return InvalidClientError(summary, **fields)
    if error in _UNAUTHORIZED:
        return UnauthorizedClientError(summary, **fields)
    if error in _REVOKED:
        return RevokedError(summary, **fields)
    return OAuthError(summary, **fields)


def _error_fields(response: httpx.Response, sent: Sequence[str]) -> tuple[str | None, str | None]:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    raw_error = body.get("error")
    error = raw_error if isinstance(raw_error, str) and _ERROR_CODE.match(raw_error) else None
    raw_description = body.get("error_description")
    description = None
    if isinstance(raw_description, str):
        description = sanitize_description(raw_description, sent) or None
    return error, description


def _redact_if_token(match: re.Match[str]) -> str:
    run = match.group()
    return "[redacted]" if any(c.isdigit() for c in run) else run


def sanitize_description(text: str, sent: Iterable[str] = ()) -> str:
    """A provider's error_description made safe to log: no secrets we sent, no token-like runs."""
    for secret in sent:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _DESCRIPTION_DROP.sub("", text)
    text = _TOKEN_LIKE.sub(_redact_if_token, text)
    text = " ".join(text.split())
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 1] + "…"
    return text


# --- the TokenClient adapter -------------------------------------------------


class HttpxTokenClient:
    """The token endpoint over one shared httpx.AsyncClient (implements the TokenClient port)."""

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        *,
        timeout: float = DEFAULT_READ_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_connections: int = 100,
        clock: Clock = _utc_now,
    ) -> None:
        self._owned = http is None
        self._http = http or httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                # Below the common 5 s server keep-alive: a request must not race the server
                # closing an idle connection, for a rotating provider may have used the grant.
                keepalive_expiry=2.0,
            ),
            follow_redirects=False,
        )
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._timeouts = httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout)
        self._clock = clock

    async def exchange_code(
        self,
        provider: Provider,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str | None,
    ) -> TokenResponse:
        """Trade an authorization code (and its PKCE verifier) for tokens."""
        return await exchange_code(
            self._http,
            provider,
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
            request_timeout=self._timeouts,
            clock=self._clock,
        )

    async def refresh(
        self,
        provider: Provider,
        *,
        refresh_token: str,
        scopes: Sequence[str] | None = None,
    ) -> TokenResponse:
        """Trade a refresh token for new tokens (the refresh token may rotate)."""
        return await refresh(
            self._http,
            provider,
            refresh_token=refresh_token,
            scopes=scopes,
            request_timeout=self._timeouts,
            clock=self._clock,
        )

    async def revoke(
        self,
        provider: Provider,
        *,
        token: str,
        token_type_hint: str | None = "refresh_token",  # noqa: S107
    ) -> None:
        """Ask the provider to revoke a token (RFC 7009)."""
        await revoke(
            self._http,
            provider,
            token=token,
            token_type_hint=token_type_hint,
            request_timeout=self._timeouts,
        )

    async def aclose(self) -> None:
        """Close the HTTP client when this object created it."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"HttpxTokenClient(timeout={self.timeout:g}, connect_timeout={self.connect_timeout:g})"
        )
