from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from linkvault.oauth import build_authorize_url, code_challenge_s256, generate_code_verifier
from linkvault.providers import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, Provider
from linkvault.testing import (
    FaultKind,
    RunningSandbox,
    SandboxAdmin,
    SandboxClient,
    SandboxConfig,
    sandbox_in_subprocess,
    sandbox_in_thread,
)
from tests.sandbox_fixtures import drive_consent, running_sandbox, sandbox_admin

__all__ = ["running_sandbox", "sandbox_admin"]

REDIRECT = "http://127.0.0.1:9/callback"
BASIC = (
    "Basic " + base64.b64encode(f"{SANDBOX_CLIENT_ID}:{SANDBOX_CLIENT_SECRET}".encode()).decode()
)


def authorize_url(provider: Provider, verifier: str, state: str = "st-1") -> str:
    return build_authorize_url(
        provider,
        redirect_uri=REDIRECT,
        state=state,
        code_challenge=code_challenge_s256(verifier),
    )


async def post_token(
    url: str, form: dict[str, str], *, http: httpx.AsyncClient | None = None, **headers: str
) -> httpx.Response:
    if http is None:
        async with httpx.AsyncClient() as own:
            return await post_token(url, form, http=own, **headers)
    return await http.post(
        f"{url}/oauth/token", data=form, headers={"Authorization": BASIC, **headers}
    )


async def redeem(running: RunningSandbox, code: str, verifier: str) -> httpx.Response:
    return await post_token(
        running.url,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    )


async def refresh(
    running: RunningSandbox, refresh_token: str, http: httpx.AsyncClient | None = None
) -> httpx.Response:
    return await post_token(
        running.url, {"grant_type": "refresh_token", "refresh_token": refresh_token}, http=http
    )


async def connected(running: RunningSandbox) -> dict[str, Any]:
    verifier = generate_code_verifier()
    answer = await drive_consent(authorize_url(running.provider(), verifier))
    response = await redeem(running, answer["code"], verifier)
    assert response.status_code == 200
    tokens: dict[str, Any] = response.json()
    return tokens


async def test_consent_page_offers_approve_and_deny_buttons(
    running_sandbox: RunningSandbox,
) -> None:
    url = authorize_url(running_sandbox.provider(), generate_code_verifier())
    async with httpx.AsyncClient() as http:
        page = await http.get(url)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="approve"' in page.text
    assert 'id="deny"' in page.text


async def test_approving_redirects_with_a_code_and_the_state(
    running_sandbox: RunningSandbox,
) -> None:
    answer = await drive_consent(
        authorize_url(running_sandbox.provider(), generate_code_verifier(), state="xyz-42")
    )

    assert answer["state"] == "xyz-42"
    assert len(answer["code"]) >= 32
    assert running_sandbox.sandbox.stats()["authorizations"] == {"approved": 1}


async def test_denying_redirects_with_access_denied_and_the_state(
    running_sandbox: RunningSandbox,
) -> None:
    answer = await drive_consent(
        authorize_url(running_sandbox.provider(), generate_code_verifier(), state="s-9"),
        approve=False,
    )

    assert answer == {
        "error": "access_denied",
        "error_description": "the user denied access",
        "state": "s-9",
    }
    assert running_sandbox.sandbox.stats()["authorizations"] == {"denied": 1}


async def test_an_authorization_request_without_pkce_is_sent_back_with_invalid_request(
    running_sandbox: RunningSandbox,
) -> None:
    url = (
        f"{running_sandbox.url}/oauth/authorize?response_type=code"
        f"&client_id={SANDBOX_CLIENT_ID}&redirect_uri={REDIRECT}&state=abc"
    )

    answer = await drive_consent(url)

    assert answer["error"] == "invalid_request"
    assert answer["state"] == "abc"


async def test_an_unknown_client_gets_an_error_page_and_no_redirect(
    running_sandbox: RunningSandbox,
) -> None:
    url = f"{running_sandbox.url}/oauth/authorize?response_type=code&client_id=evil"
    async with httpx.AsyncClient() as http:
        page = await http.get(url + f"&redirect_uri={REDIRECT}")

    assert page.status_code == 400
    assert "location" not in page.headers
    assert "unknown client_id" in page.text


async def test_a_registered_redirect_list_refuses_other_redirect_uris() -> None:
    client = SandboxClient(redirect_uris=("http://127.0.0.1:9/registered",))
    with sandbox_in_thread(SandboxConfig(clients=(client,))) as running:
        async with httpx.AsyncClient() as http:
            page = await http.get(authorize_url(running.provider(), generate_code_verifier()))

    assert page.status_code == 400
    assert "redirect_uri" in page.text


