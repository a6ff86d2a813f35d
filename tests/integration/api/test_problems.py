"""Every error is an RFC 9457 problem: invalid input, unknown routes, failures."""

from __future__ import annotations

import sqlite3
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from tests.integration.api.client import (
    Api,
    assert_problem,
)


async def test_invalid_input_is_a_422_listing_the_fields_and_changes_nothing(api: Api) -> None:
    conn = await api.connect_key(uuid4(), alias="kept")
    before = await api.count()
    bad_bodies: list[Any] = [
        {"user_id": "not-a-uuid", "provider": "acme-keys", "api_key": "leak-me-please"},
        {"user_id": str(uuid4()), "provider": "acme-keys", "api_key": "k", "alias": "x" * 201},
        {"user_id": str(uuid4()), "provider": "nobody", "api_key": "k"},
        {"user_id": str(uuid4()), "provider": "acme-keys"},
        {"user_id": str(uuid4()), "provider": "sandbox", "api_key": "k"},
        {"user_id": str(uuid4()), "provider": "sandbox", "return_to": "javascript:alert(1)"},
        {"user_id": str(uuid4()), "provider": "sandbox", "alias": "nul\x00"},
        {"user_id": str(uuid4()), "provider": "sandbox", "scopes": ["has space"]},
        {"user_id": str(uuid4()), "provider": "acme-keys", "api_key": "k", "extra": 1},
        [1, 2],
    ]
    for body in bad_bodies:
        r = await api.call("POST", "/v1/connections", json=body)
        problem = assert_problem(r, 422)
        assert problem["type"] == "urn:linkvault:problem:validation-error"
        assert "errors" in problem
        assert "leak-me-please" not in r.text
    first = (await api.call("POST", "/v1/connections", json=bad_bodies[0])).json()
    assert ["body", "user_id"] in [e["loc"] for e in first["errors"]]
    raw = await api.call(
        "POST", "/v1/connections", content=b"{broken", headers={"Content-Type": "application/json"}
    )
    assert_problem(raw, 422)
    for params in (
        {"limit": 0},
        {"limit": 501},
        {"status": "sleeping"},
        {"user_id": "x"},
        {"userid": str(uuid4())},
    ):
        assert_problem(await api.call("GET", "/v1/connections", params=params), 422)
    path = f"/v1/connections/{conn['id']}"
    assert_problem(await api.call("PATCH", path, json={"alias": "y" * 201}), 422)
    assert_problem(await api.call("PATCH", path, json={"alias": "y", "version": 0}), 422)
    assert_problem(
        await api.call("PATCH", path, json={"alias": "y"}, headers={"If-Match": "nope"}), 422
    )
    assert_problem(await api.call("GET", "/v1/connections/not-a-uuid"), 422)
    assert await api.count() == before
    assert (await api.get(conn["id"]))["alias"] == "kept"
    assert (await api.get(conn["id"]))["version"] == conn["version"]


async def test_an_unknown_route_and_a_wrong_method_are_problems(api: Api) -> None:
    assert_problem(await api.call("GET", "/v1/nothing-here"), 404)
    assert_problem(await api.call("PUT", "/v1/connections"), 405)


async def test_an_unexpected_failure_is_a_500_problem_that_names_no_internals(
    api: Api, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await api.connect_key(uuid4())
    # A status no linkvault writes: stores trust what their own constraints let in.
    corrupt = "UPDATE provider_connections SET status = 'sleeping'"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as lite:
            lite.execute("PRAGMA ignore_check_constraints = ON")
            lite.execute(corrupt)
    else:
        pg = await asyncpg.connect(database_url)
        try:
            await pg.execute(
                "ALTER TABLE provider_connections DROP CONSTRAINT provider_connections_status_check"
            )
            await pg.execute(corrupt)
        finally:
            await pg.close()
    r = await api.call("GET", f"/v1/connections/{conn['id']}")
    body = assert_problem(r, 500)
    assert body["type"] == "urn:linkvault:problem:internal-error"
    assert "provider_slug" not in r.text
    assert "InvalidConnectionError" not in r.text
    assert any(body["error_id"] in rec.getMessage() for rec in caplog.records)
    listing = await api.call("GET", "/v1/connections")
    assert_problem(listing, 500)
