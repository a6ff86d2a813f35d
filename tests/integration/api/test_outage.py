from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.api import create_app
from linkvault.crypto import generate_key
from linkvault.runtime import Runtime
from linkvault.settings import Settings
from linkvault.testing import FakeClock
from linkvault.testing.api import api_in_thread
from tests.pg_cluster import (
    PrivateCluster,
    private_postgres_fixture,
    running_private_postgres_fixture,
)
from tests.support import API_KEY_PROVIDER_TOML

__all__ = ["private_postgres_fixture", "running_private_postgres_fixture"]


@pytest.fixture
async def outage_settings(running_private_postgres: PrivateCluster, tmp_path: Path) -> Settings:
    url = await running_private_postgres.create_database()
    providers = tmp_path / "providers.toml"
    providers.write_text(API_KEY_PROVIDER_TOML)
    return Settings(database_url=url, keys=SecretStr(generate_key("k1")), providers_file=providers)


@pytest.fixture
async def outage_client(
    running_private_postgres: PrivateCluster, outage_settings: Settings
) -> AsyncIterator[tuple[httpx.AsyncClient, PrivateCluster]]:
    key, entry = generate_api_key("admin", set(Scope))
    async with await Runtime.open(outage_settings, env={}) as runtime:
        app = create_app(runtime, ApiKeySet([entry]))
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as http:
            yield http, running_private_postgres


async def test_the_api_answers_503_while_postgres_is_down_and_recovers_without_a_restart(
    outage_client: tuple[httpx.AsyncClient, PrivateCluster],
) -> None:
    http, cluster = outage_client
    body = {"user_id": str(uuid4()), "provider": "acme-keys", "api_key": "k"}
    created = await http.post("/v1/connections", json=body)
    assert created.status_code == 201
    conn_id = created.json()["connection"]["id"]
    assert (await http.get("/v1/health")).status_code == 200

    await cluster.astop()
    for method, path in [
        ("GET", "/v1/health"),
        ("GET", "/v1/connections"),
        ("GET", f"/v1/connections/{conn_id}"),
        ("POST", f"/v1/connections/{conn_id}/disconnect"),
    ]:
        r = await http.request(method, path)
        assert r.status_code == 503, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["retry-after"] == "5"
        problem = r.json()
        assert problem["type"] == "urn:linkvault:problem:database-unavailable"
        assert "127.0.0.1" not in r.text
        assert "asyncpg" not in r.text.lower()
    refused = await http.post("/v1/connections", json=body)
    assert refused.status_code == 503

    await cluster.astart()
    assert (await http.get("/v1/health")).status_code == 200
    got = await http.get(f"/v1/connections/{conn_id}")
    assert got.status_code == 200
    assert got.json()["status"] == "active"
    listing = await http.get("/v1/connections")
    assert [c["id"] for c in listing.json()["items"]] == [conn_id]


async def test_an_outage_is_logged_once_then_summarized_then_its_recovery_once(
    running_private_postgres: PrivateCluster,
    outage_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, entry = generate_api_key("admin", set(Scope))
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="linkvault.api")
    with api_in_thread(outage_settings, ApiKeySet([entry]), env={}, clock=clock) as api:
        async with httpx.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            assert (await http.get("/v1/health")).status_code == 200
            await running_private_postgres.astop()
            for _ in range(40):
                assert (await http.get("/v1/connections")).status_code == 503
            clock.advance(seconds=61)
            for _ in range(5):
                assert (await http.get(f"/v1/connections/{uuid4()}")).status_code == 503
            await running_private_postgres.astart()
            assert (await http.get("/v1/health")).status_code == 200
            assert (await http.get("/v1/connections")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "linkvault.api"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("the database is unavailable: ")
    assert lines[1].startswith("the database is still unavailable after 61s: 40 failures since")
    assert "41 in all" in lines[1]
    assert lines[2].startswith("the database is available again after 61s; 45 failures")
    assert [r.levelname for r in caplog.records if r.name == "linkvault.api"] == [
        "WARNING",
        "WARNING",
        "INFO",
    ]
