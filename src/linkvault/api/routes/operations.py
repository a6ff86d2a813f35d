"""Operations: health, Prometheus metrics, and the offline docs page."""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from linkvault.api.paths import DOCS_ASSETS, HEALTH_PATH, LIVE_PATH, READY_PATH
from linkvault.api.problems import ApiProblem
from linkvault.api.routes.common import E401, E403, E422, E500, E503, CurrentRuntime, make_router
from linkvault.api.schemas import Health, Live, Problem, Ready
from linkvault.api.security import ReadKey
from linkvault.errors import DatabaseError, SchemaError

log = logging.getLogger("linkvault.api")

# How long readiness waits for the database: an orchestrator's probe times out soon after.
READY_TIMEOUT_SECONDS = 3.0
NOT_READY = {
    "model": Problem,
    "description": "not ready: shutting down, the database does not answer, or its schema is "
    "behind this linkvault",
}

router = make_router()


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title}: API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        # The validator badge would send the schema to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(
    HEALTH_PATH,
    response_model=Health,
    tags=["operations"],
    summary="Health",
    description="No API key. 200 when the database answers, 503 when it does not.",
    responses={500: E500, 503: E503},
)
async def health(runtime: CurrentRuntime) -> Health:
    await runtime.connections.check_database(seconds=5)
    return Health(status="ok", database="ok")


@router.get(
    LIVE_PATH,
    response_model=Live,
    tags=["operations"],
    summary="Liveness",
    description="No API key, no database call: 200 while the process answers, draining "
    "included (restarting a draining process would cut its in-flight requests).",
    responses={500: E500},
)
async def live() -> Live:
    return Live(status="ok")


@router.get(
    READY_PATH,
    response_model=Ready,
    tags=["operations"],
    summary="Readiness",
    description="No API key. 200 when the database answers within a few seconds and its "
    "schema is current; 503 while shutting down (after SIGTERM), when the database does not "
    "answer, or when migrations are pending (`linkvault migrate`).",
    responses={500: E500, 503: NOT_READY},
)
async def ready(runtime: CurrentRuntime, request: Request) -> Ready:
    if request.app.state.draining:
        raise _not_ready("shutting down: in-flight requests are finishing")
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await runtime.store.check_schema()
    except SchemaError:
        raise _not_ready(
            "the database schema is behind this linkvault: run `linkvault migrate`"
        ) from None
    except (DatabaseError, TimeoutError) as exc:
        # The driver's message may name the host or the user: only its kind is logged.
        log.warning("ready: the database does not answer (%s)", type(exc).__name__)
        raise _not_ready("the database does not answer") from None
    return Ready(status="ok", database="ok", schema="current")


def _not_ready(detail: str) -> ApiProblem:
    return ApiProblem(503, "not-ready", "Service Unavailable", detail, headers={"Retry-After": "5"})


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    description="Scope `read`. Prometheus text format.",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}}},
        401: E401,
        403: E403,
        422: E422,
        500: E500,
    },
)
async def metrics(runtime: CurrentRuntime, request: Request, _key: ReadKey) -> Response:
    if not request.app.state.worker_running:
        # Without a worker here, the backlog gauges would never move: read them now.
        try:
            async with asyncio.timeout(2):
                await runtime.worker.update_gauges()
        except (DatabaseError, TimeoutError) as exc:
            log.debug("metrics: backlog gauges not updated: %s", type(exc).__name__)
    registry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
