"""linkvault.Vault for library users: current access tokens without handling refresh, and
Vault.httpx_auth end to end, an httpx.AsyncClient calling the sandbox's protected API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

import linkvault
from linkvault.credentials import OAuth2Tokens, open_credentials
from linkvault.crypto import generate_key
from linkvault.domain import ConnectionStatus, ProviderConnection, utc_now
from linkvault.settings import Settings
from linkvault.testing import RunningSandbox, SandboxAdmin
from linkvault.testing.fleet import due_connections, seed_grants
from tests.sandbox_fixtures import running_sandbox, sandbox_admin

__all__ = ["running_sandbox", "sandbox_admin"]

KEYS = generate_key("vault")


@pytest.fixture
async def vault(tmp_path: Path, running_sandbox: RunningSandbox) -> AsyncIterator[linkvault.Vault]:
    settings = Settings(keys=SecretStr(KEYS))
    async with await linkvault.Vault.open(
        f"sqlite:///{tmp_path / 'app.db'}", settings=settings, env=running_sandbox.env()
    ) as opened:
        yield opened


async def expiring(
    vault: linkvault.Vault, admin: SandboxAdmin, within: timedelta
) -> ProviderConnection:
    """An active sandbox connection holding a live grant whose access token expires soon."""
    [conn] = due_connections(seed_grants(admin, 1), KEYS, now=utc_now(), expires_within=within)
    await vault.runtime.store.save(conn)
    admin.reset()
    return conn


def refreshes(admin: SandboxAdmin) -> int:
    issued: dict[str, int] = admin.stats()["issued"]
    return issued.get("refresh_token", 0)


async def test_access_token_refreshes_once_for_many_concurrent_callers(
    vault: linkvault.Vault, sandbox_admin: SandboxAdmin
) -> None:
    conn = await expiring(vault, sandbox_admin, timedelta(seconds=1))
    tokens = await asyncio.gather(*(vault.access_token(conn.id) for _ in range(25)))
    assert len({t.token for t in tokens}) == 1
    assert refreshes(sandbox_admin) == 1
    [token] = {t.token for t in tokens}
    assert tokens[0].expires_at is not None
    assert tokens[0].expires_at - utc_now() > timedelta(minutes=1)
    # The secret stays out of every repr.
    assert token not in repr(tokens[0])
    assert token not in repr(vault.httpx_auth(conn.id))


async def test_a_current_token_is_returned_without_a_refresh(
    vault: linkvault.Vault, sandbox_admin: SandboxAdmin
) -> None:
    conn = await expiring(vault, sandbox_admin, timedelta(hours=1))
    first = await vault.access_token(conn.id, min_valid=timedelta(minutes=5))
    again = await vault.access_token(conn.id, min_valid=timedelta(minutes=5))
    assert first == again
    assert refreshes(sandbox_admin) == 0


async def test_bad_arguments_are_typed_errors(
    vault: linkvault.Vault, sandbox_admin: SandboxAdmin
) -> None:
    conn = await expiring(vault, sandbox_admin, timedelta(hours=1))
    with pytest.raises(linkvault.InvalidArgumentError, match="min_valid"):
        await vault.access_token(conn.id, min_valid=timedelta(seconds=-1))
    with pytest.raises(linkvault.InvalidArgumentError, match="min_valid"):
        vault.httpx_auth(conn.id, min_valid=timedelta(days=2))
    with pytest.raises(linkvault.NotFoundError):
        await vault.access_token(conn.user_id)  # an id no connection has
    assert refreshes(sandbox_admin) == 0


async def test_the_httpx_auth_refuses_a_sync_client(
    vault: linkvault.Vault, sandbox_admin: SandboxAdmin, running_sandbox: RunningSandbox
) -> None:
    conn = await expiring(vault, sandbox_admin, timedelta(hours=1))
    with (
        httpx.Client(auth=vault.httpx_auth(conn.id)) as http,
        pytest.raises(TypeError, match="AsyncClient"),
    ):
        await asyncio.to_thread(http.get, f"{running_sandbox.url}/")


@pytest.fixture
async def conn(vault: linkvault.Vault, sandbox_admin: SandboxAdmin) -> ProviderConnection:
    """An active sandbox connection whose access token is good for an hour."""
    [made] = due_connections(
        seed_grants(sandbox_admin, 1), KEYS, now=utc_now(), expires_within=timedelta(hours=1)
    )
    await vault.runtime.store.save(made)
    sandbox_admin.reset()
    return made


async def stored(vault: linkvault.Vault, conn: ProviderConnection) -> OAuth2Tokens:
    found = await vault.connections.get(conn.id)
    assert found.credentials is not None
    return open_credentials(
        found.credentials, connection_id=found.id, cipher=vault.runtime.cipher, expect=OAuth2Tokens
    )


async def test_requests_carry_the_current_token(
    vault: linkvault.Vault,
    conn: ProviderConnection,
    running_sandbox: RunningSandbox,
    sandbox_admin: SandboxAdmin,
) -> None:
    async with httpx.AsyncClient(
        base_url=running_sandbox.url, auth=vault.httpx_auth(conn.id)
    ) as http:
        r = await http.get("/api/accounts")
    assert r.status_code == 200, r.text
    assert len(r.json()["accounts"]) == 2
    [seen] = sandbox_admin.api_requests()
    tokens = await stored(vault, conn)
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["authorization"] == f"Bearer {tokens.access_token}"
    assert refreshes(sandbox_admin) == 0


async def test_a_token_that_dies_mid_session_is_refreshed_once_and_the_request_retried(
    vault: linkvault.Vault,
    conn: ProviderConnection,
    running_sandbox: RunningSandbox,
    sandbox_admin: SandboxAdmin,
) -> None:
    before = await stored(vault, conn)
    async with httpx.AsyncClient(
        base_url=running_sandbox.url, auth=vault.httpx_auth(conn.id)
    ) as http:
        assert (await http.get("/api/accounts")).status_code == 200
        # The provider ends the token early; linkvault still believes it good for an hour.
        assert sandbox_admin.expire_access_tokens() >= 1
        answers = await asyncio.gather(*(http.get("/api/accounts") for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert refreshes(sandbox_admin) == 1  # ten 401s, one refresh
    after = await stored(vault, conn)
    assert after.access_token != before.access_token
    retried = [r for r in sandbox_admin.api_requests() if r["path"] == "/api/accounts"]
    last = {k.lower(): v for k, v in retried[-1]["headers"].items()}
    assert last["authorization"] == f"Bearer {after.access_token}"


async def test_a_revoked_grant_raises_that_the_user_must_reconnect(
    vault: linkvault.Vault,
    conn: ProviderConnection,
    running_sandbox: RunningSandbox,
    sandbox_admin: SandboxAdmin,
) -> None:
    subjects = {g["subject"] for g in sandbox_admin.grants()}
    assert sum(sandbox_admin.revoke_subject(s) for s in subjects) >= 1
    async with httpx.AsyncClient(
        base_url=running_sandbox.url, auth=vault.httpx_auth(conn.id)
    ) as http:
        with pytest.raises(linkvault.NeedsUserActionError) as caught:
            await http.get("/api/accounts")
    assert caught.value.status in ("expired", "revoked")
    assert (await vault.connections.get(conn.id)).status in (
        ConnectionStatus.EXPIRED,
        ConnectionStatus.REVOKED,
    )
    tokens = await stored(vault, conn)
    assert tokens.access_token not in str(caught.value)
    assert tokens.refresh_token is not None
    assert tokens.refresh_token not in str(caught.value)


async def test_a_second_401_is_passed_back_after_one_refresh(
    vault: linkvault.Vault,
    conn: ProviderConnection,
    running_sandbox: RunningSandbox,
    sandbox_admin: SandboxAdmin,
) -> None:
    # The provider refuses the next two API calls whatever the token.
    sandbox_admin.inject_fault("invalid_grant", grant_type="api", count=2)
    async with httpx.AsyncClient(
        base_url=running_sandbox.url, auth=vault.httpx_auth(conn.id)
    ) as http:
        refused = await http.get("/api/accounts")
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_token"
        assert refreshes(sandbox_admin) == 1  # one refresh, one retry, then the 401 is ours
        assert len(sandbox_admin.api_requests()) == 2
        assert (await http.get("/api/accounts")).status_code == 200
    assert refreshes(sandbox_admin) == 1


async def test_a_request_body_is_sent_again_on_the_retry(
    vault: linkvault.Vault,
    conn: ProviderConnection,
    running_sandbox: RunningSandbox,
    sandbox_admin: SandboxAdmin,
) -> None:
    sandbox_admin.inject_fault("invalid_grant", grant_type="api", count=1)
    body = b"x" * 10_000
    async with httpx.AsyncClient(
        base_url=running_sandbox.url, auth=vault.httpx_auth(conn.id)
    ) as http:
        echoed = await http.post("/api/echo/orders", content=body)
    assert echoed.status_code == 200, echoed.text
    seen = echoed.json()
    assert seen["body_bytes"] == len(body)
    assert seen["method"] == "POST"
    assert refreshes(sandbox_admin) == 1
