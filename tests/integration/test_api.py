from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.api import CALLBACK_PATH, create_app
from linkvault.crypto import generate_key
from linkvault.runtime import Runtime
from linkvault.settings import Settings
from linkvault.testing import RunningSandbox
from tests.sandbox_fixtures import drive_consent

BASE = "http://testserver"
KEY_PROVIDER_ID = UUID("0b7b3a5e-53c4-4c0e-9a34-7f1a2f5e9d11")
PROVIDERS_TOML = f"""
[[providers]]
slug = "acme-keys"
id = "{KEY_PROVIDER_ID}"
display_name = "Acme (API key)"
auth_style = "api_key"
"""
PROBLEM = "application/problem+json"


@dataclass
class Keys:
    admin: str
    reader: str
    writer: str
    revealer: str
    access: ApiKeySet


@pytest.fixture(scope="module")
def keys() -> Keys:
    admin, admin_entry = generate_api_key("admin", set(Scope))
    reader, reader_entry = generate_api_key("reader", {Scope.READ})
    writer, writer_entry = generate_api_key("writer", {Scope.READ, Scope.WRITE})
    revealer, revealer_entry = generate_api_key("revealer", {Scope.CREDENTIALS})
    access = ApiKeySet([admin_entry, reader_entry, writer_entry, revealer_entry])
    return Keys(admin, reader, writer, revealer, access)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def providers_file(tmp_path: Path) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(PROVIDERS_TOML)
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def make_settings(database_url: str, providers_file: Path, key: str | None = None) -> Settings:
    return Settings(
        database_url=database_url,
        keys=SecretStr(key or generate_key("k1")),
        providers_file=providers_file,
        public_url=BASE,
        return_origins=("https://app.example",),
    )


@pytest.fixture
async def runtime(
    database_url: str, providers_file: Path, running_sandbox: RunningSandbox
) -> AsyncIterator[Runtime]:
    settings = make_settings(database_url, providers_file)
    async with await Runtime.open(settings, env=running_sandbox.env(), migrate=True) as rt:
        yield rt


@pytest.fixture
async def client(runtime: Runtime, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime, keys.access)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield http


class Api:
    def __init__(self, http: httpx.AsyncClient, keys: Keys) -> None:
        self.http = http
        self.keys = keys
        self.responses: list[httpx.Response] = []

    async def call(
        self, method: str, path: str, *, key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**bearer(key or self.keys.admin), **kwargs.pop("headers", {})}
        response = await self.http.request(method, path, headers=headers, **kwargs)
        self.responses.append(response)
        return response

    async def start_oauth(self, user_id: UUID, **body: Any) -> dict[str, Any]:
        r = await self.call(
            "POST", "/v1/connections", json={"user_id": str(user_id), "provider": "sandbox", **body}
        )
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    async def callback(self, authorize_url: str, *, approve: bool = True) -> httpx.Response:
        params = await drive_consent(authorize_url, approve=approve)
        response = await self.http.get(f"{CALLBACK_PATH}?{urlencode(params)}")
        self.responses.append(response)
        return response

    async def connect_oauth(self, user_id: UUID) -> dict[str, Any]:
        started = await self.start_oauth(user_id)
        done = await self.callback(started["authorize_url"])
        assert done.status_code == 200, done.text
        return await self.get(started["connection"]["id"])

    async def connect_key(
        self, user_id: UUID, api_key: str = "acme-key-123", **body: Any
    ) -> dict[str, Any]:
        r = await self.call(
            "POST",
            "/v1/connections",
            json={"user_id": str(user_id), "provider": "acme-keys", "api_key": api_key, **body},
        )
        assert r.status_code == 201, r.text
        connection: dict[str, Any] = r.json()["connection"]
        return connection

    async def get(self, connection_id: str) -> dict[str, Any]:
        r = await self.call("GET", f"/v1/connections/{connection_id}")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    async def count(self) -> int:
        r = await self.call("GET", "/v1/connections", params={"limit": 500})
        return len(r.json()["items"])


@pytest.fixture
def api(client: httpx.AsyncClient, keys: Keys) -> Api:
    return Api(client, keys)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= body.keys()
    return body


# --- health, docs, access ------------------------------------------------------


async def test_health_answers_without_a_key(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}