async def test_the_consent_page_escapes_what_it_echoes(running_sandbox: RunningSandbox) -> None:
    url = authorize_url(running_sandbox.provider(), generate_code_verifier())
    async with httpx.AsyncClient() as http:
        page = await http.get(url + "&login_hint=" + quote('"><script>alert(1)</script>'))

    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text


async def test_a_code_with_its_verifier_yields_tokens(running_sandbox: RunningSandbox) -> None:
    tokens = await connected(running_sandbox)

    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 1800
    assert tokens["scope"] == "accounts:read"
    assert tokens["access_token"] != tokens["refresh_token"]
    assert running_sandbox.sandbox.stats()["issued"] == {"authorization_code": 1}


async def test_a_wrong_pkce_verifier_is_refused(running_sandbox: RunningSandbox) -> None:
    verifier = generate_code_verifier()
    answer = await drive_consent(authorize_url(running_sandbox.provider(), verifier))

    response = await redeem(running_sandbox, answer["code"], generate_code_verifier())

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    stats = running_sandbox.sandbox.stats()
    assert stats["refused"] == {"authorization_code": {"pkce_mismatch": 1}}
    assert stats["issued"] == {}


async def test_a_code_works_once_and_its_reuse_revokes_what_it_issued(
    running_sandbox: RunningSandbox,
) -> None:
    verifier = generate_code_verifier()
    answer = await drive_consent(authorize_url(running_sandbox.provider(), verifier))
    first = await redeem(running_sandbox, answer["code"], verifier)

    second = await redeem(running_sandbox, answer["code"], verifier)
    after = await refresh(running_sandbox, first.json()["refresh_token"])

    assert first.status_code == 200
    assert second.json()["error"] == "invalid_grant"
    assert after.json()["error"] == "invalid_grant"
    assert running_sandbox.sandbox.stats()["refused"] == {
        "authorization_code": {"code_reused": 1},
        "refresh_token": {"revoked": 1},
    }


async def test_an_expired_code_is_refused(running_sandbox: RunningSandbox) -> None:
    verifier = generate_code_verifier()
    answer = await drive_consent(authorize_url(running_sandbox.provider(), verifier))
    running_sandbox.sandbox.advance_clock(61)

    response = await redeem(running_sandbox, answer["code"], verifier)

    assert response.json()["error"] == "invalid_grant"
    assert running_sandbox.sandbox.stats()["refused"] == {"authorization_code": {"code_expired": 1}}


async def test_a_mismatched_redirect_uri_is_refused(running_sandbox: RunningSandbox) -> None:
    verifier = generate_code_verifier()
    answer = await drive_consent(authorize_url(running_sandbox.provider(), verifier))

    response = await post_token(
        running_sandbox.url,
        {
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": "http://127.0.0.1:9/other",
            "code_verifier": verifier,
        },
    )

    assert response.json()["error"] == "invalid_grant"


async def test_each_refresh_rotates_the_refresh_token_and_the_old_one_is_dead(
    running_sandbox: RunningSandbox,
) -> None:
    tokens = await connected(running_sandbox)
    running_sandbox.sandbox.settings.revoke_family_on_reuse = False

    renewed = (await refresh(running_sandbox, tokens["refresh_token"])).json()
    replay = await refresh(running_sandbox, tokens["refresh_token"])
    again = await refresh(running_sandbox, renewed["refresh_token"])

    assert renewed["refresh_token"] != tokens["refresh_token"]
    assert renewed["access_token"] != tokens["access_token"]
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert again.status_code == 200
    stats = running_sandbox.sandbox.stats()
    assert stats["issued"] == {"authorization_code": 1, "refresh_token": 2}
    assert stats["refused"] == {"refresh_token": {"refresh_token_reused": 1}}


async def test_replaying_a_rotated_refresh_token_revokes_the_whole_grant(
    running_sandbox: RunningSandbox,
) -> None:
    tokens = await connected(running_sandbox)
    renewed = (await refresh(running_sandbox, tokens["refresh_token"])).json()

    await refresh(running_sandbox, tokens["refresh_token"])
    current = await refresh(running_sandbox, renewed["refresh_token"])

    assert current.json()["error"] == "invalid_grant"
    assert running_sandbox.sandbox.stats()["refused"] == {
        "refresh_token": {"refresh_token_reused": 1, "revoked": 1}
    }


