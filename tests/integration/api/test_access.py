"""Bearer keys and scopes: 401 without a valid key, 403 without the scope."""

from __future__ import annotations

from uuid import uuid4

import httpx

from tests.integration.api.client import (
    Api,
    Keys,
    assert_problem,
    bearer,
)

PROTECTED = [
    ("GET", "/v1/connections"),
    ("POST", "/v1/connections"),
    ("GET", "/v1/connections/{id}"),
    ("PATCH", "/v1/connections/{id}"),
    ("DELETE", "/v1/connections/{id}"),
    ("POST", "/v1/connections/{id}/reconnect"),
    ("POST", "/v1/connections/{id}/refresh"),
    ("POST", "/v1/connections/{id}/disconnect"),
    ("GET", "/v1/connections/{id}/credentials"),
    ("GET", "/v1/providers"),
    ("GET", "/metrics"),
    ("GET", "/v1/no-such-route"),
]


async def test_every_route_but_health_callback_and_docs_answers_401_without_a_valid_key(
    client: httpx.AsyncClient,
) -> None:
    for method, template in PROTECTED:
        path = template.replace("{id}", str(uuid4()))
        for headers in ({}, bearer("lvk_not-a-key"), {"Authorization": "Basic Zm9vOmJhcg=="}):
            r = await client.request(method, path, headers=headers, content=b"{not json")
            body = assert_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert body["instance"] == path


async def test_a_known_key_without_the_scope_gets_403_not_401(api: Api, keys: Keys) -> None:
    r = await api.call(
        "POST",
        "/v1/connections",
        key=keys.reader,
        json={"user_id": str(uuid4()), "provider": "sandbox"},
    )
    body = assert_problem(r, 403)
    assert "write" in body["detail"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    conn = await api.connect_key(uuid4(), "secret-key-1")
    assert_problem(
        await api.call("GET", f"/v1/connections/{conn['id']}/credentials", key=keys.writer), 403
    )
    assert_problem(await api.call("GET", f"/v1/connections/{conn['id']}", key=keys.revealer), 403)
    assert (
        await api.call("GET", f"/v1/connections/{conn['id']}", key=keys.reader)
    ).status_code == 200
    assert (await api.call("GET", "/metrics", key=keys.reader)).status_code == 200
    reveal = await api.call("GET", f"/v1/connections/{conn['id']}/credentials", key=keys.revealer)
    assert reveal.status_code == 200
