"""On-demand access tokens across API processes: one refresh at the provider, one result."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from linkvault.access import Scope, generate_api_key
from linkvault.crypto import generate_key
from linkvault.domain import ConnectionStatus, utc_now
from linkvault.testing import SandboxAdmin, sandbox_in_subprocess
from linkvault.testing.fleet import (
    due_connections,
    seed_grants,
    store_connections,
    stored_tokens,
    worker_env,
)
from tests.support import free_port, start_api_process

pytestmark = pytest.mark.postgres

PROCESSES = 4
CALLERS = 50


@pytest.fixture
def provider() -> Iterator[SandboxAdmin]:
    with sandbox_in_subprocess() as admin:
        admin.update_settings(rotate_refresh_tokens=True, revoke_family_on_reuse=True)
        yield admin


async def test_fifty_callers_in_four_api_processes_make_one_refresh_and_share_its_token(
    postgres_url: str, provider: SandboxAdmin, tmp_path: Path
) -> None:
    keys = generate_key("fleet")
    grants = seed_grants(provider, 1)
    # Its access token expires within a second: every caller needs a refresh.
    [conn] = due_connections(grants, keys, now=utc_now(), expires_within=timedelta(seconds=1))
    await store_connections(postgres_url, [conn])
    before = (await stored_tokens(postgres_url, keys))[conn.id].tokens
    assert before is not None
    api_key, entry = generate_api_key("app", {Scope.TOKEN})
    env = worker_env(postgres_url, keys, provider.url, api_keys=entry.spec)
    provider.reset()
    with ExitStack() as stack:
        urls = [
            start_api_process(env, free_port(), tmp_path / f"api-{n}.log", stack)
            for n in range(PROCESSES)
        ]
        async with httpx.AsyncClient(
            timeout=60, headers={"Authorization": f"Bearer {api_key}"}
        ) as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        f"{urls[n % PROCESSES]}/v1/connections/{conn.id}/access-token",
                        json={"min_valid_seconds": 60},
                    )
                    for n in range(CALLERS)
                )
            )
    assert [a.status_code for a in answers] == [200] * CALLERS, [a.text for a in answers]
    tokens = {a.json()["access_token"] for a in answers}
    stats = provider.stats()
    assert stats["issued"].get("refresh_token", 0) == 1, stats
    assert stats["refused_total"] == 0, stats
    assert stats["revocations"] == 0, stats
    after = (await stored_tokens(postgres_url, keys))[conn.id]
    assert after.status is ConnectionStatus.ACTIVE
    assert after.tokens is not None
    assert tokens == {after.tokens.access_token}
    assert after.tokens.access_token != before.access_token
    assert after.tokens.refresh_token != before.refresh_token
