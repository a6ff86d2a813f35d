"""The sandbox over HTTP: OAuth2 endpoints, the consent page, and the `/admin/...` routes."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from linkvault.oauth.protocol import with_query
from linkvault.providers import SANDBOX_CLIENT_ID
from linkvault.testing.sandbox.config import DEFAULT_SUBJECT
from linkvault.testing.sandbox.faults import Fault, FaultKind
from linkvault.testing.sandbox.grants import AuthRequest, Refusal
from linkvault.testing.sandbox.resources import resource_routes

if TYPE_CHECKING:
    from linkvault.testing.sandbox.server import Sandbox

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_SEED = 100_000


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


def _oauth_error(refusal: Refusal, *, basic: bool = False) -> Response:
    headers = (
        {"WWW-Authenticate": 'Basic realm="sandbox"'} if refusal.status == 401 and basic else {}
    )
    body = {"error": refusal.error, "error_description": refusal.description}
    return _json(refusal.status, body, headers)


async def _read_form(request: Request) -> dict[str, str] | None:
    body = await request.body()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    form = dict(pairs)
    return form if len(form) == len(pairs) else None


async def _read_json(request: Request) -> Any:
    body = await request.body()
    return json.loads(body) if body.strip() else {}


_Endpoint = Callable[[Request], Awaitable[Response]]


def _admin(endpoint: _Endpoint) -> _Endpoint:
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json(400, {"error": "bad_request", "error_description": str(exc)})

    return guarded


def _fault_response(fault: Fault) -> Response:
    if fault.kind is FaultKind.SERVER_ERROR:
        return Response(
            "<html><body>upstream error</body></html>", fault.status or 500, media_type="text/html"
        )
    if fault.kind is FaultKind.RATE_LIMITED:
        return _json(
            429,
            {"error": "rate_limited", "error_description": "slow down"},
            {"Retry-After": str(fault.retry_after)},
        )
    if fault.kind is FaultKind.MALFORMED:
        return Response('{"access_token": "trunc', 200, media_type="application/json")
    errors = {
        FaultKind.INVALID_GRANT: ("invalid_grant", "injected invalid_grant"),
        FaultKind.REVOKED: ("access_denied", "the user revoked access"),
        FaultKind.UNAUTHORIZED_CLIENT: ("unauthorized_client", "client not allowed"),
    }
    error, description = errors[fault.kind]
    return _json(400, {"error": error, "error_description": description})


def build_app(sandbox: Sandbox) -> Starlette:
    async def token(request: Request) -> Response:
        # A real server takes the whole request in before a worker gets to it, and serves it
        # even if the client has gone by then: read the body before waiting in line.
        await request.body()
        return await sandbox._serve_token_request(lambda: token_request(request))

    async def token_request(request: Request) -> Response:
        form = await _read_form(request)
        if form is None:
            sandbox._count_refusal("unknown", "invalid_request")
            return _oauth_error(
                Refusal(400, "invalid_request", "malformed or repeated parameters", "")
            )
        grant_type = form.get("grant_type", "")
        label = (
            grant_type if grant_type in ("authorization_code", "refresh_token") else "unsupported"
        )
        fault = sandbox._take_fault(label)
        if fault is not None:
            if fault.kind is not FaultKind.SLOW:
                return _fault_response(fault)
            await asyncio.sleep(fault.delay)
        authorization = request.headers.get("authorization")
        client = sandbox._authenticate(authorization, form)
        if isinstance(client, Refusal):
            sandbox._count_refusal(label, client.error)
            return _oauth_error(client, basic=authorization is not None)
        if label == "unsupported":
            sandbox._count_refusal(label, "unsupported_grant_type")
            return _oauth_error(
                Refusal(400, "unsupported_grant_type", "unsupported grant_type", "")
            )
        outcome = sandbox._token_grant(grant_type, client, form)
        if isinstance(outcome, Refusal):
            return _oauth_error(outcome)
        return _json(200, outcome)

    async def authorize(request: Request) -> Response:
        if request.method == "POST":
            return await _consent_submitted(sandbox, request)
        params = dict(request.query_params)
        started = sandbox._start_authorization(params)
        if isinstance(started, str):
            with sandbox._lock:
                sandbox._authorizations["invalid_request"] += 1
            return HTMLResponse(_error_page(started), status_code=400)
        request_id, pending = started
        problem = _authorize_problem(params)
        if problem is not None:
            with sandbox._lock:
                sandbox._pending.pop(request_id, None)
                sandbox._authorizations[problem[0]] += 1
            error, description = problem
            target = with_query(
                pending.redirect_uri,
                {
                    "error": error,
                    "error_description": description,
                    "state": pending.state,
                },
            )
            return RedirectResponse(target, status_code=302)
        hint = params.get("login_hint") or DEFAULT_SUBJECT
        return HTMLResponse(_consent_page(request_id, pending, hint), headers=_NO_STORE)

    async def revoke(request: Request) -> Response:
        form = await _read_form(request)
        if form is None or not form.get("token"):
            return _oauth_error(Refusal(400, "invalid_request", "token is required", ""))
        authorization = request.headers.get("authorization")
        client = sandbox._authenticate(authorization, form)
        if isinstance(client, Refusal):
            return _oauth_error(client, basic=authorization is not None)
        sandbox._revoke_token(client, form["token"])
        return Response(status_code=200, headers=_NO_STORE)

    async def me(request: Request) -> Response:
        scheme, _, access_token = request.headers.get("authorization", "").partition(" ")
        grant = sandbox._introspect(access_token) if scheme.lower() == "bearer" else None
        if grant is None:
            return _json(401, {"error": "invalid_token"}, {"WWW-Authenticate": "Bearer"})
        return _json(200, {"subject": grant.subject, "scope": grant.scope})

    async def admin_stats(request: Request) -> Response:
        return _json(200, sandbox.stats())

    async def admin_reset(request: Request) -> Response:
        body = await _read_json(request)
        sandbox.reset(
            counters=bool(body.get("counters", True)),
            faults=bool(body.get("faults", True)),
            grants=bool(body.get("grants", False)),
        )
        return _json(200, sandbox.stats())

    async def admin_faults(request: Request) -> Response:
        if request.method == "POST":
            fault = sandbox.add_fault(Fault.from_json(await _read_json(request)))
            return _json(201, fault.as_dict())
        if request.method == "DELETE":
            sandbox.clear_faults()
        return _json(200, [f.as_dict() for f in sandbox.faults()])

    async def admin_settings(request: Request) -> Response:
        if request.method == "PATCH":
            changes = await _read_json(request)
            with sandbox._lock:
                sandbox.settings.update(changes)
        with sandbox._lock:
            return _json(200, sandbox.settings.as_dict())

    async def admin_clock(request: Request) -> Response:
        body = await _read_json(request)
        sandbox.advance_clock(float(body.get("advance", 0)))
        return _json(200, {"now": sandbox.now()})

    async def admin_grants(request: Request) -> Response:
        if request.method == "GET":
            return _json(200, sandbox.grants(request.query_params.get("subject")))
        body = await _read_json(request)
        subjects = body.get("subjects")
        if subjects is None:
            count = int(body.get("count", 1))
            if not 0 < count <= _MAX_SEED:
                raise ValueError(f"count must be 1 to {_MAX_SEED}")
            prefix = str(body.get("subject_prefix", "user-"))
            subjects = [f"{prefix}{n}" for n in range(count)]
        if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
            raise ValueError("subjects must be a list of strings")
        seeded = sandbox.seed_grants(
            subjects,
            client_id=str(body.get("client_id", SANDBOX_CLIENT_ID)),
            scope=body.get("scope"),
        )
        return _json(201, seeded)

    async def admin_revoke(request: Request) -> Response:
        body = await _read_json(request)
        return _json(200, {"revoked": sandbox.revoke_subject(str(body["subject"]))})

    async def admin_expire(request: Request) -> Response:
        body = await _read_json(request)
        subject = body.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise ValueError("subject must be a string")
        return _json(200, {"expired": sandbox.expire_access_tokens(subject)})

    async def admin_api_requests(request: Request) -> Response:
        return _json(200, sandbox.api_requests())

    async def health(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    return Starlette(
        routes=[
            Route("/oauth/authorize", authorize, methods=["GET", "POST"]),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/oauth/revoke", revoke, methods=["POST"]),
            Route("/api/me", me, methods=["GET"]),
            *resource_routes(sandbox),
            Route("/admin/stats", _admin(admin_stats), methods=["GET"]),
            Route("/admin/reset", _admin(admin_reset), methods=["POST"]),
            Route("/admin/faults", _admin(admin_faults), methods=["GET", "POST", "DELETE"]),
            Route("/admin/settings", _admin(admin_settings), methods=["GET", "PATCH"]),
            Route("/admin/clock", _admin(admin_clock), methods=["POST"]),
            Route("/admin/grants", _admin(admin_grants), methods=["GET", "POST"]),
            Route("/admin/revoke", _admin(admin_revoke), methods=["POST"]),
            Route("/admin/expire", _admin(admin_expire), methods=["POST"]),
            Route("/admin/api-requests", _admin(admin_api_requests), methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ],
    )


def _authorize_problem(params: Mapping[str, str]) -> tuple[str, str] | None:
    if params.get("response_type") != "code":
        return "unsupported_response_type", "only response_type=code is supported"
    if not params.get("code_challenge"):
        return "invalid_request", "PKCE is required: send code_challenge"
    if params.get("code_challenge_method") != "S256":
        return "invalid_request", "code_challenge_method must be S256"
    return None


async def _consent_submitted(sandbox: Sandbox, request: Request) -> Response:
    form = await _read_form(request) or {}
    approve = form.get("decision") == "approve"
    subject = (form.get("subject") or DEFAULT_SUBJECT).strip()[:200] or DEFAULT_SUBJECT
    pending = sandbox._decide(form.get("request_id", ""), approve)
    if pending is None:
        return HTMLResponse(_error_page("this authorization request expired"), status_code=400)
    if not approve:
        params = {"error": "access_denied", "error_description": "the user denied access"}
        target = with_query(pending.redirect_uri, {**params, "state": pending.state})
        return RedirectResponse(target, status_code=303)
    code = sandbox._issue_code(pending, subject)
    target = with_query(pending.redirect_uri, {"code": code, "state": pending.state})
    return RedirectResponse(target, status_code=303)


def _consent_page(request_id: str, pending: AuthRequest, subject: str) -> str:
    e = html.escape
    scopes = "".join(f"<li>{e(s)}</li>" for s in pending.scope.split())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sandbox provider: authorize</title></head>
<body>
<h1>Authorize {e(pending.client.name)}</h1>
<p>{e(pending.client.name)} asks to access your sandbox account:</p>
<ul id="scopes">{scopes}</ul>
<form method="post" action="/oauth/authorize" id="consent">
<input type="hidden" name="request_id" value="{e(request_id)}">
<label for="subject">Signed in as</label>
<input type="text" id="subject" name="subject" value="{e(subject)}">
<button type="submit" id="approve" name="decision" value="approve">Approve</button>
<button type="submit" id="deny" name="decision" value="deny">Deny</button>
</form>
</body></html>
"""


def _error_page(message: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Sandbox provider: error</title></head>"
        f'<body><h1>Authorization error</h1><p id="error">{html.escape(message)}</p></body></html>'
    )
