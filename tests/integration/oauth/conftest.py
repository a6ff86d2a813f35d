"""Shared by the connect and refresh tests: one sandbox and one PostgreSQL database per module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.providers import load_registry
from linkvault.stores import ConnectionStore
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.testing import FakeClock, RunningSandbox, SandboxSettings, sandbox_in_thread
from tests.conftest import PostgresServer
from tests.refreshing import Bench, WatchedTokenClient

# One sandbox and one PostgreSQL database per module, wiped before each test: a server and a
# database per test cost more than the tests themselves.


@pytest.fixture(scope="module")
def module_sandbox() -> Iterator[RunningSandbox]:
    with sandbox_in_thread() as running:
        yield running


@pytest.fixture
def running_sandbox(module_sandbox: RunningSandbox) -> RunningSandbox:
    module_sandbox.sandbox.reset(counters=True, faults=True, grants=True)
    module_sandbox.sandbox.settings.update(SandboxSettings().as_dict())
    return module_sandbox


@pytest.fixture(scope="module")
async def module_postgres_url(postgres_server: PostgresServer) -> str:
    return await postgres_server.create_database()


async def wipe(database_url: str) -> None:
    """Empty the module's database for the next test."""
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(
            "TRUNCATE provider_connections, oauth_states, provider_circuits CASCADE"
        )
    finally:
        await admin.close()


@pytest.fixture
async def postgres_store(
    clock: FakeClock, module_postgres_url: str
) -> AsyncIterator[PostgresConnectionRepository]:
    await wipe(module_postgres_url)
    repo = await PostgresConnectionRepository.connect(module_postgres_url, clock=clock, max_size=8)
    async with repo:
        yield repo


@pytest.fixture
async def bench(
    store: ConnectionStore, running_sandbox: RunningSandbox, clock: FakeClock
) -> AsyncIterator[Bench]:
    registry = load_registry(env=running_sandbox.env())
    cipher = AesGcmCipher(KeyRing([Key.generate("k1")]))
    async with WatchedTokenClient() as tokens:
        yield Bench(store, registry, cipher, running_sandbox, clock, tokens)
