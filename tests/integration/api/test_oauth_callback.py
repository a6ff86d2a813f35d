"""The OAuth2 callback: consent through the sandbox, return_to, replays and denials."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl, urlsplit
from uuid import uuid4

from linkvault.api import CALLBACK_PATH
from linkvault.testing import RunningSandbox
from tests.integration.api.client import (
    BASE,
    Api,
    assert_problem,
)
from tests.sandbox_fixtures import drive_consent


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
    # Reconnecting an active connection renews its consent; it stays active meanwhile.
    before = await api.get(conn["id"])
    renewal = await api.call("POST", f"/v1/connections/{conn['id']}/reconnect")
    assert renewal.status_code == 200, renewal.text
    assert (await api.get(conn["id"]))["status"] == "active"
    assert (await api.callback(renewal.json()["authorize_url"])).status_code == 200
    renewed = await api.get(conn["id"])
    assert renewed["status"] == "active"
    consented = datetime.fromisoformat(renewed["connected_at"])
    assert consented > datetime.fromisoformat(before["connected_at"])
    await api.call("POST", f"/v1/connections/{conn['id']}/disconnect")
    gone = await api.call("POST", f"/v1/connections/{conn['id']}/reconnect")
    assert assert_problem(gone, 409)["type"] == "urn:linkvault:problem:invalid-transition"
