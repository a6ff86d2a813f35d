from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from linkvault.errors import (
    AnswerLostError,
    InvalidGrantError,
    MalformedResponseError,
    OAuthError,
    ProviderConfigError,
    ProviderUnavailableError,
    RateLimitedError,
    RevokedError,
    UnauthorizedClientError,
)
from linkvault.oauth import (
    HttpxTokenClient,
    build_authorize_url,
    code_challenge_s256,
    generate_code_verifier,
    generate_state,
)
from linkvault.providers import SANDBOX_CLIENT_SECRET, Provider, TokenEndpointAuth, load_registry
from linkvault.testing import RunningSandbox
from tests.sandbox_fixtures import drive_consent, running_sandbox

__all__ = ["running_sandbox"]

REDIRECT = "http://127.0.0.1:9/callback"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def client() -> AsyncIterator[HttpxTokenClient]:
    async with HttpxTokenClient(timeout=5.0, clock=lambda: NOW) as token_client:
        yield token_client


async def authorized_code(provider: Provider, verifier: str, state: str) -> dict[str, str]:
    url = build_authorize_url(
        provider,
        redirect_uri=REDIRECT,
        state=state,
        code_challenge=code_challenge_s256(verifier),
    )
    return await drive_consent(url)


def seeded_refresh_token(running: RunningSandbox) -> str:
    [grant] = running.sandbox.seed_grants(["alice"])
    token: str = grant["refresh_token"]
    return token


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    for text in (str(error), repr(error), str(error.args)):
        for secret in secrets:
            assert secret not in text


# --- against the sandbox -------------------------------------------------------


