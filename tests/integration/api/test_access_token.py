"""POST /v1/connections/{id}/access-token: a current access token, refreshed when needed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from linkvault.credentials import OAuth2Tokens, open_credentials
from linkvault.runtime import Runtime
from linkvault.testing import SandboxAdmin
from tests.integration.api.client import Api, Keys, assert_problem


def refreshes(admin: SandboxAdmin) -> int:
    issued: dict[str, int] = admin.stats()["issued"]
    return issued.get("refresh_token", 0)


async def stored_tokens(runtime: Runtime, connection_id: str) -> OAuth2Tokens:
    conn = await runtime.connections.get(UUID(connection_id))
    assert conn.credentials is not None
    return open_credentials(
        conn.credentials, connection_id=conn.id, cipher=runtime.cipher, expect=OAuth2Tokens
    )


async def ask(api: Api, connection_id: str, key: str | None = None, **body: Any) -> Any:
    kwargs: dict[str, Any] = {"json": body} if body else {}
    return await api.call(
        "POST", f"/v1/connections/{connection_id}/access-token", key=key, **kwargs
    )


@pytest.fixture
async def short_lived(api: Api, sandbox_admin: SandboxAdmin) -> dict[str, Any]:
    """An active sandbox connection whose access token lives two minutes; new ones, an hour."""
    sandbox_admin.update_settings(access_token_ttl=120)
    conn = await api.connect_oauth(uuid4())
    sandbox_admin.update_settings(access_token_ttl=3600)
    sandbox_admin.reset()
    return conn


async def test_a_current_token_is_handed_out_as_stored_without_a_refresh(
    api: Api, keys: Keys, runtime: Runtime, short_lived: dict[str, Any], sandbox_admin: SandboxAdmin
) -> None:
    r = await ask(api, short_lived["id"], key=keys.tokener)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_at"}
    stored = await stored_tokens(runtime, short_lived["id"])
    assert body["access_token"] == stored.access_token
    assert body["token_type"] == "Bearer"
    assert stored.expires_at is not None
    assert datetime.fromisoformat(body["expires_at"]) == stored.expires_at
    assert refreshes(sandbox_admin) == 0
    # Never the refresh token, under any name.
    assert stored.refresh_token is not None
    assert stored.refresh_token not in r.text


async def test_a_token_too_close_to_expiry_is_refreshed_first(
    api: Api, keys: Keys, runtime: Runtime, short_lived: dict[str, Any], sandbox_admin: SandboxAdmin
) -> None:
    before = await stored_tokens(runtime, short_lived["id"])
    r = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=600)
    assert r.status_code == 200, r.text
    after = await stored_tokens(runtime, short_lived["id"])
    assert r.json()["access_token"] == after.access_token != before.access_token
    assert after.refresh_token != before.refresh_token  # the sandbox rotates
    assert after.expires_at is not None
    remaining = after.expires_at - datetime.now(UTC)
    assert remaining.total_seconds() > 600
    assert refreshes(sandbox_admin) == 1
    # Now it is good for ten minutes: asking again refreshes nothing.
    again = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=600)
    assert again.json()["access_token"] == after.access_token
    assert refreshes(sandbox_admin) == 1


async def test_concurrent_callers_share_one_refresh(
    api: Api, keys: Keys, short_lived: dict[str, Any], sandbox_admin: SandboxAdmin
) -> None:
    answers = await asyncio.gather(
        *(ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=600) for _ in range(20))
    )
    assert [a.status_code for a in answers] == [200] * 20
    assert len({a.json()["access_token"] for a in answers}) == 1
    assert refreshes(sandbox_admin) == 1
    assert sandbox_admin.stats()["refused_total"] == 0


async def test_only_the_token_scope_or_admin_may_ask(
    api: Api, keys: Keys, short_lived: dict[str, Any]
) -> None:
    for key in (keys.reader, keys.writer, keys.revealer, keys.proxier):
        assert_problem(await ask(api, short_lived["id"], key=key), 403)
    assert (await ask(api, short_lived["id"], key=keys.admin)).status_code == 200
    # The token scope does not open the credentials, which hold the refresh token.
    r = await api.call("GET", f"/v1/connections/{short_lived['id']}/credentials", key=keys.tokener)
    assert_problem(r, 403)


@pytest.mark.parametrize(
    "body",
    [
        {"min_valid_seconds": -1},
        {"min_valid_seconds": 86_401},
        {"min_valid_seconds": "soon"},
        {"min_valid_seconds": 60, "refresh_token": "x"},
        [60],
    ],
)
async def test_a_bad_body_is_a_validation_problem_and_refreshes_nothing(
    api: Api,
    keys: Keys,
    runtime: Runtime,
    short_lived: dict[str, Any],
    sandbox_admin: SandboxAdmin,
    body: Any,
) -> None:
    before = await stored_tokens(runtime, short_lived["id"])
    r = await api.call(
        "POST", f"/v1/connections/{short_lived['id']}/access-token", key=keys.tokener, json=body
    )
    assert_problem(r, 422)
    assert await stored_tokens(runtime, short_lived["id"]) == before
    assert refreshes(sandbox_admin) == 0


async def test_an_unknown_connection_is_404(api: Api, keys: Keys) -> None:
    body = assert_problem(await ask(api, str(uuid4()), key=keys.tokener), 404)
    assert body["type"].endswith("not-found")


async def test_an_api_key_connection_has_no_access_token(api: Api, keys: Keys) -> None:
    conn = await api.connect_key(uuid4(), "secret-key-9876")
    body = assert_problem(await ask(api, conn["id"], key=keys.tokener), 409)
    assert body["type"].endswith("no-access-token")
    assert "secret-key-9876" not in str(body)


async def test_a_revoked_grant_answers_that_the_user_must_reconnect(
    api: Api, keys: Keys, short_lived: dict[str, Any], sandbox_admin: SandboxAdmin
) -> None:
    subjects = {g["subject"] for g in sandbox_admin.grants()}
    assert sum(sandbox_admin.revoke_subject(s) for s in subjects) >= 1
    r = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=600)
    body = assert_problem(r, 409)
    assert body["needs_user_action"] is True
    assert body["type"].endswith("needs-user-action")
    assert body["connection_status"] in ("expired", "revoked")
    shown = await api.get(short_lived["id"])
    assert shown["status"] == body["connection_status"]
    assert shown["needs_user_action"] is True
    # Asking again does not go back to the provider.
    again = assert_problem(await ask(api, short_lived["id"], key=keys.tokener), 409)
    assert again["needs_user_action"] is True
    assert refreshes(sandbox_admin) == 0


async def test_a_disconnected_connection_needs_its_user(
    api: Api, keys: Keys, short_lived: dict[str, Any]
) -> None:
    r = await api.call("POST", f"/v1/connections/{short_lived['id']}/disconnect")
    assert r.status_code == 200
    body = assert_problem(await ask(api, short_lived["id"], key=keys.tokener), 409)
    assert body["needs_user_action"] is True
    assert body["connection_status"] == "disconnected"


async def test_a_failing_provider_is_a_503_with_retry_after_and_is_not_hammered(
    api: Api, keys: Keys, runtime: Runtime, short_lived: dict[str, Any], sandbox_admin: SandboxAdmin
) -> None:
    before = await stored_tokens(runtime, short_lived["id"])
    sandbox_admin.inject_fault("server_error", count=None)
    r = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=600)
    body = assert_problem(r, 503)
    assert body["type"].endswith("token-unavailable")
    assert int(r.headers["retry-after"]) >= 1
    hits = sandbox_admin.stats()["faults"].get("server_error", 0)
    assert hits == 1
    # Within the worker's backoff, a second caller is told to wait; the provider is spared.
    again = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=600)
    assert_problem(again, 503)
    assert sandbox_admin.stats()["faults"].get("server_error", 0) == 1
    shown = await api.get(short_lived["id"])
    assert shown["status"] == "active"
    assert shown["refresh_failures"] == 1
    # The token itself is still good for two minutes: a caller content with that gets it.
    ok = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=30)
    assert ok.status_code == 200
    assert ok.json()["access_token"] == before.access_token


async def test_a_provider_whose_tokens_live_shorter_than_asked_is_a_validation_problem(
    api: Api, keys: Keys, runtime: Runtime, short_lived: dict[str, Any], sandbox_admin: SandboxAdmin
) -> None:
    sandbox_admin.update_settings(access_token_ttl=300)
    r = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=3600)
    body = assert_problem(r, 422)
    assert body["errors"][0]["loc"] == ["body", "min_valid_seconds"]
    # The one refresh it made is kept: nothing lost, and the next ask for less uses it.
    assert refreshes(sandbox_admin) == 1
    stored = await stored_tokens(runtime, short_lived["id"])
    ok = await ask(api, short_lived["id"], key=keys.tokener, min_valid_seconds=200)
    assert ok.json()["access_token"] == stored.access_token
    assert refreshes(sandbox_admin) == 1
