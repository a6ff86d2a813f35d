"""Calls to a provider's data API through linkvault, with the connection's current token.

The caller names a connection and a path under the provider's `api_base_url`; linkvault
adds `Authorization: <type> <access token>` and forwards the request. What it guarantees:

- the target stays under `api_base_url`: a path that could leave it (`..` or `.` segments,
  also percent-encoded or double-encoded, an absolute URL, a scheme, `//host`, `@`,
  backslashes, control characters) is refused before anything is sent;
- linkvault's own credentials never travel: the caller's `Authorization`, `Cookie` and
  proxy headers are dropped, and so are hop-by-hop headers, both ways (and `Set-Cookie`
  on the way back: a provider session is not the caller's);
- no redirect is followed: a 3xx is handed back as the provider sent it;
- a 401 from the provider gets one refresh (through the access token service, single-flight
  across processes) and one retry, when the request body could be kept for it;
- the provider's rate limits, as its declaration gives them, are kept per connection and per
  provider in this process; a 429 of the provider's own is handed back with its Retry-After.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit
from uuid import UUID

import httpx

from linkvault.errors import LinkvaultError
from linkvault.providers import Provider, Rate

log = logging.getLogger("linkvault.proxy")

# A request body up to this size is kept, so it can be sent again after a refresh.
REPLAYABLE_BODY = 64 * 1024
# How many per-connection buckets a process keeps before it forgets the idle ones.
MAX_BUCKETS = 10_000

# Hop-by-hop (RFC 9110 7.6.1) and proxy-only headers: never forwarded, either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The caller's credentials for linkvault, and what would tell the provider about the caller.
_DROP_REQUEST = HOP_BY_HOP | {
    "authorization",
    "cookie",
    "host",
    "expect",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
}
# The provider's session, and headers the serving side writes itself.
_DROP_RESPONSE = HOP_BY_HOP | {"set-cookie", "set-cookie2", "server", "date"}

_FIRST_SEGMENT_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DECODE_ROUNDS = 3


class ProxyRefusedError(LinkvaultError):
    """The proxy will not send this request; `kind` names why, `status` is the HTTP answer."""

    def __init__(
        self, status: int, kind: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.retry_after = retry_after


def unsafe_path(detail: str) -> ProxyRefusedError:
    return ProxyRefusedError(
        400, "proxy-path-refused", f"the path cannot be proxied: {detail}; nothing was sent"
    )


# --- where a request goes -----------------------------------------------------------


def upstream_url(api_base_url: str, raw_path: bytes, query: bytes) -> httpx.URL:
    """`api_base_url` + `/` + `raw_path` (as sent, still percent-encoded) + `?query`.

    Raises ProxyRefusedError for any path that could resolve outside `api_base_url`.
    """
    check_path(raw_path)
    path = raw_path.decode("ascii")
    target = f"{api_base_url}/{path}"
    try:
        text_query = query.decode("ascii")
    except UnicodeDecodeError:
        raise unsafe_path("the query string is not ASCII") from None
    if any(c in text_query for c in "#\\") or _has_control(text_query):
        raise unsafe_path("the query string holds '#', '\\' or control characters")
    if text_query:
        target += f"?{text_query}"
    try:
        url = httpx.URL(target)
    except httpx.InvalidURL:
        raise unsafe_path("it does not make a valid URL") from None
    base = urlsplit(api_base_url)
    base_path = base.path.rstrip("/") + "/"
    if (
        url.scheme != base.scheme
        or url.host != (base.hostname or "")
        or url.port != base.port
        or url.userinfo
        or not url.raw_path.decode("ascii").startswith(base_path)
    ):
        raise unsafe_path("it would leave the provider's API")
    return url


def check_path(raw_path: bytes) -> None:
    """Refuse a path (relative, percent-encoded) that could leave the base it is joined to."""
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise unsafe_path("it is not ASCII (send it percent-encoded)") from None
    layer = text
    for _ in range(_DECODE_ROUNDS):
        _check_layer(layer)
        decoded = unquote_to_bytes(layer).decode("latin-1")
        if decoded == layer:
            return
        layer = decoded
    raise unsafe_path("it is percent-encoded too many times over")


def _check_layer(text: str) -> None:
    if "\\" in text:
        raise unsafe_path("it holds a backslash")
    if _has_control(text):
        raise unsafe_path("it holds control characters")
    if "@" in text:
        raise unsafe_path("it holds '@', which could name a host")
    if text.startswith("/"):
        raise unsafe_path("it starts with '/', which could name another host")
    if _FIRST_SEGMENT_SCHEME.match(text):
        raise unsafe_path("it starts with a scheme, as an absolute URL does")
    segments = text.split("/")
    if any(s in (".", "..") for s in segments):
        raise unsafe_path("it holds '.' or '..' segments")
    if any(not s for s in segments[:-1]):
        raise unsafe_path("it holds an empty segment ('//')")


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


# --- what is forwarded ----------------------------------------------------------------


def _connection_named(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named |= {t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()}
    return named


def request_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The caller's headers that may go to the provider (no credentials, no hop-by-hop)."""
    drop = _DROP_REQUEST | _connection_named(headers)
    kept = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name.decode("latin-1").lower() not in drop
    ]
    if not any(name.lower() == "accept-encoding" for name, _ in kept):
        # The body is passed on as it comes: only compressed when the caller asked for it.
        kept.append(("Accept-Encoding", "identity"))
    return kept