async def test_a_full_authorization_code_exchange_with_pkce_yields_working_tokens(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    provider = running_sandbox.provider()
    verifier, state = generate_code_verifier(), generate_state()
    answer = await authorized_code(provider, verifier, state)

    tokens = await client.exchange_code(
        provider, code=answer["code"], redirect_uri=REDIRECT, code_verifier=verifier
    )

    assert answer["state"] == state
    assert tokens.token_type == "Bearer"
    assert tokens.refresh_token
    assert tokens.expires_in == 1800
    assert tokens.scope == "accounts:read"
    async with httpx.AsyncClient() as http:
        me = await http.get(
            f"{running_sandbox.url}/api/me",
            headers={"Authorization": f"Bearer {tokens.access_token}"},
        )
    assert me.json()["subject"] == "sandbox-user"


async def test_a_wrong_pkce_verifier_is_an_invalid_grant(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    provider = running_sandbox.provider()
    answer = await authorized_code(provider, generate_code_verifier(), "s")
    wrong = generate_code_verifier()

    with pytest.raises(InvalidGrantError) as caught:
        await client.exchange_code(
            provider, code=answer["code"], redirect_uri=REDIRECT, code_verifier=wrong
        )

    assert caught.value.error == "invalid_grant"
    assert caught.value.status_code == 400
    assert not caught.value.retryable
    assert_no_secret(caught.value, answer["code"], wrong, SANDBOX_CLIENT_SECRET)


async def test_a_refresh_rotates_and_the_old_refresh_token_is_refused(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    provider = running_sandbox.provider()
    old = seeded_refresh_token(running_sandbox)

    renewed = await client.refresh(provider, refresh_token=old)
    with pytest.raises(InvalidGrantError) as caught:
        await client.refresh(provider, refresh_token=old)

    assert renewed.refresh_token not in (None, old)
    assert "refresh token already used" in str(caught.value)
    assert_no_secret(caught.value, old, SANDBOX_CLIENT_SECRET)
    stats = running_sandbox.sandbox.stats()
    assert stats["issued"] == {"refresh_token": 1}
    assert stats["refused"] == {"refresh_token": {"refresh_token_reused": 1}}


async def test_a_refresh_without_a_new_refresh_token_reports_none(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    running_sandbox.sandbox.settings.rotate_refresh_tokens = False
    running_sandbox.sandbox.settings.echo_refresh_token = False

    renewed = await client.refresh(
        running_sandbox.provider(), refresh_token=seeded_refresh_token(running_sandbox)
    )

    assert renewed.refresh_token is None
    assert renewed.access_token


@pytest.mark.parametrize("auth", list(TokenEndpointAuth))
async def test_both_client_authentication_methods_work(
    running_sandbox: RunningSandbox, client: HttpxTokenClient, auth: TokenEndpointAuth
) -> None:
    provider = running_sandbox.provider(token_endpoint_auth=auth)

    renewed = await client.refresh(provider, refresh_token=seeded_refresh_token(running_sandbox))

    assert renewed.access_token


@pytest.mark.parametrize("auth", list(TokenEndpointAuth))
async def test_a_wrong_client_secret_is_an_unauthorized_client(
    running_sandbox: RunningSandbox, client: HttpxTokenClient, auth: TokenEndpointAuth
) -> None:
    provider = running_sandbox.provider(
        client_secret="wrong-secret-value", token_endpoint_auth=auth
    )
    token = seeded_refresh_token(running_sandbox)

    with pytest.raises(UnauthorizedClientError) as caught:
        await client.refresh(provider, refresh_token=token)

    assert caught.value.status_code == 401
    assert caught.value.error == "invalid_client"
    assert_no_secret(caught.value, "wrong-secret-value", token)
    assert running_sandbox.sandbox.stats()["refused"] == {"refresh_token": {"invalid_client": 1}}


@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_is_provider_unavailable(
    running_sandbox: RunningSandbox, client: HttpxTokenClient, status: int
) -> None:
    running_sandbox.sandbox.inject_fault("server_error", status=status)
    token = seeded_refresh_token(running_sandbox)

    with pytest.raises(ProviderUnavailableError) as caught:
        await client.refresh(running_sandbox.provider(), refresh_token=token)

    assert caught.value.status_code == status
    assert caught.value.retryable
    assert_no_secret(caught.value, token, SANDBOX_CLIENT_SECRET)


async def test_a_429_is_rate_limited_with_its_retry_after(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    running_sandbox.sandbox.inject_fault("rate_limited", retry_after=7)

    with pytest.raises(RateLimitedError) as caught:
        await client.refresh(
            running_sandbox.provider(), refresh_token=seeded_refresh_token(running_sandbox)
        )

    assert caught.value.retry_after == 7.0
    assert caught.value.status_code == 429
    assert caught.value.retryable


async def test_an_answer_slower_than_the_read_timeout_is_a_lost_answer_the_provider_still_served(
    running_sandbox: RunningSandbox,
) -> None:
    running_sandbox.sandbox.inject_fault("slow", delay=0.5)
    token = seeded_refresh_token(running_sandbox)

    async with HttpxTokenClient(timeout=0.1) as impatient:
        with pytest.raises(AnswerLostError, match=r"answer lost \(read timeout\)") as caught:
            await impatient.refresh(running_sandbox.provider(), refresh_token=token)

    assert caught.value.how == "read timeout"
    assert isinstance(caught.value, ProviderUnavailableError)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert_no_secret(caught.value, token)
    # The request was not lost: the provider served it and spent the refresh token.
    for _ in range(100):
        if running_sandbox.sandbox.stats()["issued"].get("refresh_token") == 1:
            break
        await asyncio.sleep(0.02)
    assert running_sandbox.sandbox.stats()["issued"] == {"refresh_token": 1}


async def test_a_connection_closed_after_the_request_was_read_is_a_lost_answer() -> None:
    received = asyncio.Event()

    async def read_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        writer.close()

    server = await asyncio.start_server(read_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = load_registry(
        env={
            "LINKVAULT_PROVIDER_SANDBOX_BASE_URL": f"http://127.0.0.1:{port}",
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": "cid",
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": "hang-up-secret",
        }
    ).get("sandbox")
    try:
        async with HttpxTokenClient() as client:
            with pytest.raises(AnswerLostError) as caught:
                await client.refresh(provider, refresh_token="rt-hang-up-0123456789abcdef")
    finally:
        server.close()
        await server.wait_closed()

    assert received.is_set()
    assert caught.value.how == "connection closed without an answer"
    assert_no_secret(caught.value, "hang-up-secret", "rt-hang-up-0123456789abcdef")


async def test_an_injected_invalid_grant_is_an_invalid_grant(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    running_sandbox.sandbox.inject_fault("invalid_grant")

    with pytest.raises(InvalidGrantError):
        await client.refresh(
            running_sandbox.provider(), refresh_token=seeded_refresh_token(running_sandbox)
        )


async def test_an_access_denied_answer_is_revoked(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    running_sandbox.sandbox.inject_fault("revoked")

    with pytest.raises(RevokedError) as caught:
        await client.refresh(
            running_sandbox.provider(), refresh_token=seeded_refresh_token(running_sandbox)
        )

    assert caught.value.error == "access_denied"


async def test_an_unauthorized_client_answer_is_unauthorized_client(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    running_sandbox.sandbox.inject_fault("unauthorized_client")

    with pytest.raises(UnauthorizedClientError):
        await client.refresh(
            running_sandbox.provider(), refresh_token=seeded_refresh_token(running_sandbox)
        )


async def test_a_success_with_a_body_that_is_not_json_is_malformed(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    running_sandbox.sandbox.inject_fault("malformed")
    token = seeded_refresh_token(running_sandbox)

    with pytest.raises(MalformedResponseError, match="not JSON") as caught:
        await client.refresh(running_sandbox.provider(), refresh_token=token)

    assert caught.value.status_code == 200
    assert_no_secret(caught.value, token)


async def test_a_scope_wider_than_the_grant_is_a_plain_oauth_error(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    with pytest.raises(OAuthError) as caught:
        await client.refresh(
            running_sandbox.provider(),
            refresh_token=seeded_refresh_token(running_sandbox),
            scopes=["accounts:read", "admin"],
        )

    assert type(caught.value) is OAuthError
    assert caught.value.error == "invalid_scope"
    assert not caught.value.retryable


async def test_a_narrower_scope_can_be_asked_on_refresh(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    running_sandbox.sandbox.default_scope = "accounts:read trades:read"

    renewed = await client.refresh(
        running_sandbox.provider(),
        refresh_token=seeded_refresh_token(running_sandbox),
        scopes=["accounts:read"],
    )

    assert renewed.scope == "accounts:read"


async def test_a_revoked_token_can_no_longer_refresh(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    provider = running_sandbox.provider()
    token = seeded_refresh_token(running_sandbox)

    await client.revoke(provider, token=token)

    with pytest.raises(InvalidGrantError, match="revoked"):
        await client.refresh(provider, refresh_token=token)


async def test_a_closed_port_is_provider_unavailable(client: HttpxTokenClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = load_registry(
        env={
            "LINKVAULT_PROVIDER_SANDBOX_BASE_URL": f"http://127.0.0.1:{port}",
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": "cid",
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": "closed-port-secret",
        }
    ).get("sandbox")

    with pytest.raises(ProviderUnavailableError, match="before sending: ConnectError") as caught:
        await client.refresh(provider, refresh_token="rt-closed-port-0123456789")

    assert not isinstance(caught.value, AnswerLostError), "nothing was sent: an ordinary retry"
    assert_no_secret(caught.value, "closed-port-secret", "rt-closed-port-0123456789")


async def test_refreshing_without_client_credentials_names_the_variables(
    client: HttpxTokenClient,
) -> None:
    with pytest.raises(ProviderConfigError, match="LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET"):
        await client.refresh(load_registry().get("sandbox"), refresh_token="rt")


async def test_a_registry_provider_pointed_at_the_sandbox_refreshes(
    running_sandbox: RunningSandbox, client: HttpxTokenClient
) -> None:
    provider = load_registry(env=running_sandbox.env()).get("sandbox")

    renewed = await client.refresh(provider, refresh_token=seeded_refresh_token(running_sandbox))

    assert renewed.access_token
    assert "sandbox-secret" not in repr(provider)


async def test_a_cookie_a_token_endpoint_sets_never_rides_on_a_later_refresh() -> None:
    """One client refreshes every user's connections: a provider's Set-Cookie (a session,
    a load balancer's stickiness) answered for one must not be sent for the next."""
    seen: list[bytes] = []

    async def token_endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(
                (
                    int(line[15:])
                    for line in head.split(b"\r\n")
                    if line[:15].lower() == b"content-length:"
                ),
                0,
            )
            await reader.readexactly(length)
            seen.append(head)
            body = b'{"access_token":"at-1","token_type":"Bearer","expires_in":3600}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"set-cookie: session=user-one-secret; Path=/\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(token_endpoint, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = load_registry(
        env={
            "LINKVAULT_PROVIDER_SANDBOX_BASE_URL": f"http://127.0.0.1:{port}",
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": "cid",
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": "cookie-secret",
        }
    ).get("sandbox")
    try:
        async with HttpxTokenClient() as client:
            await client.refresh(provider, refresh_token="rt-user-one-0123456789")
            await client.refresh(provider, refresh_token="rt-user-two-0123456789")
    finally:
        server.close()
        await server.wait_closed()

    assert len(seen) == 2
    assert all(b"cookie:" not in head.lower() for head in seen), seen[1]
