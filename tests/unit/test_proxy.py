"""The proxy's rules without a network: paths, headers, rate limits, bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest

from linkvault.providers import ApiRateLimit, AuthStyle, Provider, Rate
from linkvault.services.proxy import (
    BodyTooLargeError,
    ProxyRefusedError,
    RateLimiter,
    read_body,
    request_headers,
    response_headers,
    upstream_url,
)

BASE = "https://api.acme.example/trader/v1"


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        (b"accounts", b"", f"{BASE}/accounts"),
        (
            b"accounts/123/orders",
            b"from=2026-01-01&to=x",
            f"{BASE}/accounts/123/orders?from=2026-01-01&to=x",
        ),
        (b"quotes/BRK%2FB", b"", f"{BASE}/quotes/BRK%2FB"),
        (b"search/a%20b/", b"q=%26", f"{BASE}/search/a%20b/?q=%26"),
        (b"", b"", f"{BASE}/"),
        (b"v..1/x.json", b"", f"{BASE}/v..1/x.json"),
    ],
)
def test_a_safe_path_is_joined_under_the_base(path: bytes, query: bytes, expected: str) -> None:
    assert str(upstream_url(BASE, path, query)) == expected


@pytest.mark.parametrize(
    "path",
    [
        b"..",
        b"../admin",
        b"a/../../admin",
        b"a/./b",
        b"%2e%2e/admin",
        b"%2E%2e%2fadmin",
        b"a%2f..%2f..%2fadmin",
        b"%252e%252e/admin",
        b"%25252e%25252e/admin",
        b"/evil.example",
        b"%2fevil.example",
        b"//evil.example",
        b"http://evil.example/",
        b"https:evil.example",
        b"javascript:alert(1)",
        b"a@evil.example",
        b"%40evil.example",
        b"a\\..\\b",
        b"a%5c..%5cb",
        b"a//b",
        b"a%0d%0aHost:%20evil",
        b"a%00b",
        "caf\u00e9".encode(),
    ],
)
def test_a_path_that_could_leave_the_base_is_refused(path: bytes) -> None:
    with pytest.raises(ProxyRefusedError) as caught:
        upstream_url(BASE, path, b"")

    assert caught.value.status == 400
    assert caught.value.kind == "proxy-path-refused"


@pytest.mark.parametrize("query", [b"a=1#frag", b"a=\\x", b"a=\x01", "q=\u00e9".encode()])
def test_a_query_that_is_not_plain_ascii_is_refused(query: bytes) -> None:
    with pytest.raises(ProxyRefusedError):
        upstream_url(BASE, b"accounts", query)


def test_request_headers_lose_credentials_hop_by_hop_and_the_connection_named_ones() -> None:
    sent = [
        (b"Authorization", b"Bearer lvk_secret"),
        (b"Cookie", b"s=1"),
        (b"Host", b"linkvault.example"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"10"),
        (b"X-Forwarded-For", b"10.1.1.1"),
        (b"Accept", b"application/json"),
        (b"Schwab-Client-CorrelId", b"abc"),
    ]

    assert request_headers(sent) == [
        ("Accept", "application/json"),
        ("Schwab-Client-CorrelId", "abc"),
        ("Accept-Encoding", "identity"),
    ]
    assert request_headers([(b"accept-encoding", b"gzip")]) == [("accept-encoding", "gzip")]


def test_response_headers_lose_hop_by_hop_and_the_providers_cookies() -> None:
    got = [
        (b"content-type", b"application/json"),
        (b"connection", b"close, x-hop"),
        (b"x-hop", b"1"),
        (b"set-cookie", b"session=provider"),
        (b"proxy-authenticate", b"Basic"),
        (b"transfer-encoding", b"chunked"),
        (b"link", b"<a>; rel=next"),
        (b"link", b"<b>; rel=last"),
        (b"retry-after", b"30"),
    ]

    assert response_headers(got) == [
        (b"content-type", b"application/json"),
        (b"link", b"<a>; rel=next"),
        (b"link", b"<b>; rel=last"),
        (b"retry-after", b"30"),
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(per_connection: str | None, per_provider: str | None) -> Provider:
    return Provider(
        slug="acme",
        id=uuid4(),
        display_name="Acme",
        auth_style=AuthStyle.API_KEY,
        api_rate_limit=ApiRateLimit(
            Rate.parse(per_connection) if per_connection else None,
            Rate.parse(per_provider) if per_provider else None,
        ),
    )


def test_a_connection_gets_its_burst_then_waits_for_the_bucket_to_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    acme, conn = provider("3/s", None), uuid4()
    for _ in range(3):
        limiter.acquire(acme, conn)

    with pytest.raises(ProxyRefusedError) as caught:
        limiter.acquire(acme, conn)
    clock.now += 0.34
    limiter.acquire(acme, conn)

    assert caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(1 / 3)
    limiter.acquire(acme, uuid4())  # another connection has its own bucket


def test_a_request_refused_by_one_bucket_takes_nothing_from_the_other() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    acme = provider("1/m", "2/m")
    first, second = uuid4(), uuid4()
    limiter.acquire(acme, first)
    for _ in range(5):
        with pytest.raises(ProxyRefusedError, match="per connection"):
            limiter.acquire(acme, first)

    limiter.acquire(acme, second)  # the provider bucket still had one
    with pytest.raises(ProxyRefusedError, match="per provider") as caught:
        limiter.acquire(acme, uuid4())
    assert caught.value.retry_after == pytest.approx(30.0)


def test_the_limiter_forgets_idle_connections_past_its_size() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, max_buckets=10)
    acme = provider("1/s", None)
    for _ in range(25):
        limiter.acquire(acme, uuid4())
        clock.now += 1

    assert len(limiter._connections) <= 10


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_small_body_is_kept_whole_so_it_can_be_sent_again() -> None:
    body = await read_body(chunks(b"a" * 10, b"b" * 10), limit=100, keep=50)

    assert body.replayable
    assert body.content() == body.content() == b"a" * 10 + b"b" * 10


async def test_a_long_body_becomes_a_stream_that_goes_once() -> None:
    body = await read_body(chunks(b"a" * 40, b"b" * 40, b"c" * 40), limit=1000, keep=50)

    assert not body.replayable
    stream = body.content()
    assert not isinstance(stream, bytes)
    assert b"".join([c async for c in stream]) == b"a" * 40 + b"b" * 40 + b"c" * 40


async def test_a_body_over_the_limit_is_refused_whole_or_streaming() -> None:
    with pytest.raises(BodyTooLargeError):
        await read_body(chunks(b"a" * 101), limit=100, keep=1000)
    body = await read_body(chunks(b"a" * 60, b"b" * 60), limit=100, keep=50)
    stream = body.content()
    assert not isinstance(stream, bytes)
    with pytest.raises(BodyTooLargeError):
        async for _ in stream:
            pass