async def test_openapi_and_docs_are_served_without_a_key_and_errors_are_problem_json(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert (await client.get("/docs")).status_code == 200
    get_one = schema["paths"]["/v1/connections/{connection_id}"]["get"]
    assert "application/problem+json" in get_one["responses"]["404"]["content"]
    assert get_one["security"] == [{"bearerAuth": []}]
    connection = schema["components"]["schemas"]["Connection"]["properties"]
    assert connection["id"]["format"] == "uuid"
    assert connection["created_at"]["format"] == "date-time"
    assert "encrypted_data" not in json.dumps(schema["components"]["schemas"]["Connection"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]


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


# --- the OAuth2 connect flow -----------------------------------------------------


async def test_an_oauth_connection_goes_from_start_through_the_sandbox_to_active(
    api: Api, running_sandbox: RunningSandbox
) -> None:
    user = uuid4()
    started = await api.start_oauth(user, alias="main account")
    conn = started["connection"]
    assert conn["status"] == "pending"
    assert conn["credential_type"] is None
    url = urlsplit(started["authorize_url"])
    assert started["authorize_url"].startswith(running_sandbox.url)
    query = dict(parse_qsl(url.query))
    assert query["redirect_uri"] == f"{BASE}{CALLBACK_PATH}"
    assert query["code_challenge_method"] == "S256"
    done = await api.callback(started["authorize_url"])
    assert done.status_code == 200
    assert done.headers["content-type"].startswith("text/html")
    assert conn["id"] in done.text
    assert 'id="status">active<' in done.text
    after = await api.get(conn["id"])
    assert after["status"] == "active"
    assert after["credential_type"] == "oauth2"
    assert after["expires_at"] is not None
    assert after["alias"] == "main account"


async def test_the_callback_redirects_to_return_to_with_the_connection_id(api: Api) -> None:
    started = await api.start_oauth(uuid4(), return_to="https://app.example/done?tab=links")
    done = await api.callback(started["authorize_url"])
    assert done.status_code == 303
    target = urlsplit(done.headers["location"])
    assert (target.scheme, target.netloc, target.path) == ("https", "app.example", "/done")
    params = dict(parse_qsl(target.query))
    assert params == {
        "tab": "links",
        "connection_id": started["connection"]["id"],
        "status": "active",
    }


async def test_a_replayed_or_unknown_state_is_a_400_with_the_reason(api: Api) -> None:
    started = await api.start_oauth(uuid4())
    params = await drive_consent(started["authorize_url"])
    first = await api.http.get(CALLBACK_PATH, params={**params, "iss": "sandbox"})
    assert first.status_code == 200
    replay = await api.http.get(CALLBACK_PATH, params=params)
    body = assert_problem(replay, 400)
    assert "start the connection again" in body["detail"]
    page = await api.http.get(
        CALLBACK_PATH, params={"state": "forged", "code": "x"}, headers={"Accept": "text/html"}
    )
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert "start the connection again" in page.text
    assert_problem(await api.http.get(CALLBACK_PATH), 400)


async def test_a_denied_consent_fails_the_connection_with_a_400_page(api: Api) -> None:
    started = await api.start_oauth(uuid4(), return_to="https://app.example/back")
    params = await drive_consent(started["authorize_url"], approve=False)
    page = await api.http.get(CALLBACK_PATH, params=params, headers={"Accept": "text/html"})
    assert page.status_code == 400
    assert "access was denied at the provider" in page.text
    assert 'href="https://app.example/back"' in page.text
    after = await api.get(started["connection"]["id"])
    assert after["status"] == "failed"
    assert "denied" in after["status_reason"]


async def test_reconnect_sends_an_expired_connection_through_consent_again(
    api: Api, running_sandbox: RunningSandbox
) -> None:
    conn = await api.connect_oauth(uuid4())
    running_sandbox.sandbox.revoke_subject("sandbox-user")
    refreshed = await api.call("POST", f"/v1/connections/{conn['id']}/refresh")
    assert refreshed.status_code == 200
    assert refreshed.json()["outcome"] == "expired"
    assert refreshed.json()["connection"]["status"] == "expired"
    again = await api.call("POST", f"/v1/connections/{conn['id']}/reconnect", json={})
    assert again.status_code == 200, again.text
    assert again.json()["connection"]["id"] == conn["id"]
    done = await api.callback(again.json()["authorize_url"])
    assert done.status_code == 200
    assert (await api.get(conn["id"]))["status"] == "active"
    active = await api.call("POST", f"/v1/connections/{conn['id']}/reconnect")
    assert assert_problem(active, 409)["type"] == "urn:linkvault:problem:invalid-transition"


# --- API-key connections and the credentials endpoint -----------------------------


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


# --- listing and pagination ----------------------------------------------------------


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


# --- changes: rename, refresh, disconnect, delete -----------------------------------


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


# --- invalid input -------------------------------------------------------------------


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


# --- providers and metrics -----------------------------------------------------------


async def test_providers_lists_the_registry_without_client_secrets(api: Api) -> None:
    r = await api.call("GET", "/v1/providers", key=api.keys.reader)
    assert r.status_code == 200
    by_slug = {p["slug"]: p for p in r.json()["items"]}
    assert by_slug["sandbox"]["auth_style"] == "oauth2"
    assert by_slug["sandbox"]["configured"] is True
    assert by_slug["schwab"]["configured"] is False
    assert by_slug["acme-keys"]["id"] == str(KEY_PROVIDER_ID)
    assert "sandbox-secret" not in r.text


async def test_metrics_count_requests_by_route_and_the_refresh_worker(api: Api) -> None:
    conn = await api.connect_oauth(uuid4())
    await api.call("POST", f"/v1/connections/{conn['id']}/refresh")
    await api.http.get("/v1/connections")
    r = await api.call("GET", "/metrics", key=api.keys.reader)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'route="/v1/connections/{connection_id}"' in text
    assert (
        'linkvault_http_requests_total{method="GET",route="/v1/connections",status="401"} 1.0'
        in text
    )
    assert "linkvault_http_request_duration_seconds_bucket" in text
    assert "linkvault_refresh_refreshed_total 1.0" in text
    assert 'linkvault_refresh_failed_total{class="revoked"} 0.0' in text
    assert "linkvault_refresh_due_unclaimed 0.0" in text
    assert "linkvault_refresh_oldest_overdue_seconds" in text
    assert str(conn["id"]) not in text


# --- failures -----------------------------------------------------------------------


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
