"""The token endpoint over httpx: code exchange, refresh and revocation, and the TokenClient.

Transport failures become ProviderUnavailableError when nothing was sent, AnswerLostError
when the provider may have acted on the request; answers are read by `oauth.protocol`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Self

import httpx

from linkvault.errors import AnswerLostError, ProviderUnavailableError
from linkvault.oauth.protocol import (
    EndpointAnswer,
    TokenResponse,
    authenticated_request,
    authorization_code_form,
    read_token_response,
    refresh_form,
    revocation_form,
    revoke_url,
    token_error,
    token_url,
)
from linkvault.providers import Provider

Clock = Callable[[], datetime]

DEFAULT_TIMEOUT = 10.0
# A token request waits this long to connect, and this long for its answer: a loaded provider
# can take many seconds to answer, and an answer given up on may still have spent the grant.
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 60.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
    form = authorization_code_form(
        code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
    )
    return await _token_request(
        http,
        provider,
        form,
        operation="code exchange",
        secrets_sent=(code, code_verifier),
        request_timeout=request_timeout,
        clock=clock,
    )


class _RefuseAll(DefaultCookiePolicy):
    def set_ok(self, cookie: object, request: object) -> bool:
        return False

    def return_ok(self, cookie: object, request: object) -> bool:
        return False


def no_cookies() -> CookieJar:
    """A cookie jar that keeps nothing, for linkvault's own HTTP clients.

    One client serves every connection: a cookie one provider (or webhook receiver) sets
    while answering for one user must never ride along on a later request for another.
    """
    return CookieJar(policy=_RefuseAll())


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
    form = refresh_form(provider, refresh_token=refresh_token, scopes=scopes)
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
    url = revoke_url(provider)
    form = revocation_form(token=token, token_type_hint=token_type_hint)
    answer = await _post(http, provider, url, form, "revocation", request_timeout)
    if not answer.is_success:
        raise token_error(answer, provider, operation="revocation", sent=(token,), now=_utc_now())


async def _token_request(
    http: httpx.AsyncClient,
    provider: Provider,
    form: Mapping[str, str],
    *,
    operation: str,
    secrets_sent: tuple[str | None, ...],
    request_timeout: float | httpx.Timeout,
    clock: Clock,
) -> TokenResponse:
    url = token_url(provider)
    sent = tuple(s for s in secrets_sent if s)
    answer = await _post(http, provider, url, form, operation, request_timeout)
    return read_token_response(answer, provider, operation=operation, sent=sent, now=clock())


async def _post(
    http: httpx.AsyncClient,
    provider: Provider,
    url: str,
    form: Mapping[str, str],
    operation: str,
    request_timeout: float | httpx.Timeout,
) -> EndpointAnswer:
    body, headers = authenticated_request(provider, form)
    try:
        response = await http.post(url, data=body, headers=headers, timeout=request_timeout)
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
    return EndpointAnswer(
        response.status_code, response.content, response.headers.get("Retry-After")
    )


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
            cookies=no_cookies(),
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
