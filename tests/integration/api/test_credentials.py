"""/v1/connections/{id}/credentials: the one answer that holds a secret."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from linkvault.api import create_app
from linkvault.crypto import generate_key
from linkvault.runtime import Runtime
from linkvault.testing import RunningSandbox
from tests.integration.api.client import (
    BASE,
    Api,
    Keys,
    assert_problem,
    bearer,
    make_settings,
)


async def test_reading_credentials_returns_the_secret_uncached_and_logs_who_read_it(
    api: Api, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await api.connect_key(uuid4(), "very-secret-key-42", api_secret="very-secret-sig-42")
    caplog.set_level(logging.DEBUG)
    r = await api.call("GET", f"/v1/connections/{conn['id']}/credentials", key=keys.revealer)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert r.json()["payload"] == {
        "type": "api_key",
        "api_key": "very-secret-key-42",
        "api_secret": "very-secret-sig-42",
    }
    reads = [rec for rec in caplog.records if rec.name == "linkvault.api.audit"]
    assert len(reads) == 1
    assert conn["id"] in reads[0].getMessage()
    assert "revealer" in reads[0].getMessage()
    for record in caplog.records:
        text = record.getMessage() + json.dumps(record.__dict__, default=str)
        assert "very-secret" not in text


async def test_no_response_but_the_credentials_one_ever_holds_a_secret(
    api: Api, keys: Keys, running_sandbox: RunningSandbox
) -> None:
    user = uuid4()
    oauth = await api.connect_oauth(user)
    keyed = await api.connect_key(user, "plain-api-key-777", api_secret="plain-secret-777")
    await api.call("POST", f"/v1/connections/{oauth['id']}/refresh")
    await api.call("PATCH", f"/v1/connections/{oauth['id']}", json={"alias": "renamed"})
    await api.call("GET", "/v1/connections", params={"user_id": str(user)})
    await api.call("GET", "/v1/providers")
    await api.call("GET", "/metrics")
    await api.call(
        "POST",
        "/v1/connections",
        json={"user_id": "nope", "provider": "acme-keys", "api_key": "plain-api-key-888"},
    )
    await api.call("POST", f"/v1/connections/{keyed['id']}/disconnect")
    revealed = await api.call(
        "GET", f"/v1/connections/{oauth['id']}/credentials", key=keys.revealer
    )
    grant_tokens = [
        token
        for grant in running_sandbox.sandbox.grants()
        for token in (grant["access_token"], grant["refresh_token"])
    ]
    assert len(grant_tokens) == 2
    assert grant_tokens[0] in revealed.text
    secrets = [
        *grant_tokens,
        "plain-api-key-777",
        "plain-secret-777",
        "plain-api-key-888",
        "sandbox-secret",
    ]
    others = [r for r in api.responses if r is not revealed]
    assert len(others) >= 10
    for response in others:
        for secret in secrets:
            assert secret not in response.text, (response.request.url, secret)


async def test_credentials_of_a_disconnected_connection_are_a_409(api: Api) -> None:
    conn = await api.connect_key(uuid4())
    await api.call("POST", f"/v1/connections/{conn['id']}/disconnect")
    r = await api.call("GET", f"/v1/connections/{conn['id']}/credentials")
    assert assert_problem(r, 409)["type"] == "urn:linkvault:problem:no-credentials"


async def test_credentials_that_no_configured_key_opens_are_a_500_without_details(
    api: Api, database_url: str, providers_file: Path, keys: Keys, running_sandbox: RunningSandbox
) -> None:
    conn = await api.connect_key(uuid4(), "sealed-under-k1")
    settings = make_settings(database_url, providers_file, generate_key("k2"))
    async with await Runtime.open(settings, env=running_sandbox.env()) as other:
        transport = httpx.ASGITransport(app=create_app(other, keys.access))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            r = await http.get(
                f"/v1/connections/{conn['id']}/credentials", headers=bearer(keys.admin)
            )
            assert (
                await http.get(f"/v1/connections/{conn['id']}", headers=bearer(keys.admin))
            ).status_code == 200
    body = assert_problem(r, 500)
    assert body["type"] == "urn:linkvault:problem:decryption-failed"
    assert "k1" not in body["detail"]
    assert "sealed-under-k1" not in r.text
