"""A connection's health on /v1/connections: failures, next try, last error, needs_user_action."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from linkvault.runtime import Runtime
from linkvault.stores.common import ClaimResult
from tests.integration.api.client import Api, assert_problem

LEASE = timedelta(minutes=1)


async def record_failures(runtime: Runtime, connection_id: str, error: str, times: int) -> None:
    """Record failed refreshes as the worker does: claim, then finish with the error."""
    store, key = runtime.store, UUID(connection_id)
    for _ in range(times):
        assert await store.claim_connection(key, "test", lease=LEASE) is not None
        later = runtime.clock() + timedelta(minutes=5)
        await store.finish_claim(
            key, "test", ClaimResult(succeeded=False, next_attempt_at=later, error=error)
        )


def health(body: dict[str, Any]) -> tuple[Any, ...]:
    return (
        body["health"],
        body["needs_user_action"],
        body["needs_user_action_reason"],
        body["refresh_failures"],
        body["last_refresh_error"],
    )


async def test_a_fresh_connection_is_ok_with_nothing_on_record(api: Api) -> None:
    conn = await api.connect_key(uuid4())

    body = await api.get(conn["id"])

    assert health(conn) == health(body) == ("ok", False, None, 0, None)
    assert body["next_refresh_at"] is None


async def test_credentials_that_do_not_open_need_attention_after_a_refresh(
    api: Api, runtime: Runtime
) -> None:
    conn = await api.connect_oauth(uuid4())
    stored = await runtime.store.find_by_id(UUID(conn["id"]))
    assert stored is not None
    assert stored.credentials is not None
    sealed_elsewhere = runtime.cipher.seal(b"{}", connection_id=uuid4())
    stored.update_credentials(
        dataclasses.replace(stored.credentials, encrypted_data=sealed_elsewhere)
    )
    await runtime.store.save(stored)

    r = await api.call("POST", f"/v1/connections/{conn['id']}/refresh")

    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "decrypt_failed"
    body = await api.get(conn["id"])
    assert body["status"] == "active"
    assert body["health"] == "needs_attention"
    assert body["needs_user_action"] is False
    assert body["refresh_failures"] == 1
    assert body["last_refresh_error"].startswith("decrypt_failed: ")
    assert body["next_refresh_at"] is not None


async def test_a_rejected_client_needs_attention_and_a_transient_failure_is_retrying(
    api: Api, runtime: Runtime
) -> None:
    rejected = await api.connect_oauth(uuid4())
    flaky = await api.connect_oauth(uuid4())
    await record_failures(runtime, rejected["id"], "client_rejected: invalid_client", 1)
    await record_failures(runtime, flaky["id"], "unavailable: HTTP 503", 2)

    assert health(await api.get(rejected["id"])) == (
        "needs_attention", False, None, 1, "client_rejected: invalid_client",
    )  # fmt: skip
    assert health(await api.get(flaky["id"])) == (
        "retrying", False, None, 2, "unavailable: HTTP 503",
    )  # fmt: skip


async def test_an_expired_connection_and_one_out_of_attempts_need_their_user(
    api: Api, runtime: Runtime
) -> None:
    expired = await api.connect_key(uuid4())
    stored = await runtime.store.find_by_id(UUID(expired["id"]))
    assert stored is not None
    stored.mark_expired("the refresh token expired: reconnect")
    await runtime.store.save(stored)
    stuck = await api.connect_oauth(uuid4())
    attempts = runtime.worker.policy.max_attempts
    await record_failures(runtime, stuck["id"], "decrypt_failed: no key k0", attempts)

    assert health(await api.get(expired["id"])) == (
        "needs_user_action", True, "the refresh token expired: reconnect", 0, None,
    )  # fmt: skip
    body = await api.get(stuck["id"])
    assert body["health"] == "needs_user_action"
    assert body["needs_user_action"] is True
    assert body["refresh_failures"] == attempts
    assert f"failed {attempts} times in a row" in body["needs_user_action_reason"]
    assert "decrypt_failed: no key k0" in body["needs_user_action_reason"]


async def test_the_needs_user_action_filter_pages_through_only_those_connections(
    api: Api, runtime: Runtime
) -> None:
    user = uuid4()
    need: set[str] = set()
    for n in range(7):
        conn = await api.connect_key(user)
        if n % 2 == 0:
            stored = await runtime.store.find_by_id(UUID(conn["id"]))
            assert stored is not None
            stored.mark_revoked("revoked at the provider")
            await runtime.store.save(stored)
            need.add(conn["id"])
    seen: list[str] = []
    params: dict[str, Any] = {"user_id": str(user), "needs_user_action": "true", "limit": 2}
    while True:
        r = await api.call("GET", "/v1/connections", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) == 2 or page["next_cursor"] is None
        seen.extend(c["id"] for c in page["items"])
        assert all(c["needs_user_action"] for c in page["items"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert sorted(seen) == sorted(need)
    others = await api.call(
        "GET", "/v1/connections", params={"user_id": str(user), "needs_user_action": "false"}
    )
    assert {c["id"] for c in others.json()["items"]}.isdisjoint(need)
    assert len(others.json()["items"]) == 7 - len(need)


async def test_a_needs_user_action_that_is_not_a_boolean_is_a_422(api: Api) -> None:
    r = await api.call("GET", "/v1/connections", params={"needs_user_action": "maybe"})

    body = assert_problem(r, 422)
    assert body["errors"][0]["loc"] == ["query", "needs_user_action"]
