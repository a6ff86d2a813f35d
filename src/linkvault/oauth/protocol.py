"""OAuth2 as the RFCs write it (6749, 7636, 7009), without I/O: shared by client and sandbox.

Authorize URLs with state and PKCE S256, client authentication, token request bodies,
token responses parsed into a TokenResponse and token-endpoint failures mapped to typed
OAuthError subclasses whose messages never hold a token, code, verifier or client secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

from linkvault.errors import (
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


def verify_code_challenge(verifier: str | None, challenge: str) -> bool:
    """Whether a token request's verifier answers the S256 challenge of its authorization."""
    if not verifier or not _VERIFIER.match(verifier):
        return False
    return hmac.compare_digest(code_challenge_s256(verifier), challenge)


def generate_state() -> str:
    """A random, unguessable `state` value for one authorization request."""
    return secrets.token_urlsafe(32)


# --- the authorization endpoint ----------------------------------------------


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
    client = client_credentials(provider)
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
    return with_query(provider.authorize_url, params)


def with_query(url: str, params: Mapping[str, str | None]) -> str:
    """`url` with `params` added after its own query; None values are left out."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- client authentication and token requests --------------------------------


def client_credentials(provider: Provider) -> ClientCredentials:
    """The provider's client credentials; ProviderConfigError naming the settings when absent."""
    if provider.client is None:
        raise ProviderConfigError(
            f"provider {provider.slug!r} has no client credentials: set "
            f"{provider.env_prefix}CLIENT_ID and {provider.env_prefix}CLIENT_SECRET"
        )
    return provider.client


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The `Authorization: Basic` value of a client (RFC 6749 2.3.1)."""
    # Form-encode id and secret before joining them.
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def parse_basic_authorization(header: str) -> tuple[str, str] | None:
    """Client id and secret of an `Authorization: Basic` value, or None when malformed."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def authenticated_request(
    provider: Provider, form: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Body and headers of a token or revocation request, with the client authenticated."""
    client = client_credentials(provider)
    headers = {"Accept": "application/json"}
    body = dict(form)
    if client.client_secret is None:
        body["client_id"] = client.client_id
    elif provider.token_endpoint_auth is TokenEndpointAuth.CLIENT_SECRET_POST:
        body["client_id"] = client.client_id
        body["client_secret"] = client.client_secret
    else:
        headers["Authorization"] = basic_authorization(client.client_id, client.client_secret)
    return body, headers


def token_url(provider: Provider) -> str:
    """The provider's token endpoint; ProviderConfigError when it has none."""
    if provider.token_url is None:
        raise ProviderConfigError(f"provider {provider.slug!r} has no token endpoint")
    return provider.token_url


def revoke_url(provider: Provider) -> str:
    """The provider's revocation endpoint; ProviderConfigError when it has none."""
    if provider.revoke_url is None:
        raise ProviderConfigError(f"provider {provider.slug!r} has no revoke endpoint")
    return provider.revoke_url


def authorization_code_form(
    *, code: str, redirect_uri: str, code_verifier: str | None
) -> dict[str, str]:
    """The body of a code exchange (RFC 6749 4.1.3, RFC 7636 4.5)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier is not None:
        form["code_verifier"] = code_verifier
    return form


def refresh_form(
    provider: Provider, *, refresh_token: str, scopes: Sequence[str] | None
) -> dict[str, str]:
    """The body of a refresh (RFC 6749 6)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scopes:
        form["scope"] = provider.scope_separator.join(scopes)
    return form


def revocation_form(*, token: str, token_type_hint: str | None) -> dict[str, str]:
    """The body of a revocation (RFC 7009 2.1)."""
    form = {"token": token}
    if token_type_hint:
        form["token_type_hint"] = token_type_hint
    return form


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


@dataclass(frozen=True, slots=True, repr=False)
class EndpointAnswer:
    """A token or revocation endpoint's answer, as the HTTP layer received it."""

    status_code: int
    content: bytes
    retry_after: str | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def __repr__(self) -> str:
        return f"EndpointAnswer(status_code={self.status_code}, content=<{len(self.content)}B>)"


def read_token_response(
    answer: EndpointAnswer,
    provider: Provider,
    *,
    operation: str,
    sent: Sequence[str],
    now: datetime,
) -> TokenResponse:
    """The tokens of a token endpoint's answer; raises the OAuthError a refusal stands for.

    `sent` are the secrets the request carried: a provider echoing one never leaks it.
    """
    if not answer.is_success:
        raise token_error(answer, provider, operation=operation, sent=sent, now=now)
    where = f"{provider.slug}: {operation}"

    def malformed(problem: str) -> MalformedResponseError:
        return MalformedResponseError(
            f"{where}: HTTP {answer.status_code} {problem}",
            provider=provider.slug,
            status_code=answer.status_code,
        )

    try:
        body: Any = json.loads(answer.content)
    except ValueError:
        raise malformed("with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise malformed("with a JSON body that is not an object")
    if "access_token" not in body and isinstance(body.get("error"), str):
        raise token_error(answer, provider, operation=operation, sent=sent, now=now)
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


# --- errors --------------------------------------------------------------------


def token_error(
    answer: EndpointAnswer,
    provider: Provider,
    *,
    operation: str,
    sent: Sequence[str],
    now: datetime,
) -> OAuthError:
    """The typed OAuthError a refusing answer stands for (RFC 6749 5.2 and HTTP status)."""
    status = answer.status_code
    error, description = _error_fields(answer.content, sent)
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
        retry_after = parse_retry_after(answer.retry_after, now)
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


def _error_fields(content: bytes, sent: Sequence[str]) -> tuple[str | None, str | None]:
    try:
        body = json.loads(content)
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
