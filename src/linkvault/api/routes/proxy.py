"""/v1/connections/{id}/proxy/{path}: the provider's API, called with the connection's token."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from linkvault.api.paths import PROXY_PATH
from linkvault.api.problems import ApiProblem
from linkvault.api.routes.common import (
    COMMON,
    E404,
    E409,
    ConnectionId,
    CurrentRuntime,
)
from linkvault.api.schemas import Problem
from linkvault.api.security import ProxyKey
from linkvault.errors import ProviderGoneError, UnknownProviderError
from linkvault.providers import Provider
from linkvault.runtime import Runtime
from linkvault.services.proxy import (
    BodyTooLargeError,
    ProxyRefusedError,
    check_path,
    read_body,
    response_headers,
    unsafe_path,
)

log = logging.getLogger("linkvault.api.proxy")

# Not make_router: the query string belongs to the provider, every parameter is passed on.
router = APIRouter()

# An answer up to this size, of declared length, is read whole and sent back in one piece.
SMALL_RESPONSE = 64 * 1024
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

_DESCRIPTION = """Scope `proxy`. Sends the request on to the provider's `api_base_url` + `path`
(query string kept) with the connection's current access token, and streams the provider's
answer back: its status, its headers (not hop-by-hop ones, not `Set-Cookie`) and its body.
Your `Authorization` and cookies are never sent on.

- A path that could leave `api_base_url` (`..`, an absolute URL, `//host`, `@`, backslashes,
  also percent-encoded) is refused with 400 and nothing is sent.
- Redirects are not followed: a 3xx comes back as the provider sent it.
- A 401 from the provider refreshes the token once and retries once (for a request body up to
  64 KiB; a longer one streams, is sent once, and its 401 comes back after the refresh).
- The provider's declared rate limits are kept per connection and per provider: past them,
  429 with Retry-After and nothing is sent. A 429 of the provider's own comes back as it is,
  with its Retry-After.
- 409 when the connection needs its user to reconnect, 503 when no token can be had for now,
  502/504 when the provider cannot be reached or does not answer in time.
"""

_PROBLEM = {"model": Problem}
RESPONSES: dict[int | str, dict[str, Any]] = {
    **COMMON,
    200: {"description": "the provider's answer, whatever its status", "content": {"*/*": {}}},
    400: {**_PROBLEM, "description": "a path that would leave the provider's API"},
    404: E404,
    409: E409,
    429: {**_PROBLEM, "description": "linkvault's rate limit for this provider: Retry-After"},
    502: {**_PROBLEM, "description": "the provider could not be reached"},
    504: {**_PROBLEM, "description": "the provider did not answer in time"},
}


async def proxy(
    runtime: CurrentRuntime,
    connection_id: ConnectionId,
    path: str,
    request: Request,
    _key: ProxyKey,
) -> Response:
    try:
        return await _forward(runtime, connection_id, request)
    except ProxyRefusedError as exc:
        raise _problem(exc) from None


for _method in METHODS:
    # One route per method, each with its own operation id in the OpenAPI document.
    router.add_api_route(
        PROXY_PATH,
        proxy,
        methods=[_method],
        operation_id=f"proxy_{_method.lower()}",
        tags=["proxy"],
        summary=f"{_method} through linkvault to the provider's API",
        description=_DESCRIPTION,
        response_class=Response,
        responses=RESPONSES,
    )


async def _forward(runtime: Runtime, connection_id: UUID, request: Request) -> Response:
    raw_path = _raw_rest(request, connection_id)
    check_path(raw_path)  # before anything else: a hostile path costs no database read
    proxy = runtime.proxy
    limit = proxy.policy.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(limit)
    provider = await _provider_of(runtime, connection_id)
    declared_length = int(declared) if declared is not None and declared.isdigit() else None
    body = await read_body(request.stream(), limit=limit, declared=declared_length)
    upstream = await proxy.send(
        provider,
        connection_id,
        method=request.method,
        raw_path=raw_path,
        query=request.scope.get("query_string", b""),
        headers=request.headers.raw,
        body=body,
    )
    log.debug(
        "proxied %s for connection %s to %s: %d",
        request.method,
        connection_id,
        provider.slug,
        upstream.status_code,
    )
    headers = response_headers(upstream.headers.raw)
    answer_length = upstream.headers.get("content-length", "")
    if answer_length.isdigit() and int(answer_length) <= SMALL_RESPONSE:
        # A small answer of known size goes back in one piece: no stream to keep open.
        try:
            content = b"".join([chunk async for chunk in upstream.aiter_raw()])
        except httpx.TransportError as exc:
            raise ProxyRefusedError(
                502,
                "provider-unreachable",
                f"the provider's answer broke off ({type(exc).__name__})",
            ) from None
        finally:
            await upstream.aclose()
        response = Response(content, status_code=upstream.status_code)
    else:
        response = StreamingResponse(
            _relay(upstream),
            status_code=upstream.status_code,
            background=BackgroundTask(upstream.aclose),
        )
    # The provider's headers as they came (repeated ones too), less the ones that must not pass.
    response.raw_headers = headers
    return response


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


async def _provider_of(runtime: Runtime, connection_id: UUID) -> Provider:
    provider_ids = runtime.proxy.provider_ids
    provider_id = provider_ids.get(connection_id)
    if provider_id is None:
        conn = await runtime.connections.get(connection_id)
        provider_id = provider_ids[connection_id] = conn.provider_id
        slug = conn.provider_slug
    else:
        slug = str(provider_id)
    try:
        return runtime.registry.by_id(provider_id)
    except UnknownProviderError:
        raise ProviderGoneError(slug) from None


def _raw_rest(request: Request, connection_id: UUID) -> bytes:
    """The path after `/proxy/` exactly as the caller sent it, still percent-encoded."""
    scope = request.scope
    raw = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
    raw = raw.split(b"?", 1)[0]  # some servers include the query
    parts = raw.split(b"/", 5)
    if len(parts) != 6 or parts[1:3] != [b"v1", b"connections"] or parts[4] != b"proxy":
        raise unsafe_path("the path is not /v1/connections/{id}/proxy/{path}")
    try:
        same = UUID(parts[3].decode("ascii")) == connection_id
    except (UnicodeDecodeError, ValueError):
        same = False
    if not same:
        raise unsafe_path("the connection id is percent-encoded")
    return parts[5]


def _problem(exc: ProxyRefusedError) -> ApiProblem:
    titles = {
        400: "Bad Request",
        409: "Conflict",
        413: "Content Too Large",
        429: "Too Many Requests",
        502: "Bad Gateway",
        504: "Gateway Timeout",
    }
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if exc.retry_after is not None:
        seconds = max(1, int(-(-exc.retry_after // 1)))
        headers["Retry-After"] = str(seconds)
        extra["retry_after"] = seconds
    if isinstance(exc, BodyTooLargeError):
        headers["Connection"] = "close"
        extra["max_bytes"] = exc.limit
    return ApiProblem(
        exc.status,
        exc.kind,
        titles.get(exc.status, "Error"),
        str(exc),
        headers=headers,
        extra=extra,
    )