def response_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The provider's headers that go back to the caller (no hop-by-hop, no cookies)."""
    drop = _DROP_RESPONSE | _connection_named(headers)
    return [(name, value) for name, value in headers if name.lower().decode("latin-1") not in drop]


# --- rate limits ----------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    rate: Rate
    tokens: float
    at: float

    def level(self, now: float) -> float:
        return min(float(self.rate.requests), self.tokens + (now - self.at) * self.rate.per_second)

    def wait(self, now: float) -> float:
        """Seconds until one request fits (0: now)."""
        missing = 1.0 - self.level(now)
        return 0.0 if missing <= 0 else missing / self.rate.per_second

    def take(self, now: float) -> None:
        self.tokens, self.at = self.level(now) - 1.0, now


class RateLimiter:
    """Token buckets per provider and per connection, in this process."""

    def __init__(self, *, clock: Any = time.monotonic, max_buckets: int = MAX_BUCKETS) -> None:
        self._clock = clock
        self._max = max_buckets
        self._providers: dict[str, _Bucket] = {}
        self._connections: dict[tuple[str, UUID], _Bucket] = {}

    def acquire(self, provider: Provider, connection_id: UUID) -> None:
        """Take one request from both buckets, or raise ProxyRefusedError (429) taking none."""
        limit = provider.api_rate_limit
        now = self._clock()
        buckets: list[tuple[str, Rate, _Bucket]] = []
        if limit.per_provider is not None:
            bucket = self._providers.get(provider.slug)
            if bucket is None or bucket.rate != limit.per_provider:
                bucket = self._providers[provider.slug] = _Bucket(
                    limit.per_provider, float(limit.per_provider.requests), now
                )
            buckets.append(("provider", limit.per_provider, bucket))
        if limit.per_connection is not None:
            key = (provider.slug, connection_id)
            bucket = self._connections.get(key)
            if bucket is None or bucket.rate != limit.per_connection:
                self._forget_idle(now)
                bucket = self._connections[key] = _Bucket(
                    limit.per_connection, float(limit.per_connection.requests), now
                )
            buckets.append(("connection", limit.per_connection, bucket))
        for scope, rate, bucket in buckets:
            wait = bucket.wait(now)
            if wait > 0:
                raise ProxyRefusedError(
                    429,
                    "rate-limited",
                    f"linkvault keeps calls to {provider.slug} at {rate} per {scope}; "
                    f"retry in {max(1, math.ceil(wait))} s (nothing was sent)",
                    retry_after=wait,
                )
        for _, _, bucket in buckets:
            bucket.take(now)

    def _forget_idle(self, now: float) -> None:
        if len(self._connections) < self._max:
            return
        full = [k for k, b in self._connections.items() if b.level(now) >= b.rate.requests]
        for key in full:
            del self._connections[key]
        if len(self._connections) >= self._max:  # all busy: forget the oldest
            oldest = sorted(self._connections, key=lambda k: self._connections[k].at)
            for key in oldest[: len(oldest) // 2]:
                del self._connections[key]


# --- the token source -----------------------------------------------------------------


class Token(Protocol):
    @property
    def authorization(self) -> str:
        """The Authorization header value: `Bearer <token>`."""
        ...


_T = TypeVar("_T", bound=Token)


class TokenSource(Protocol[_T]):
    """Where the proxy gets tokens: `linkvault.services.access_tokens.AccessTokenService`."""

    async def access_token(self, connection_id: UUID, *, min_valid: timedelta) -> _T: ...

    async def after_rejection(self, connection_id: UUID, rejected: _T, /) -> _T: ...


# --- bodies ---------------------------------------------------------------------------


class BodyTooLargeError(ProxyRefusedError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body-too-large", f"a proxied request body may hold at most {limit} bytes"
        )
        self.limit = limit


@dataclass(slots=True)
class Body:
    """A request body: whole (`data`, can be sent again) or a stream that goes once.

    `length` is the Content-Length the caller declared for a stream, sent on with it.
    """

    data: bytes | None
    stream: AsyncIterable[bytes] | None = None
    length: int | None = None

    @property
    def replayable(self) -> bool:
        return self.stream is None

    def content(self) -> bytes | AsyncIterable[bytes]:
        if self.stream is not None:
            stream, self.stream = self.stream, _spent()
            return stream
        return self.data or b""


async def _spent() -> AsyncIterator[bytes]:
    raise RuntimeError("a streamed request body can be sent once only")
    yield b""  # pragma: no cover


async def read_body(
    chunks: AsyncIterator[bytes],
    *,
    limit: int,
    keep: int = REPLAYABLE_BODY,
    declared: int | None = None,
) -> Body:
    """Take up to `keep` bytes in; a longer body becomes a stream, counted against `limit`
    (and, with the `declared` length, sent with that Content-Length rather than chunked)."""
    head = bytearray()
    async for chunk in chunks:
        head += chunk
        if len(head) > limit:
            raise BodyTooLargeError(limit)
        if len(head) > keep:
            return Body(None, _rest(bytes(head), chunks, limit), declared)
    return Body(bytes(head))


async def _rest(head: bytes, chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    sent = len(head)
    yield head
    async for chunk in chunks:
        sent += len(chunk)
        if sent > limit:
            raise BodyTooLargeError(limit)
        if chunk:
            yield chunk


# --- the proxy ------------------------------------------------------------------------


class _Bounded(dict[UUID, UUID]):
    """A dict that forgets everything once it holds `size` entries."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: UUID, value: UUID) -> None:
        if len(self) >= self.size:
            self.clear()
        super().__setitem__(key, value)


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    timeout: float = 30.0
    connect_timeout: float = 3.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_connections: int = 256
    pools: int = 8
    # How long a token must still be good for when sent: a 401 past that is retried anyway.
    min_valid: timedelta = timedelta(seconds=5)


class ProviderProxy:
    """Sends a caller's request on to a provider's API with the connection's current token."""

    def __init__(
        self,
        tokens: TokenSource[Any],
        *,
        policy: ProxyPolicy | None = None,
        limiter: RateLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.tokens = tokens
        # A connection's provider never changes: remembered, to spare a read per call.
        self.provider_ids = _Bounded(MAX_BUCKETS * 10)
        self.policy = policy or ProxyPolicy()
        self.limiter = limiter or RateLimiter()
        # Transports, not clients: a client keeps a cookie jar, and would send a cookie one
        # provider answer set along with every later call, whoever's connection it is for.
        # Several small pools rather than one large: httpcore looks at every pooled connection
        # for every request it places, so one pool's cost grows with its size.
        per_pool = max(1, self.policy.max_connections // self.policy.pools)
        limits = httpx.Limits(
            max_connections=per_pool,
            max_keepalive_connections=per_pool,
            # Below the common 5 s server keep-alive: a call must not race the provider
            # closing an idle connection (what was sent could not be said to be unsent).
            keepalive_expiry=2.0,
        )
        self._pools: list[httpx.AsyncBaseTransport] = (
            [transport]
            if transport is not None
            else [httpx.AsyncHTTPTransport(limits=limits) for _ in range(self.policy.pools)]
        )
        self._timeout = httpx.Timeout(
            self.policy.timeout, connect=self.policy.connect_timeout
        ).as_dict()
        self._turn = 0

    def _pool(self) -> httpx.AsyncBaseTransport:
        self._turn = (self._turn + 1) % len(self._pools)
        return self._pools[self._turn]

    async def send(
        self,
        provider: Provider,
        connection_id: UUID,
        *,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: Body,
    ) -> httpx.Response:
        """The provider's answer, its body not read yet: the caller streams it, then closes it.

        Raises ProxyRefusedError before anything is sent for an unsafe path, a provider with
        no API, or a rate limit; the access token service's errors when there is no token.
        """
        if provider.api_base_url is None:
            raise ProxyRefusedError(
                409, "no-provider-api", f"provider {provider.slug!r} declares no api_base_url"
            )
        url = upstream_url(provider.api_base_url, raw_path, query)
        forwarded = request_headers(headers)
        self.limiter.acquire(provider, connection_id)
        token = await self.tokens.access_token(connection_id, min_valid=self.policy.min_valid)
        response = await self._send_once(method, url, forwarded, body, token)
        if response.status_code != 401:
            return response
        if not body.replayable:
            # The body went as a stream and cannot go again: refresh for the next call, and
            # hand this 401 back for the caller to retry.
            try:
                await self.tokens.after_rejection(connection_id, token)
            except BaseException:
                await response.aclose()
                raise
            log.info(
                "provider %s refused the token of connection %s on a streamed body: "
                "refreshed, the 401 goes back to the caller",
                provider.slug,
                connection_id,
            )
            return response
        await response.aclose()
        renewed = await self.tokens.after_rejection(connection_id, token)
        return await self._send_once(method, url, forwarded, body, renewed)

    async def _send_once(
        self, method: str, url: httpx.URL, headers: list[tuple[str, str]], body: Body, token: Token
    ) -> httpx.Response:
        sent = [*headers, ("Authorization", token.authorization)]
        if body.stream is not None and body.length is not None:
            sent.append(("Content-Length", str(body.length)))
        request = httpx.Request(
            method, url, headers=sent, content=body.content(), extensions={"timeout": self._timeout}
        )
        try:
            # The transport alone: no cookie jar, no redirects, no default headers.
            return await self._pool().handle_async_request(request)
        except httpx.TimeoutException:
            raise ProxyRefusedError(
                504, "provider-timeout", "the provider did not answer in time"
            ) from None
        except httpx.TransportError as exc:
            raise ProxyRefusedError(
                502,
                "provider-unreachable",
                f"the provider could not be reached ({type(exc).__name__})",
            ) from None

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
