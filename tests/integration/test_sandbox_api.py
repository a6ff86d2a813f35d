"""The sandbox as a resource server: its protected API checks the access tokens it issued."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from linkvault.providers import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from linkvault.testing import RunningSandbox, SandboxAdmin
from linkvault.testing.sandbox.resources import accounts_of

BASIC = (
    "Basic " + base64.b64encode(f"{SANDBOX_CLIENT_ID}:{SANDBOX_CLIENT_SECRET}".encode()).decode()
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def alice(sandbox_admin: SandboxAdmin) -> dict[str, Any]:
    [grant] = sandbox_admin.seed_grants(["alice"])
    return grant


def refresh(url: str, refresh_token: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        headers={"Authorization": BASIC},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert response.json()["error"] == "invalid_token"


def test_an_access_token_lists_its_subjects_accounts_and_their_balances(
    running_sandbox: RunningSandbox, alice: dict[str, Any]
) -> None:
    with httpx.Client(base_url=running_sandbox.url, headers=bearer(alice["access_token"])) as http:
        accounts = http.get("/api/accounts")
        [first, _] = accounts.json()["accounts"]
        balances = http.get(f"/api/accounts/{first['id']}/balances")
        again = http.get(f"/api/accounts/{first['id']}/balances")

    assert accounts.status_code == 200
    assert accounts.json() == {"subject": "alice", "accounts": accounts_of("alice")}
    assert balances.status_code == 200
    assert balances.json()["account_id"] == first["id"]
    assert balances.json()["balances"][0]["currency"] == "USD"
    assert again.json() == balances.json()


def test_another_subjects_account_is_not_found(
    running_sandbox: RunningSandbox, alice: dict[str, Any]
) -> None:
    bobs = accounts_of("bob")[0]["id"]

    response = httpx.get(
        f"{running_sandbox.url}/api/accounts/{bobs}/balances", headers=bearer(alice["access_token"])
    )

    assert response.status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic abc", "Bearer not-a-token-this-sandbox-issued"],
)
def test_the_api_wants_a_bearer_token_it_issued(
    running_sandbox: RunningSandbox, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}

    response = httpx.get(f"{running_sandbox.url}/api/accounts", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    if authorization and authorization.startswith("Bearer n"):
        assert_invalid_token(response)


def test_an_access_token_stops_working_when_it_expires_and_its_refresh_works(
    running_sandbox: RunningSandbox, sandbox_admin: SandboxAdmin, alice: dict[str, Any]
) -> None:
    url = f"{running_sandbox.url}/api/accounts"
    before = httpx.get(url, headers=bearer(alice["access_token"]))

    assert sandbox_admin.expire_access_tokens("alice") == 1
    expired = httpx.get(url, headers=bearer(alice["access_token"]))
    renewed = refresh(running_sandbox.url, alice["refresh_token"])
    after = httpx.get(url, headers=bearer(renewed["access_token"]))

    assert before.status_code == 200
    assert_invalid_token(expired)
    assert after.status_code == 200
    assert sandbox_admin.stats()["api_refused"] == 1


def test_an_access_token_expires_with_the_sandbox_clock(
    running_sandbox: RunningSandbox, sandbox_admin: SandboxAdmin, alice: dict[str, Any]
) -> None:
    sandbox_admin.advance_clock(1801)

    assert_invalid_token(
        httpx.get(f"{running_sandbox.url}/api/accounts", headers=bearer(alice["access_token"]))
    )


def test_expiring_one_subjects_tokens_leaves_the_others_alone(
    running_sandbox: RunningSandbox, sandbox_admin: SandboxAdmin, alice: dict[str, Any]
) -> None:
    [bob] = sandbox_admin.seed_grants(["bob"])

    sandbox_admin.expire_access_tokens("alice")

    url = f"{running_sandbox.url}/api/accounts"
    assert httpx.get(url, headers=bearer(bob["access_token"])).status_code == 200
    assert_invalid_token(httpx.get(url, headers=bearer(alice["access_token"])))


def test_a_revoked_grant_closes_the_api_to_its_live_access_token(
    running_sandbox: RunningSandbox, sandbox_admin: SandboxAdmin, alice: dict[str, Any]
) -> None:
    url = f"{running_sandbox.url}/api/accounts"
    assert httpx.get(url, headers=bearer(alice["access_token"])).status_code == 200

    sandbox_admin.revoke_subject("alice")

    assert_invalid_token(httpx.get(url, headers=bearer(alice["access_token"])))


def test_a_reused_refresh_token_revokes_the_family_and_its_access_tokens(
    running_sandbox: RunningSandbox, alice: dict[str, Any]
) -> None:
    renewed = refresh(running_sandbox.url, alice["refresh_token"])
    reuse = httpx.post(
        f"{running_sandbox.url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": alice["refresh_token"]},
        headers={"Authorization": BASIC},
    )

    assert reuse.json()["error"] == "invalid_grant"
    assert_invalid_token(
        httpx.get(f"{running_sandbox.url}/api/accounts", headers=bearer(renewed["access_token"]))
    )


def test_the_echo_route_answers_what_it_received_and_the_sandbox_remembers_it(
    running_sandbox: RunningSandbox, sandbox_admin: SandboxAdmin, alice: dict[str, Any]
) -> None:
    body = b"x" * 100_000
    response = httpx.post(
        f"{running_sandbox.url}/api/echo/a/b?q=1&q=2",
        content=body,
        headers={**bearer(alice["access_token"]), "X-Custom": "yes"},
    )

    echoed = response.json()
    assert response.status_code == 200
    assert (echoed["method"], echoed["path"], echoed["query"]) == (
        "POST",
        "/api/echo/a/b",
        "q=1&q=2",
    )
    assert echoed["body_bytes"] == len(body)
    assert echoed["headers"]["x-custom"] == "yes"
    [seen] = sandbox_admin.api_requests()
    assert seen["path"] == "/api/echo/a/b"
    assert seen["headers"]["x-custom"] == "yes"
    assert ["x-custom", "yes"] in seen["raw_headers"]


def test_a_download_streams_the_size_asked_for(
    running_sandbox: RunningSandbox, alice: dict[str, Any]
) -> None:
    size = 3 * 1024 * 1024 + 7
    with httpx.stream(
        "GET",
        f"{running_sandbox.url}/api/download",
        params={"bytes": size},
        headers=bearer(alice["access_token"]),
    ) as response:
        received = sum(len(chunk) for chunk in response.iter_raw())

    assert response.headers["content-length"] == str(size)
    assert received == size


def test_api_faults_fire_on_the_api_only(
    running_sandbox: RunningSandbox, sandbox_admin: SandboxAdmin, alice: dict[str, Any]
) -> None:
    sandbox_admin.inject_fault("rate_limited", grant_type="api", retry_after=7)
    sandbox_admin.inject_fault("rate_limited")  # any grant type: the token endpoint's

    limited = httpx.get(
        f"{running_sandbox.url}/api/accounts", headers=bearer(alice["access_token"])
    )
    then = httpx.get(f"{running_sandbox.url}/api/accounts", headers=bearer(alice["access_token"]))

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert then.status_code == 200
    assert [f["grant_type"] for f in sandbox_admin.faults()] == [None]
