"""What the route modules share: the runtime of the app, parameters, and error responses."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from linkvault.api.paths import CALLBACK_PATH, HEALTH_PATHS
from linkvault.api.problems import PROBLEM_JSON, ApiProblem, invalid
from linkvault.api.schemas import Problem, ValidationProblem
from linkvault.domain import ProviderConnection
from linkvault.errors import StaleConnectionError
from linkvault.runtime import Runtime

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')


# Providers add their own parameters to the callback (iss, error_description, ...).
_ANY_QUERY = frozenset({CALLBACK_PATH, *HEALTH_PATHS})
_QUERY_NAMES: dict[int, frozenset[str]] = {}


async def known_query_only(request: Request) -> None:
    """Unknown query parameters are refused: a mistyped filter must not widen a listing."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.path in _ANY_QUERY:
        return
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        names = _QUERY_NAMES[id(route)] = frozenset(_query_names(route.dependant))
    unknown = sorted(set(request.query_params) - names)
    if unknown:
        raise ApiProblem(
            422,
            "validation-error",
            "Unprocessable Content",
            f"unknown query parameter(s): {', '.join(map(repr, unknown))}",
            extra={
                "errors": [
                    {
                        "loc": ["query", n],
                        "msg": "unknown query parameter",
                        "type": "extra_forbidden",
                    }
                    for n in unknown
                ]
            },
        )


def _query_names(dependant: Dependant) -> Iterator[str]:
    yield from (param.alias for param in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _query_names(sub)


def make_router(prefix: str = "") -> APIRouter:
    """A router whose routes refuse unknown query parameters."""
    return APIRouter(prefix=prefix, dependencies=[Depends(known_query_only)])


async def _runtime(request: Request) -> Runtime:
    # async: a plain function would run in a worker thread on every request.
    runtime: Runtime = request.app.state.runtime
    return runtime


CurrentRuntime = Annotated[Runtime, Depends(_runtime)]
ConnectionId = Annotated[UUID, Path(description="the connection's id")]

E400 = {"model": Problem, "description": "a body that cannot be parsed"}
E401 = {"model": Problem, "description": "no API key, or an unknown one"}
E403 = {"model": Problem, "description": "the API key lacks the scope"}
E404 = {"model": Problem, "description": "no such connection"}
E409 = {"model": Problem, "description": "stale version, or not allowed in the current status"}
E412 = {"model": Problem, "description": "If-Match names a version that is no longer current"}
E422 = {"model": ValidationProblem, "description": "invalid input"}
E500 = {"model": Problem, "description": "internal error"}
E503 = {"model": Problem, "description": "the database is unavailable"}
E413 = {"model": Problem, "description": "the request body is larger than the limit"}
COMMON: dict[int | str, dict[str, Any]] = {
    401: E401,
    403: E403,
    413: E413,
    422: E422,
    500: E500,
    503: E503,
}


def page_or_problem(description: str, model: str) -> dict[str, Any]:
    """A response the callback answers browsers with a page and other clients with a problem."""
    return {
        "description": description,
        "content": {
            "text/html": {"schema": {"type": "string"}},
            PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{model}"}},
        },
    }


def encode_cursor(connection_id: UUID) -> str:
    """An opaque cursor for the page after `connection_id`."""
    return base64.urlsafe_b64encode(connection_id.bytes).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> UUID:
    """The connection id a cursor stands for; raises ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("malformed cursor") from None
    if len(raw) != 16 or encode_cursor(UUID(bytes=raw)) != cursor:
        raise ValueError("malformed cursor")
    return UUID(bytes=raw)


def etag(conn: ProviderConnection) -> dict[str, str]:
    return {"ETag": f'"{conn.version}"'}


def one_version(body: int | None, header: int | None) -> int | None:
    """The version a change is conditional on: the body's or If-Match's, which must agree."""
    if body is not None and header is not None and body != header:
        raise ApiProblem(
            422,
            "validation-error",
            "Unprocessable Content",
            f"the body's version {body} and If-Match {header} disagree: send one of them",
            extra={
                "errors": [
                    {
                        "loc": ["body", "version"],
                        "msg": "disagrees with If-Match",
                        "type": "value_error",
                    },
                    {
                        "loc": ["header", "If-Match"],
                        "msg": "disagrees with version",
                        "type": "value_error",
                    },
                ]
            },
        )
    return body if body is not None else header


def precondition_failed(exc: StaleConnectionError) -> ApiProblem:
    return ApiProblem(
        412,
        "precondition-failed",
        "Precondition Failed",
        f"connection {exc.connection_id} is no longer at version {exc.expected_version}: "
        "reload it and try again",
    )


def parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.match(value)
    if match is None:
        raise invalid(
            'If-Match must be an ETag this API issued, like "3"',
            ["header", "If-Match"],
            "malformed ETag",
        )
    return int(match.group(1))
