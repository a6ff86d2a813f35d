"""`linkvault.oauth.protocol`: the RFC code the client and the sandbox share, without I/O."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from linkvault.errors import (
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    ProviderConfigError,
    RateLimitedError,
)
from linkvault.oauth import (
    TokenResponse,
    build_authorize_url,
    code_challenge_s256,
    generate_code_verifier,
    generate_state,
    parse_retry_after,
    sanitize_description,
    verify_code_challenge,
)
from linkvault.oauth.protocol import (
    EndpointAnswer,
    authenticated_request,
    basic_authorization,
    parse_basic_authorization,
    read_token_response,
)
from linkvault.providers import TokenEndpointAuth, load_registry

REDIRECT = "http://127.0.0.1:9/callback"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SANDBOX = load_registry(
    env={
        "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": "client:id",
        "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": "s3cret/+=",
    }
).get("sandbox")


def answer(status: int, body: object, retry_after: str | None = None) -> EndpointAnswer:
    return EndpointAnswer(status, json.dumps(body).encode(), retry_after)


def test_a_code_verifier_is_43_to_128_unreserved_characters() -> None:
    short, long = generate_code_verifier(43), generate_code_verifier(128)

    assert (len(short), len(long)) == (43, 128)
    assert set(short + long) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )
    assert generate_code_verifier() != generate_code_verifier()
    with pytest.raises(ValueError, match="43 to 128"):
        generate_code_verifier(42)


def test_the_s256_challenge_matches_the_rfc_7636_example() -> None:
    challenge = code_challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")

    assert challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_challenge_refuses_a_verifier_outside_the_rfc_alphabet() -> None:
    with pytest.raises(ValueError, match="unreserved"):
        code_challenge_s256("not a verifier" * 4)


def test_the_authorize_url_carries_client_state_scope_and_pkce() -> None:
    env = {
        "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": "cid",
        "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": "cs",
    }
    provider = load_registry(env=env).get("sandbox")
    state = generate_state()

    url = build_authorize_url(
        provider,
        redirect_uri=REDIRECT,
        state=state,
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        scopes=["accounts:read", "trades:write"],
        extra_params={"login_hint": "bob"},
    )

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == provider.authorize_url
    assert query == {
        "response_type": "code",
        "client_id": "cid",
        "redirect_uri": REDIRECT,
        "scope": "accounts:read trades:write",
        "state": state,
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "login_hint": "bob",
    }
    assert "cs" not in query.values()


def test_the_authorize_url_omits_scope_when_the_provider_has_none() -> None:
    env = {"LINKVAULT_PROVIDER_SCHWAB_CLIENT_ID": "app-key"}
    schwab = load_registry(env=env).get("schwab")

    url = build_authorize_url(schwab, redirect_uri=REDIRECT, state="s", code_challenge="c" * 43)

    assert url.startswith("https://api.schwabapi.com/v1/oauth/authorize?")
    assert "scope=" not in url


def test_the_authorize_url_needs_client_credentials() -> None:
    schwab = load_registry().get("schwab")

    with pytest.raises(ProviderConfigError, match="LINKVAULT_PROVIDER_SCHWAB_CLIENT_ID"):
        build_authorize_url(schwab, redirect_uri=REDIRECT, state="s", code_challenge="c" * 43)


def test_the_authorize_url_needs_a_challenge_for_a_pkce_provider() -> None:
    provider = load_registry(env={"LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": "cid"}).get("sandbox")

    with pytest.raises(ProviderConfigError, match="PKCE"):
        build_authorize_url(provider, redirect_uri=REDIRECT, state="s", code_challenge=None)


def test_a_token_response_hides_its_tokens_and_computes_its_expiry() -> None:
    tokens = TokenResponse("access-abc", "Bearer", "refresh-xyz", 1800, "accounts:read")

    assert "access-abc" not in repr(tokens)
    assert "refresh-xyz" not in str(tokens)
    assert tokens.expires_at(NOW) == NOW + timedelta(minutes=30)
    assert TokenResponse("a").expires_at(NOW) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after("Sun, 01 Mar 2026 12:01:30 GMT", NOW) == 90.0
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-3", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_a_provider_description_loses_secrets_markup_and_length() -> None:
    text = 'refresh token r3fr3sh-t0ken was bad <b>"x"</b> ' + "A1" * 20 + " " + "z " * 200

    cleaned = sanitize_description(text, ["r3fr3sh-t0ken"])

    assert "r3fr3sh-t0ken" not in cleaned
    assert "A1A1" not in cleaned
    assert '"' not in cleaned
    assert len(cleaned) <= 200
    assert cleaned.startswith("refresh token [redacted] was bad")


def test_a_verifier_answers_only_its_own_s256_challenge() -> None:
    verifier = generate_code_verifier()
    challenge = code_challenge_s256(verifier)

    assert verify_code_challenge(verifier, challenge)
    assert not verify_code_challenge(generate_code_verifier(), challenge)
    assert not verify_code_challenge(None, challenge)
    assert not verify_code_challenge("short", challenge)


def test_basic_client_authentication_round_trips_reserved_characters() -> None:
    header = basic_authorization("client:id", "s3cret/+=")

    assert parse_basic_authorization(header) == ("client:id", "s3cret/+=")
    assert parse_basic_authorization("Bearer abc") is None
    assert parse_basic_authorization("Basic not-base64!") is None


def test_a_client_authenticates_by_basic_or_in_the_body_as_its_provider_says() -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "rt"}
    in_body = dataclasses.replace(SANDBOX, token_endpoint_auth=TokenEndpointAuth.CLIENT_SECRET_POST)

    basic_body, basic_headers = authenticated_request(SANDBOX, form)
    post_body, post_headers = authenticated_request(in_body, form)

    assert basic_body == form
    assert parse_basic_authorization(basic_headers["Authorization"]) == ("client:id", "s3cret/+=")
    assert post_body == {**form, "client_id": "client:id", "client_secret": "s3cret/+="}
    assert "Authorization" not in post_headers


def test_a_token_answer_is_read_without_any_http_library() -> None:
    body = {"access_token": "at", "refresh_token": "rt", "expires_in": "60", "scope": ["a", "b"]}

    tokens = read_token_response(answer(200, body), SANDBOX, operation="refresh", sent=(), now=NOW)

    assert (tokens.access_token, tokens.refresh_token) == ("at", "rt")
    assert (tokens.expires_in, tokens.scope, tokens.token_type) == (60, "a b", "Bearer")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": "invalid_grant"}, InvalidGrantError),
        (401, {}, InvalidClientError),
        (200, {"error": "invalid_grant"}, InvalidGrantError),
        (200, {"token_type": "Bearer"}, MalformedResponseError),
    ],
)
def test_a_refusing_answer_maps_to_its_typed_error(
    status: int, body: dict[str, str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        read_token_response(answer(status, body), SANDBOX, operation="refresh", sent=(), now=NOW)


def test_a_rate_limit_answer_carries_its_retry_after_and_hides_what_was_sent() -> None:
    refusal = answer(429, {"error_description": "token rt-SECRET-1 overused"}, retry_after="12")

    with pytest.raises(RateLimitedError) as caught:
        read_token_response(refusal, SANDBOX, operation="refresh", sent=("rt-SECRET-1",), now=NOW)

    assert caught.value.retry_after == 12.0
    assert "rt-SECRET-1" not in str(caught.value)
