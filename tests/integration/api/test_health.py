"""Liveness and readiness for orchestrators: /v1/health/live and /v1/health/ready."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from linkvault.api import create_app
from linkvault.api.app import begin_drain
from linkvault.runtime import Runtime
from tests.conftest import PostgresServer
from tests.integration.api.client import BASE, Keys, make_settings
from tests.support import problem_of


async def test_live_and_ready_answer_without_a_key(client: httpx.AsyncClient) -> None:
    live = await client.get("/v1/health/live")
    ready = await client.get("/v1/health/ready")

    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "schema": "current"}
    assert (await client.get("/v1/health")).json() == {"status": "ok", "database": "ok"}


async def test_both_are_in_the_openapi_document_without_security(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    for path in ("/v1/health/live", "/v1/health/ready"):
        assert paths[path]["get"].get("security") in (None, []), path
    assert "503" in paths["/v1/health/ready"]["get"]["responses"]
    assert "503" not in paths["/v1/health/live"]["get"]["responses"]


async def test_while_draining_ready_is_503_and_live_stays_200(runtime: Runtime, keys: Keys) -> None:
    app = create_app(runtime, keys.access)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        assert (await http.get("/v1/health/ready")).status_code == 200
        begin_drain(app)
        ready = await http.get("/v1/health/ready")
        live = await http.get("/v1/health/live")

    body = problem_of(ready, 503)
    assert body["type"] == "urn:linkvault:problem:not-ready"
    assert "shutting down" in body["detail"]
    assert live.status_code == 200


@pytest.fixture(params=["sqlite", "postgres"])
async def unmigrated(
    request: pytest.FixtureRequest, tmp_path: Path, providers_file: Path
) -> AsyncIterator[tuple[Runtime, str]]:
    """A runtime opened on a database no migration ran on (as a process that skipped the
    start-up check would be), and that database's URL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = await server.create_database(migrated=False)
    settings = make_settings(url, providers_file)
    async with await Runtime.open(settings, env={}, migrate=False, check_schema=False) as rt:
        yield rt, url


async def test_ready_is_503_while_the_schema_is_behind_and_200_once_migrated(
    unmigrated: tuple[Runtime, str], keys: Keys
) -> None:
    runtime, url = unmigrated
    app = create_app(runtime, keys.access)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        behind = await http.get("/v1/health/ready")
        live = await http.get("/v1/health/live")
        # The database answers: the older health check, which does not look at the schema,
        # says so.
        health = await http.get("/v1/health")
        await runtime.store.migrate()
        after = await http.get("/v1/health/ready")

    body = problem_of(behind, 503)
    assert body["type"] == "urn:linkvault:problem:not-ready"
    assert "linkvault migrate" in body["detail"]
    assert behind.headers["retry-after"] == "5"
    assert url not in behind.text
    assert live.status_code == 200
    assert health.status_code == 200
    assert after.status_code == 200
