"""/v1/webhooks over HTTP (in-process ASGI), with deliveries to a real receiver on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from linkvault.api import create_app
from linkvault.runtime import Runtime
from tests.factories import feed_shows
from tests.integration.api.client import (
    BASE,
    PROVIDERS_TOML,
    Api,
    Keys,
    assert_problem,
    make_keys,
    make_settings,
)
from tests.integration.webhooks.conftest import Receiver


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=[True], ids=["http-loopback-allowed"])
def allow_http(request: pytest.FixtureRequest) -> bool:
    allowed: bool = request.param
    return allowed


@pytest.fixture
async def runtime(database_url: str, tmp_path: Path, allow_http: bool) -> AsyncIterator[Runtime]:
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS_TOML)
    settings = make_settings(database_url, providers).model_copy(
        update={"webhook_allow_http_loopback": allow_http}
    )
    async with await Runtime.open(settings, env={}, migrate=True) as rt:
        yield rt


@pytest.fixture
async def api(runtime: Runtime, keys: Keys) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=create_app(runtime, keys.access))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield Api(http, keys)


async def create(api: Api, url: str, **body: Any) -> dict[str, Any]:
    r = await api.call("POST", "/v1/webhooks", json={"url": url, **body}, key=api.keys.writer)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def drain(runtime: Runtime, connection_id: UUID) -> None:
    """Deliver what is due, once the feed shows the connection's events (PostgreSQL holds an
    event back while any older transaction of the server runs)."""
    await feed_shows(runtime.store, connection_id)
    while await runtime.dispatcher.run_once():
        pass


async def test_an_endpoint_is_created_listed_read_and_removed_and_its_secret_shown_once(
    api: Api, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create(
        api, "https://hooks.example.com/linkvault", events=["connection.expired"]
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["events"] == ["connection.expired"]
    assert created["enabled"] is True

    listed = await api.call("GET", "/v1/webhooks")
    one = await api.call("GET", f"/v1/webhooks/{created['id']}")
    assert listed.status_code == one.status_code == 200
    assert [w["id"] for w in listed.json()["items"]] == [created["id"]]
    assert one.json() == {k: v for k, v in created.items() if k != "secret"}
    stored = await runtime.store.webhook_endpoint(UUID(created["id"]))
    assert stored is not None
    assert secret.encode() not in stored.sealed_secret
    assert secret[6:].encode() not in stored.sealed_secret
    assert secret not in repr(stored)

    gone = await api.call("DELETE", f"/v1/webhooks/{created['id']}")
    assert gone.status_code == 204
    assert_problem(await api.call("GET", f"/v1/webhooks/{created['id']}"), 404)
    assert_problem(await api.call("DELETE", f"/v1/webhooks/{created['id']}"), 404)
    for r in api.responses[1:]:
        assert secret not in r.text
    assert secret not in caplog.text


async def test_unknown_event_types_and_bad_urls_are_refused_with_what_is_wrong(api: Api) -> None:
    unknown = assert_problem(
        await api.call(
            "POST", "/v1/webhooks", json={"url": "https://a.example", "events": ["nope.nope"]}
        ),
        422,
    )
    assert unknown["errors"][0]["loc"][:2] == ["body", "events"]
    for url, says in [
        ("ftp://a.example/x", "https"),
        ("http://hooks.example.com/x", "https"),
        ("https://user:pw@a.example/x", "user name"),
        ("not a url", "spaces"),
        ("hooks.example.com/x", "absolute https URL"),
    ]:
        body = assert_problem(await api.call("POST", "/v1/webhooks", json={"url": url}), 422)
        assert says in body["detail"], (url, body)
    assert (await api.call("GET", "/v1/webhooks")).json()["items"] == []


@pytest.mark.parametrize("allow_http", [False], indirect=True, ids=["http-refused"])
async def test_http_on_loopback_is_refused_unless_the_deployment_allows_it(api: Api) -> None:
    body = assert_problem(
        await api.call("POST", "/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}), 422
    )
    assert "LINKVAULT_WEBHOOK_ALLOW_HTTP_LOOPBACK" in body["detail"]
    ok = await api.call("POST", "/v1/webhooks", json={"url": "https://127.0.0.1:9/x"})
    assert ok.status_code == 201


async def test_webhooks_need_the_write_scope(api: Api) -> None:
    assert_problem(await api.call("GET", "/v1/webhooks", key=api.keys.reader), 403)
    assert_problem(
        await api.call(
            "POST", "/v1/webhooks", json={"url": "https://a.example"}, key=api.keys.reader
        ),
        403,
    )
    assert_problem(await api.http.get("/v1/webhooks"), 401)


async def test_deliveries_are_listed_with_their_attempts_and_a_replay_sends_the_same_id(
    api: Api, runtime: Runtime, receiver: Receiver
) -> None:
    created = await create(api, receiver.url, events=["connection.created"])
    receiver.secret = created["secret"]
    receiver.answers = [500]
    conn = UUID((await api.connect_key(uuid4()))["id"])
    await drain(runtime, conn)

    r = await api.call("GET", f"/v1/webhooks/{created['id']}/deliveries")
    assert r.status_code == 200, r.text
    [delivery] = r.json()["items"]
    assert delivery["status"] == "pending"
    assert delivery["event_type"] == "connection.created"
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(500, "HTTP 500")]

    replay = await api.call(
        "POST", f"/v1/webhooks/{created['id']}/deliveries/{delivery['id']}/replay"
    )
    assert replay.status_code == 202, replay.text
    await drain(runtime, conn)

    after = (await api.call("GET", f"/v1/webhooks/{created['id']}/deliveries")).json()["items"]
    assert after[0]["status"] == "delivered"
    assert [a["status_code"] for a in after[0]["attempts"]] == [500, 204]
    assert [x.webhook_id for x in receiver.received] == [str(delivery["event_id"])] * 2
    assert all(x.verified for x in receiver.received)
    missing = f"/v1/webhooks/{created['id']}/deliveries/{created['id']}/replay"
    assert_problem(await api.call("POST", missing), 404)
    for resp in api.responses[1:]:
        assert created["secret"] not in resp.text


async def test_the_openapi_document_describes_the_webhook_routes(api: Api) -> None:
    doc = (await api.call("GET", "/openapi.json")).json()
    paths = doc["paths"]
    assert {"post", "get"} <= paths["/v1/webhooks"].keys()
    assert {"get", "delete"} <= paths["/v1/webhooks/{webhook_id}"].keys()
    assert "get" in paths["/v1/webhooks/{webhook_id}/deliveries"]
    assert "post" in paths["/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"]
    created = paths["/v1/webhooks"]["post"]["responses"]["201"]
    assert "CreatedWebhook" in str(created)
    get_one = paths["/v1/webhooks/{webhook_id}"]["get"]
    assert "application/problem+json" in get_one["responses"]["404"]["content"]
    assert get_one["security"] == [{"bearerAuth": []}]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "secret" not in doc["components"]["schemas"]["Webhook"]["properties"]