async def test_without_rotation_the_same_refresh_token_comes_back(
    running_sandbox: RunningSandbox,
) -> None:
    running_sandbox.sandbox.settings.rotate_refresh_tokens = False
    tokens = await connected(running_sandbox)

    first = (await refresh(running_sandbox, tokens["refresh_token"])).json()
    second = (await refresh(running_sandbox, tokens["refresh_token"])).json()

    assert first["refresh_token"] == second["refresh_token"] == tokens["refresh_token"]


async def test_a_sandbox_can_omit_the_refresh_token_from_refresh_answers(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    sandbox_admin.update_settings(rotate_refresh_tokens=False, echo_refresh_token=False)
    tokens = await connected(running_sandbox)

    body = (await refresh(running_sandbox, tokens["refresh_token"])).json()

    assert "refresh_token" not in body
    assert body["access_token"] != tokens["access_token"]


async def test_an_expired_refresh_token_is_refused(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    sandbox_admin.update_settings(refresh_token_ttl=3600)
    tokens = await connected(running_sandbox)
    assert tokens["refresh_token_expires_in"] == 3600
    sandbox_admin.advance_clock(3601)

    response = await refresh(running_sandbox, tokens["refresh_token"])

    assert response.json()["error"] == "invalid_grant"
    assert sandbox_admin.stats()["refused"] == {"refresh_token": {"refresh_token_expired": 1}}


async def test_an_access_token_opens_the_api_until_it_expires(
    running_sandbox: RunningSandbox,
) -> None:
    tokens = await connected(running_sandbox)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}

    async with httpx.AsyncClient(base_url=running_sandbox.url) as http:
        before = await http.get("/api/me", headers=bearer)
        running_sandbox.sandbox.advance_clock(1801)
        after = await http.get("/api/me", headers=bearer)

    assert before.json() == {"subject": "sandbox-user", "scope": "accounts:read"}
    assert after.status_code == 401


async def test_the_revocation_endpoint_ends_the_grant(running_sandbox: RunningSandbox) -> None:
    tokens = await connected(running_sandbox)
    async with httpx.AsyncClient() as http:
        revoked = await http.post(
            f"{running_sandbox.url}/oauth/revoke",
            data={"token": tokens["refresh_token"]},
            headers={"Authorization": BASIC},
        )

    response = await refresh(running_sandbox, tokens["refresh_token"])

    assert revoked.status_code == 200
    assert response.json()["error"] == "invalid_grant"
    assert running_sandbox.sandbox.stats()["revocations"] == 1


async def test_client_secret_post_is_accepted(running_sandbox: RunningSandbox) -> None:
    [seeded] = running_sandbox.sandbox.seed_grants(["alice"])
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{running_sandbox.url}/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": seeded["refresh_token"],
                "client_id": SANDBOX_CLIENT_ID,
                "client_secret": SANDBOX_CLIENT_SECRET,
            },
        )

    assert response.status_code == 200


async def test_a_wrong_client_secret_is_refused_as_invalid_client(
    running_sandbox: RunningSandbox,
) -> None:
    [seeded] = running_sandbox.sandbox.seed_grants(["alice"])
    wrong = "Basic " + base64.b64encode(f"{SANDBOX_CLIENT_ID}:nope".encode()).decode()

    response = await post_token(
        running_sandbox.url,
        {"grant_type": "refresh_token", "refresh_token": seeded["refresh_token"]},
        Authorization=wrong,
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert running_sandbox.sandbox.stats()["refused"] == {"refresh_token": {"invalid_client": 1}}


async def test_a_client_limited_to_basic_cannot_authenticate_in_the_body() -> None:
    client = SandboxClient(auth_methods=frozenset({"client_secret_basic"}))
    with sandbox_in_thread(SandboxConfig(clients=(client,))) as running:
        [seeded] = running.sandbox.seed_grants(["alice"])
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{running.url}/oauth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": seeded["refresh_token"],
                    "client_id": SANDBOX_CLIENT_ID,
                    "client_secret": SANDBOX_CLIENT_SECRET,
                },
            )

    assert response.status_code == 401
    assert "client_secret_post is not allowed" in response.json()["error_description"]


async def test_an_unsupported_grant_type_is_refused(running_sandbox: RunningSandbox) -> None:
    response = await post_token(running_sandbox.url, {"grant_type": "password"})

    assert response.json()["error"] == "unsupported_grant_type"


async def test_a_repeated_parameter_is_an_invalid_request(
    running_sandbox: RunningSandbox,
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{running_sandbox.url}/oauth/token",
            content=b"grant_type=refresh_token&grant_type=refresh_token",
            headers={"Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"},
        )

    assert response.json()["error"] == "invalid_request"


