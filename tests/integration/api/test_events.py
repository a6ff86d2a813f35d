"""/v1/connections/{id}/events and /v1/events: the event log over HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import uuid4

import pytest

from tests.integration.api.client import Api, Keys, assert_problem


async def connection_events(api: Api, connection_id: str, **params: Any) -> dict[str, Any]:
    r = await api.call("GET", f"/v1/connections/{connection_id}/events", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def feed(api: Api, **params: Any) -> dict[str, Any]:
    r = await api.call("GET", "/v1/events", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def feed_showing(api: Api, connection_id: str, **params: Any) -> dict[str, Any]:
    """The feed once it shows the last event of `connection_id`.

    On PostgreSQL an event shows once every older transaction has ended, in any database of
    the server: another process's open transaction may hold it back for a moment.
    """
    last = (await connection_events(api, connection_id, limit=500))["data"][-1]["id"]
    for _ in range(200):
        body = await feed(api, **params)
        if any(e["id"] == last for e in body["data"]):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"no event of {connection_id} in the feed")


async def test_a_connection_s_events_page_in_order_and_outlive_its_deletion(
    api: Api, keys: Keys
) -> None:
    conn = await api.connect_key(uuid4())
    path = f"/v1/connections/{conn['id']}"
    assert (await api.call("POST", f"{path}/disconnect")).status_code == 200
    assert (await api.call("DELETE", path)).status_code == 204

    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = await connection_events(api, conn["id"], **params)
        pages.append(page["data"])
        if page["next_cursor"] is None:
            break
        params["after"] = page["next_cursor"]

    events = [e for p in pages for e in p]
    assert [e["type"] for e in events][-2:] == ["connection.disconnected", "connection.deleted"]
    assert events[0]["type"] == "connection.created"
    assert [e["data"]["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert all(len(p) == 2 for p in pages[:-1])
    assert {e["data"]["connection_id"] for e in events} == {conn["id"]}
    assert events[-1]["data"]["from_status"] == "disconnected"
    # A reader key suffices; after the last sequence the page is empty, not a 404.
    r = await api.call("GET", f"{path}/events", key=keys.reader, params={"after": len(events)})
    assert r.json() == {"data": [], "next_cursor": None}


async def test_the_events_of_a_connection_that_never_existed_are_a_404(api: Api) -> None:
    r = await api.call("GET", f"/v1/connections/{uuid4()}/events")

    assert_problem(r, 404)


@pytest.mark.parametrize(
    "params",
    [{"after": -1}, {"after": "one"}, {"after": 2**63}, {"limit": 0}, {"limit": 501}],
)
async def test_bad_paging_of_a_connection_s_events_is_a_422(
    api: Api, params: dict[str, Any]
) -> None:
    conn = await api.connect_key(uuid4())

    r = await api.call("GET", f"/v1/connections/{conn['id']}/events", params=params)

    body = assert_problem(r, 422)
    assert body["errors"][0]["loc"] == ["query", next(iter(params))]


async def test_events_need_a_key_with_the_read_scope(api: Api, keys: Keys) -> None:
    conn = await api.connect_key(uuid4())
    for path in (f"/v1/connections/{conn['id']}/events", "/v1/events"):
        assert_problem(await api.call("GET", path, key=keys.revealer), 403)
        r = await api.http.get(path)
        assert_problem(r, 401)


async def test_the_feed_continues_from_its_cursor_and_keeps_it_when_nothing_is_new(
    api: Api,
) -> None:
    first = await api.connect_key(uuid4())
    start = await feed_showing(api, first["id"])
    assert start["data"][-1]["data"]["connection_id"] == first["id"]

    idle = await feed(api, after=start["next_cursor"])
    second = await api.connect_key(uuid4())
    news = await feed_showing(api, second["id"], after=start["next_cursor"], limit=500)

    assert idle == {"data": [], "next_cursor": start["next_cursor"]}
    assert {e["data"]["connection_id"] for e in news["data"]} == {second["id"]}
    assert news["data"][0]["type"] == "connection.created"
    assert news["next_cursor"] != start["next_cursor"]
    assert (await feed(api, after=news["next_cursor"]))["data"] == []


async def test_the_feed_pages_through_the_whole_log_once(api: Api) -> None:
    for _ in range(3):
        last = await api.connect_key(uuid4())
    everything = (await feed_showing(api, last["id"], limit=500))["data"]

    seen: list[str] = []
    cursor = None
    while True:
        page = await feed(api, limit=2, **({} if cursor is None else {"after": cursor}))
        if not page["data"]:
            break
        seen.extend(e["id"] for e in page["data"])
        cursor = page["next_cursor"]

    # What was visible stays first: events only ever show up after it.
    assert seen[: len(everything)] == [e["id"] for e in everything]
    assert len(seen) >= 3


@pytest.mark.parametrize("after", ["x", "1", "1.2.3", "-1.0", f"1.{2**63}", f"{2**64}.0"])
async def test_a_malformed_feed_cursor_is_a_422(api: Api, after: str) -> None:
    r = await api.call("GET", "/v1/events", params={"after": after})

    assert_problem(r, 422)


async def test_revealing_credentials_logs_which_key_revealed_them_and_no_secret(
    api: Api, keys: Keys
) -> None:
    conn = await api.connect_key(uuid4(), "acme-key-secret-42", api_secret="sssh-99")
    path = f"/v1/connections/{conn['id']}"

    r = await api.call("GET", f"{path}/credentials", key=keys.revealer)

    assert r.status_code == 200, r.text
    last = (await connection_events(api, conn["id"]))["data"][-1]
    assert last["type"] == "credentials.revealed"
    assert last["data"]["api_key"] == "revealer"
    assert last["data"]["credential_type"] == "api_key"
    assert (last["data"]["from_status"], last["data"]["to_status"]) == ("active", "active")
    everything = json.dumps(await feed_showing(api, conn["id"], limit=500))
    assert last["id"] in everything
    for secret in ("acme-key-secret-42", "sssh-99", keys.revealer, keys.admin):
        assert secret not in everything


async def test_a_refused_reveal_logs_nothing(api: Api, keys: Keys) -> None:
    conn = await api.connect_key(uuid4())
    path = f"/v1/connections/{conn['id']}"
    assert (await api.call("POST", f"{path}/disconnect")).status_code == 200
    before = (await connection_events(api, conn["id"]))["data"]

    assert_problem(await api.call("GET", f"{path}/credentials", key=keys.revealer), 409)
    assert_problem(await api.call("GET", f"{path}/credentials", key=keys.reader), 403)

    assert (await connection_events(api, conn["id"]))["data"] == before
