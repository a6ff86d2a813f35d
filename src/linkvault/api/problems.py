"""RFC 9457 problems: the one shape of every error answer, and the handlers that build them."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any
from uuid import UUID, uuid4

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Scope, Send

from linkvault.api.paths import CALLBACK_PATH
from linkvault.errors import (
    ConfigurationError,
    ConnectionStateError,
    DatabaseError,
    DecryptionError,
    InvalidArgumentError,
    InvalidStateError,
    InvalidTransitionError,
    LinkvaultError,
    NeedsUserActionError,
    NotAcceptedError,
    NotFoundError,
    StaleConnectionError,
    TokenUnavailableError,
    UnknownProviderError,
    WebhookNotFoundError,
)
from linkvault.outage import OutageLog

log = logging.getLogger("linkvault.api")

# A validation problem lists at most this many fields, each name cut to a readable length.
MAX_LISTED_ERRORS = 20
MAX_ERROR_TEXT = 120
PROBLEM_JSON = "application/problem+json"
# Inputs a service names that come from the request's path rather than its body.
_PATH_FIELDS = frozenset({"connection_id"})


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


def wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return request.url.path == CALLBACK_PATH and "text/html" in accept


def problem_response(request: Request, problem: ApiProblem) -> Response:
    """The response for `problem`: problem+json, or an HTML page for a browser on the callback."""
    if wants_html(request):
        return HTMLResponse(
            page(problem.title, f'<p id="error">{html.escape(problem.detail or "")}</p>'),
            status_code=problem.status,
            headers=problem.headers,
        )
    body = _problem_body(
        problem.status, problem.kind, problem.title, problem.detail, request.url.path, problem.extra
    )
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def unauthorized(detail: str, *, token_given: bool) -> ApiProblem:
    challenge = 'Bearer realm="linkvault"'
    if token_given:
        challenge += ', error="invalid_token"'
    return ApiProblem(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge}
    )


def _not_found(connection_id: UUID) -> ApiProblem:
    return ApiProblem(404, "not-found", "Not Found", f"connection {connection_id} not found")


def conflict(kind: str, detail: str, **extra: Any) -> ApiProblem:
    return ApiProblem(409, kind, "Conflict", detail, extra=extra)


def invalid(
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
    if isinstance(exc, WebhookNotFoundError):
        return ApiProblem(404, "not-found", "Not Found", str(exc))
    if isinstance(exc, StaleConnectionError):
        return conflict(
            "stale-connection",
            f"connection {exc.connection_id} was changed meanwhile: reload it and try again",
        )
    if isinstance(exc, InvalidTransitionError):
        return conflict("invalid-transition", str(exc), current_status=exc.current)
    if isinstance(exc, NeedsUserActionError):
        return conflict(
            exc.kind,
            str(exc),
            needs_user_action=True,
            connection_status=exc.status,
            reason=exc.reason,
        )
    if isinstance(exc, ConnectionStateError):
        return conflict(exc.kind, str(exc))
    if isinstance(exc, TokenUnavailableError):
        return ApiProblem(
            503,
            "token-unavailable",
            "Service Unavailable",
            str(exc),
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
        )
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
        return invalid(str(exc), ["body", "provider"], "unknown provider", "unknown_provider")
    if isinstance(exc, NotAcceptedError):
        where = "path" if exc.field in _PATH_FIELDS else "body"
        return invalid(str(exc), [where, exc.field], exc.reason, exc.kind)
    if isinstance(exc, InvalidArgumentError):
        if exc.field is not None:
            return invalid(str(exc), ["body", exc.field], "not accepted")
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


def internal_error(request: Request, exc: BaseException) -> Response:
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
        return internal_error(request, exc)
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


def install_handlers(app: FastAPI) -> None:
    """Every error becomes a problem: ours, the library's, validation's and Starlette's."""
    app.add_exception_handler(ApiProblem, _on_api_problem)
    app.add_exception_handler(LinkvaultError, _on_linkvault_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route answers on this scope's path; HEAD wherever GET is."""
    methods: set[str] = set()
    probe = {**scope, "method": "GET"}
    for route in routes:
        match, child = route.matches(probe)
        if match is not Match.NONE:
            methods |= getattr(child.get("route", route), "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


# --- for middlewares, which answer before any handler runs ---------------------


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def send_problem(scope: Scope, send: Send, problem: ApiProblem) -> None:
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


def page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>linkvault: {html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
