"""The sandbox as a resource server: a small protected API under `/api`.

Every route but `/api/me` wants `Authorization: Bearer <access token>` that this sandbox
issued, that has not expired and whose grant is not revoked; otherwise 401 with
`WWW-Authenticate: Bearer error="invalid_token"`. Besides the accounts and their balances,
`/api/echo/...` answers what it received (method, path, query, headers, body size and digest)
and `/api/download` streams a body of a given size: the proxy's tests and benchmark use them.
Faults queued with `grant_type="api"` fire here (a 429 with Retry-After, a 5xx, a 401, a delay)
and never on the token endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from linkvault.testing.sandbox.faults import FaultKind
from linkvault.testing.sandbox.grants import Grant

if TYPE_CHECKING:
    from linkvault.testing.sandbox.server import Sandbox

API_FAULTS = "api"
MAX_DOWNLOAD = 1 << 30
_CHUNK = 64 * 1024
_INVALID_TOKEN = 'Bearer realm="sandbox", error="invalid_token"'


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _invalid_token(description: str) -> Response:
    return _json(
        401,
        {"error": "invalid_token", "error_description": description},
        {"WWW-Authenticate": f'{_INVALID_TOKEN}, error_description="{description}"'},
    )


def accounts_of(subject: str) -> list[dict[str, str]]:
    """The accounts a subject holds at the sandbox: the same two for the same subject."""
    digest = hashlib.sha256(subject.encode()).hexdigest()
    return [
        {"id": f"acc-{digest[:8]}-1", "name": "Brokerage", "type": "brokerage", "currency": "USD"},
        {"id": f"acc-{digest[:8]}-2", "name": "Savings", "type": "savings", "currency": "USD"},
    ]


def balances_of(account_id: str) -> dict[str, object]:
    cents = int(hashlib.sha256(account_id.encode()).hexdigest()[:8], 16) % 10_000_000
    return {
        "account_id": account_id,
        "balances": [
            {
                "currency": "USD",
                "current": f"{cents // 100}.{cents % 100:02d}",
                "available": f"{cents * 9 // 1000}.{cents * 9 // 10 % 100:02d}",
            }
        ],
    }


_Protected = Callable[[Request, Grant], Awaitable[Response]]


def resource_routes(sandbox: Sandbox) -> list[BaseRoute]:
    """The `/api/...` routes of `sandbox` (`/api/me` stays with the OAuth2 routes)."""

    def protected(endpoint: _Protected) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            sandbox._record_api_request(request)
            fault = sandbox._take_fault(API_FAULTS, only_named=True)
            if fault is not None:
                if fault.kind is FaultKind.SLOW:
                    await asyncio.sleep(fault.delay)
                else:
                    return _api_fault(fault.kind, fault.status, fault.retry_after)
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return _json(
                    401,
                    {"error": "invalid_request", "error_description": "a bearer token is required"},
                    {"WWW-Authenticate": 'Bearer realm="sandbox"'},
                )
            grant = sandbox._introspect(token.strip())
            if grant is None:
                sandbox._count_api_refusal()
                return _invalid_token("the access token is unknown, expired or revoked")
            return await endpoint(request, grant)

        return guarded

    async def accounts(request: Request, grant: Grant) -> Response:
        return _json(200, {"subject": grant.subject, "accounts": accounts_of(grant.subject)})

    async def balances(request: Request, grant: Grant) -> Response:
        account_id = request.path_params["account_id"]
        if account_id not in {a["id"] for a in accounts_of(grant.subject)}:
            return _json(404, {"error": "not_found", "error_description": "no such account"})
        return _json(200, balances_of(account_id))

    async def echo(request: Request, grant: Grant) -> Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        body = {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
            "query": request.scope.get("query_string", b"").decode("latin-1"),
            # By lower-case name (the last of a repeated one), and every one as it came.
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw},
            "raw_headers": [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw
            ],
            "body_bytes": size,
            "body_sha256": digest.hexdigest(),
            "subject": grant.subject,
        }
        status = int(request.query_params.get("status", "200"))
        headers = {
            # Hop-by-hop and provider-session headers a proxy must not hand on.
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": 'Basic realm="sandbox-proxy"',
            "Upgrade": "h2c",
            "Set-Cookie": "sandbox_session=secret-session; HttpOnly",
            "X-Sandbox-Subject": grant.subject,
            "X-Sandbox-Note": "kept",
        }
        if request.query_params.get("retry_after"):
            headers["Retry-After"] = request.query_params["retry_after"]
        return _json(status, body, headers)

    async def download(request: Request, grant: Grant) -> Response:
        size = int(request.query_params.get("bytes", "0"))
        if not 0 <= size <= MAX_DOWNLOAD:
            return _json(400, {"error": "invalid_request", "error_description": "bytes"})
        delay = float(request.query_params.get("delay", "0"))

        async def chunks() -> AsyncIterator[bytes]:
            block = bytes(range(256)) * (_CHUNK // 256)
            left = size
            while left > 0:
                piece = block[: min(left, _CHUNK)]
                left -= len(piece)
                yield piece
                if delay:
                    await asyncio.sleep(delay)

        headers = {"Content-Length": str(size)} if "chunked" not in request.query_params else {}
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)

    async def redirect(request: Request, grant: Grant) -> Response:
        return RedirectResponse(request.query_params.get("to", "/"), status_code=302)

    any_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [
        Route("/api/accounts", protected(accounts), methods=["GET"]),
        Route("/api/accounts/{account_id}/balances", protected(balances), methods=["GET"]),
        Route("/api/echo", protected(echo), methods=any_method),
        Route("/api/echo/{rest:path}", protected(echo), methods=any_method),
        Route("/api/download", protected(download), methods=["GET", "HEAD"]),
        Route("/api/redirect", protected(redirect), methods=["GET"]),
    ]


def _api_fault(kind: FaultKind, status: int | None, retry_after: int) -> Response:
    if kind is FaultKind.RATE_LIMITED:
        return _json(
            429,
            {"error": "rate_limited", "error_description": "slow down"},
            {"Retry-After": str(retry_after)},
        )
    if kind is FaultKind.SERVER_ERROR:
        return Response("<html><body>upstream error</body></html>", status or 500)
    if kind in (FaultKind.REVOKED, FaultKind.INVALID_GRANT):
        return _invalid_token("injected: the access token was rejected")
    return _json(400, {"error": kind.value, "error_description": "injected fault"})
