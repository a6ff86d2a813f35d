"""/v1/connections: start, list, read, rename, refresh, disconnect, delete."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from linkvault.runtime import Runtime
from tests.integration.api.client import (
    KEY_PROVIDER_ID,
    Api,
    Keys,
    assert_problem,
)


async def test_an_api_key_provider_connects_at_once(api: Api) -> None:
    r = await api.call(
        "POST",
        "/v1/connections",
        json={
            "user_id": str(uuid4()),
            "provider": "acme-keys",
            "api_key": "k-1",
            "api_secret": "s-1",
        },
    )
    assert r.status_code == 201
    body = r.json()
    assert body["authorize_url"] is None
    assert body["connection"]["status"] == "active"
    assert body["connection"]["credential_type"] == "api_key"
    assert r.headers["location"] == f"/v1/connections/{body['connection']['id']}"
    assert "k-1" not in r.text
    assert "s-1" not in r.text


async def test_reconnect_gives_an_api_key_connection_a_new_key(api: Api, runtime: Runtime) -> None:
    conn = await api.connect_key(uuid4(), "old-key")
    stored = await runtime.store.find_by_id(UUID(conn["id"]))
    assert stored is not None
    stored.mark_revoked("the provider revoked the key")
    await runtime.store.save(stored)
    missing = await api.call("POST", f"/v1/connections/{conn['id']}/reconnect", json={})
    assert_problem(missing, 422)
    r = await api.call(
        "POST", f"/v1/connections/{conn['id']}/reconnect", json={"api_key": "new-key"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["connection"]["status"] == "active"
    creds = await api.call("GET", f"/v1/connections/{conn['id']}/credentials")
    assert creds.json()["payload"]["api_key"] == "new-key"


async def test_pagination_walks_every_row_exactly_once(api: Api) -> None:
    user, other = uuid4(), uuid4()
    mine = {(await api.connect_key(user))["id"] for _ in range(23)}
    await api.connect_key(other)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"user_id": str(user), "limit": 5}
        if cursor:
            params["cursor"] = cursor
        r = await api.call("GET", "/v1/connections", params=params)
        assert r.status_code == 200
        page = r.json()
        seen += [c["id"] for c in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == mine
    assert seen == sorted(seen, key=lambda s: UUID(s).int)


async def test_listing_filters_by_user_provider_status_and_expiry(
    api: Api, runtime: Runtime
) -> None:
    user = uuid4()
    oauth = await api.connect_oauth(user)
    keyed = await api.connect_key(user)
    pending = (await api.start_oauth(user))["connection"]
    await api.connect_key(uuid4())

    async def ids(**params: Any) -> set[str]:
        r = await api.call("GET", "/v1/connections", params={"user_id": str(user), **params})
        assert r.status_code == 200, r.text
        return {c["id"] for c in r.json()["items"]}

    assert await ids() == {oauth["id"], keyed["id"], pending["id"]}
    assert await ids(provider="sandbox") == {oauth["id"], pending["id"]}
    assert await ids(provider=str(KEY_PROVIDER_ID)) == {keyed["id"]}
    assert await ids(status="pending") == {pending["id"]}
    assert await ids(expiring_within=60) == {oauth["id"]}
    assert await ids(expiring_within=1) == set()
    unknown = await api.call("GET", "/v1/connections", params={"provider": "nobody"})
    assert assert_problem(unknown, 422)["errors"][0]["loc"] == ["query", "provider"]
    bad_cursor = await api.call("GET", "/v1/connections", params={"cursor": "!!"})
    assert_problem(bad_cursor, 422)


async def test_rename_with_a_stale_if_match_is_a_412_a_stale_version_a_409_and_changes_nothing(
    api: Api,
) -> None:
    conn = await api.connect_key(uuid4(), alias="first")
    got = await api.call("GET", f"/v1/connections/{conn['id']}")
    etag = got.headers["etag"]
    assert etag == f'"{conn["version"]}"'
    ok = await api.call(
        "PATCH",
        f"/v1/connections/{conn['id']}",
        json={"alias": "second"},
        headers={"If-Match": etag},
    )
    assert ok.status_code == 200
    assert ok.json()["alias"] == "second"
    assert ok.headers["etag"] == f'"{conn["version"] + 1}"'
    stale_header = await api.call(
        "PATCH",
        f"/v1/connections/{conn['id']}",
        json={"alias": "third"},
        headers={"If-Match": etag},
    )
    assert assert_problem(stale_header, 412)["type"] == "urn:linkvault:problem:precondition-failed"
    stale_body = await api.call(
        "PATCH",
        f"/v1/connections/{conn['id']}",
        json={"alias": "third", "version": conn["version"]},
    )
    assert assert_problem(stale_body, 409)["type"] == "urn:linkvault:problem:stale-connection"
    assert (await api.get(conn["id"]))["alias"] == "second"
    cleared = await api.call("PATCH", f"/v1/connections/{conn['id']}", json={"alias": None})
    assert cleared.json()["alias"] is None
    assert (await api.get(conn["id"]))["alias"] is None


async def test_refresh_now_renews_the_tokens(api: Api, keys: Keys) -> None:
    conn = await api.connect_oauth(uuid4())
    path = f"/v1/connections/{conn['id']}"
    before = (await api.call("GET", f"{path}/credentials")).json()["payload"]
    r = await api.call("POST", f"{path}/refresh")
    assert r.status_code == 200
    assert r.json()["outcome"] == "refreshed"
    assert r.json()["connection"]["version"] > conn["version"]
    after = (await api.call("GET", f"{path}/credentials")).json()["payload"]
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]


async def test_refresh_is_a_409_when_not_active_not_refreshable_or_already_running(
    api: Api, runtime: Runtime
) -> None:
    pending = (await api.start_oauth(uuid4()))["connection"]
    r = await api.call("POST", f"/v1/connections/{pending['id']}/refresh")
    assert assert_problem(r, 409)["type"] == "urn:linkvault:problem:invalid-transition"
    keyed = await api.connect_key(uuid4())
    r = await api.call("POST", f"/v1/connections/{keyed['id']}/refresh")
    assert assert_problem(r, 409)["type"] == "urn:linkvault:problem:not-refreshable"
    oauth = await api.connect_oauth(uuid4())
    claim = await runtime.store.claim_connection(
        UUID(oauth["id"]), "another-worker", lease=timedelta(minutes=5)
    )
    assert claim is not None
    r = await api.call("POST", f"/v1/connections/{oauth['id']}/refresh")
    assert assert_problem(r, 409)["type"] == "urn:linkvault:problem:refresh-in-progress"
    assert (await api.get(oauth["id"]))["version"] == oauth["version"]


async def test_disconnect_is_soft_and_terminal(api: Api) -> None:
    conn = await api.connect_key(uuid4())
    r = await api.call("POST", f"/v1/connections/{conn['id']}/disconnect")
    assert r.status_code == 200
    assert r.json()["status"] == "disconnected"
    assert r.json()["credential_type"] is None
    assert (await api.get(conn["id"]))["status"] == "disconnected"
    again = await api.call("POST", f"/v1/connections/{conn['id']}/disconnect")
    body = assert_problem(again, 409)
    assert body["type"] == "urn:linkvault:problem:invalid-transition"
    assert body["current_status"] == "disconnected"


async def test_delete_removes_for_good(api: Api) -> None:
    conn = await api.connect_key(uuid4())
    r = await api.call("DELETE", f"/v1/connections/{conn['id']}")
    assert r.status_code == 204
    assert r.content == b""
    assert_problem(await api.call("GET", f"/v1/connections/{conn['id']}"), 404)
    assert_problem(await api.call("DELETE", f"/v1/connections/{conn['id']}"), 404)


async def test_unknown_ids_are_404_problems_everywhere(api: Api) -> None:
    missing = uuid4()
    for method, suffix, body in [
        ("GET", "", None),
        ("PATCH", "", {"alias": "x"}),
        ("DELETE", "", None),
        ("POST", "/reconnect", {}),
        ("POST", "/refresh", None),
        ("POST", "/disconnect", None),
        ("GET", "/credentials", None),
    ]:
        r = await api.call(method, f"/v1/connections/{missing}{suffix}", json=body)
        problem = assert_problem(r, 404)
        assert str(missing) in problem["detail"]
        assert problem["instance"] == f"/v1/connections/{missing}{suffix}"