async def test_token_answers_are_not_cacheable(running_sandbox: RunningSandbox) -> None:
    [seeded] = running_sandbox.sandbox.seed_grants(["alice"])

    response = await refresh(running_sandbox, seeded["refresh_token"])

    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("kind", "options", "status"),
    [
        (FaultKind.SERVER_ERROR, {}, 500),
        (FaultKind.SERVER_ERROR, {"status": 503}, 503),
        (FaultKind.RATE_LIMITED, {"retry_after": 9}, 429),
        (FaultKind.INVALID_GRANT, {}, 400),
        (FaultKind.REVOKED, {}, 400),
        (FaultKind.MALFORMED, {}, 200),
    ],
)
async def test_a_fault_answers_the_next_token_request_and_is_counted(
    sandbox_admin: SandboxAdmin,
    running_sandbox: RunningSandbox,
    kind: FaultKind,
    options: dict[str, Any],
    status: int,
) -> None:
    [seeded] = sandbox_admin.seed_grants(["alice"])
    sandbox_admin.inject_fault(kind, **options)

    faulted = await refresh(running_sandbox, seeded["refresh_token"])
    healthy = await refresh(running_sandbox, seeded["refresh_token"])

    assert faulted.status_code == status
    assert healthy.status_code == 200
    stats = sandbox_admin.stats()
    assert stats["faults"] == {kind.value: 1}
    assert stats["refused"] == {"refresh_token": {f"fault:{kind.value}": 1}}
    assert stats["issued"] == {"refresh_token": 1}


