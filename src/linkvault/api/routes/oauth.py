"""The OAuth2 callback: where the provider sends the user back after consent."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Annotated
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from linkvault.api.paths import CALLBACK_PATH
from linkvault.api.problems import ApiProblem, page, problem_response, wants_html
from linkvault.api.routes.common import CurrentRuntime, make_router, page_or_problem
from linkvault.services.connect import CallbackResult

router = make_router()


@router.get(
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
        400: page_or_problem("the authorization failed", "Problem"),
        422: page_or_problem("invalid input", "ValidationProblem"),
        500: page_or_problem("internal error", "Problem"),
        503: page_or_problem("the database is unavailable", "Problem"),
    },
)
async def oauth_callback(
    runtime: CurrentRuntime,
    request: Request,
    state: Annotated[str | None, Query(max_length=512)] = None,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    error: Annotated[str | None, Query(max_length=200, pattern=r"^[\x20-\x7E]*$")] = None,
) -> Response:
    result = await runtime.connect.complete_oauth(state=state or "", code=code, error=error)
    if not result.succeeded:
        return _failed(request, result)
    conn = result.connection
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
    return HTMLResponse(page("Connected", body))


def _failed(request: Request, result: CallbackResult) -> Response:
    conn = result.connection
    if wants_html(request):
        link = ""
        if result.return_to:
            href = html.escape(result.return_to)
            link = f'<p><a id="return" href="{href}">Back to the application</a></p>'
        body = (
            f'<p id="error">{html.escape(result.error or "")}</p>'
            f'<p>Connection <code id="connection-id">{conn.id}</code> is '
            f'<strong id="status">{conn.status.value}</strong>.</p>{link}'
        )
        return HTMLResponse(page("Connection failed", body), status_code=400)
    problem = ApiProblem(
        400,
        "authorization-failed",
        "Connection failed",
        result.error,
        extra={"connection_id": str(conn.id), "connection_status": conn.status.value},
    )
    return problem_response(request, problem)


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
