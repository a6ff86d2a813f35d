"""linkvault.Vault for library users: current access tokens without handling refresh."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

import linkvault
from linkvault.crypto import generate_key
from linkvault.domain import ProviderConnection, utc_now
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