async def test_a_rate_limit_fault_says_when_to_retry(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    sandbox_admin.inject_fault("rate_limited", retry_after=9)

    response = await refresh(running_sandbox, "whatever")

    assert response.headers["retry-after"] == "9"


async def test_a_malformed_fault_answers_success_with_a_body_that_is_not_json(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    sandbox_admin.inject_fault("malformed")

    response = await refresh(running_sandbox, "whatever")

    assert response.status_code == 200
    with pytest.raises(ValueError, match="Unterminated string"):
        response.json()


async def test_a_slow_fault_delays_the_answer_then_grants(
    running_sandbox: RunningSandbox,
) -> None:
    [seeded] = running_sandbox.sandbox.seed_grants(["alice"])
    running_sandbox.sandbox.inject_fault("slow", delay=0.3)

    started = asyncio.get_running_loop().time()
    response = await refresh(running_sandbox, seeded["refresh_token"])

    assert asyncio.get_running_loop().time() - started >= 0.3
    assert response.status_code == 200
    assert running_sandbox.sandbox.stats()["issued"] == {"refresh_token": 1}


async def test_a_fault_fires_count_times_then_stops(running_sandbox: RunningSandbox) -> None:
    grants = running_sandbox.sandbox.seed_grants(["a", "b", "c", "d"])
    running_sandbox.sandbox.inject_fault("server_error", count=3, status=502)

    statuses = [(await refresh(running_sandbox, g["refresh_token"])).status_code for g in grants]

    assert statuses == [502, 502, 502, 200]
    assert running_sandbox.sandbox.faults() == []


async def test_a_fault_can_target_one_grant_type(running_sandbox: RunningSandbox) -> None:
    running_sandbox.sandbox.inject_fault("server_error", grant_type="authorization_code")
    [seeded] = running_sandbox.sandbox.seed_grants(["alice"])

    response = await refresh(running_sandbox, seeded["refresh_token"])

    assert response.status_code == 200
    assert len(running_sandbox.sandbox.faults()) == 1


async def test_a_fault_rate_fails_about_that_share_of_requests() -> None:
    with sandbox_in_thread(SandboxConfig(seed=7)) as running:
        grants = running.sandbox.seed_grants([f"u{n}" for n in range(200)])
        running.sandbox.inject_fault("server_error", count=None, rate=0.25)

        async with httpx.AsyncClient() as http:
            statuses = [
                (await refresh(running, g["refresh_token"], http)).status_code for g in grants
            ]

    failed = statuses.count(500)
    assert 25 <= failed <= 75
    assert statuses.count(200) == 200 - failed


async def test_faults_are_listed_and_cleared_over_http(sandbox_admin: SandboxAdmin) -> None:
    sandbox_admin.inject_fault("server_error", count=None, status=503)
    sandbox_admin.inject_fault("slow", delay=2)

    listed = sandbox_admin.faults()
    sandbox_admin.clear_faults()

    assert [f["kind"] for f in listed] == ["server_error", "slow"]
    assert listed[0]["count"] is None
    assert sandbox_admin.faults() == []


async def test_a_malformed_fault_request_is_a_bad_request(sandbox_admin: SandboxAdmin) -> None:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        sandbox_admin.inject_fault("server_error", status=404)

    assert caught.value.response.status_code == 400
    assert "5xx" in caught.value.response.json()["error_description"]


async def test_seeded_grants_refresh_and_count_as_seeded_not_issued(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    seeded = sandbox_admin.seed_grants(count=3, subject_prefix="acct-")

    responses = [await refresh(running_sandbox, g["refresh_token"]) for g in seeded]

    assert [g["subject"] for g in seeded] == ["acct-0", "acct-1", "acct-2"]
    assert all(r.status_code == 200 for r in responses)
    stats = sandbox_admin.stats()
    assert stats["seeded"] == 3
    assert stats["issued"] == {"refresh_token": 3}


async def test_the_grants_listing_shows_the_token_issued_last(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    [seeded] = sandbox_admin.seed_grants(["alice"])
    renewed = (await refresh(running_sandbox, seeded["refresh_token"])).json()

    [grant] = sandbox_admin.grants("alice")

    assert grant["refresh_token"] == renewed["refresh_token"]
    assert grant["refreshes"] == 1
    assert sandbox_admin.grants("bob") == []


async def test_revoking_a_subject_kills_its_refresh_tokens(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    [alice] = sandbox_admin.seed_grants(["alice"])
    [bob] = sandbox_admin.seed_grants(["bob"])

    revoked = sandbox_admin.revoke_subject("alice")

    assert revoked == 1
    assert (await refresh(running_sandbox, alice["refresh_token"])).status_code == 400
    assert (await refresh(running_sandbox, bob["refresh_token"])).status_code == 200


async def test_reset_zeroes_counters_and_drops_faults(
    sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    [seeded] = sandbox_admin.seed_grants(["alice"])
    await refresh(running_sandbox, seeded["refresh_token"])
    sandbox_admin.inject_fault("server_error")

    sandbox_admin.reset()

    stats = sandbox_admin.stats()
    assert stats["issued_total"] == 0
    assert stats["seeded"] == 0
    assert stats["live_grants"] == 1
    assert running_sandbox.sandbox.faults() == []


async def test_concurrent_refreshes_of_one_token_let_exactly_one_win(
    running_sandbox: RunningSandbox,
) -> None:
    running_sandbox.sandbox.settings.revoke_family_on_reuse = False
    [seeded] = running_sandbox.sandbox.seed_grants(["alice"])

    responses = await asyncio.gather(
        *(refresh(running_sandbox, seeded["refresh_token"]) for _ in range(20))
    )

    assert sorted(r.status_code for r in responses) == [200] + [400] * 19
    stats = running_sandbox.sandbox.stats()
    assert stats["issued"] == {"refresh_token": 1}
    assert stats["refused"] == {"refresh_token": {"refresh_token_reused": 19}}


async def test_many_concurrent_refreshes_are_each_counted_once(
    running_sandbox: RunningSandbox,
) -> None:
    grants = running_sandbox.sandbox.seed_grants([f"u{n}" for n in range(300)])
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as http:

        async def one(token: str) -> int:
            async with limit:
                response = await http.post(
                    f"{running_sandbox.url}/oauth/token",
                    data={"grant_type": "refresh_token", "refresh_token": token},
                    headers={"Authorization": BASIC},
                )
                return response.status_code

        statuses = await asyncio.gather(*(one(g["refresh_token"]) for g in grants))

    assert statuses.count(200) == 300
    assert running_sandbox.sandbox.stats()["issued"] == {"refresh_token": 300}
    assert len({g["refresh_token"] for g in running_sandbox.sandbox.grants()}) == 300


def test_the_pkce_check_matches_the_rfc_7636_example() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    digest = hashlib.sha256(verifier.encode()).digest()

    assert code_challenge_s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == code_challenge_s256(verifier)


def test_a_sandbox_in_a_subprocess_serves_and_stops() -> None:
    with sandbox_in_subprocess("--no-rotation") as admin:
        [seeded] = admin.seed_grants(["alice"])
        response = httpx.post(
            f"{admin.url}/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": seeded["refresh_token"]},
            headers={"Authorization": BASIC},
        )
        url = admin.url

    assert response.json()["refresh_token"] == seeded["refresh_token"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_a_sandbox_in_a_thread_stops_listening_on_exit() -> None:
    with sandbox_in_thread() as running:
        assert httpx.get(f"{running.url}/healthz").json() == {"status": "ok"}

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/healthz", timeout=2)


def test_a_sandbox_client_repr_hides_its_secret() -> None:
    client = SandboxClient(client_secret="registered-secret-value")

    assert "registered-secret-value" not in repr(client)
    assert "linkvault-sandbox" in repr(client)
