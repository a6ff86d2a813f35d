from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from linkvault.stores import ConnectionStore
from linkvault.stores.memory import InMemoryConnectionRepository
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.stores.sqlite import SqliteConnectionRepository
from linkvault.testing import FakeClock

pytest_plugins = ["tests.sandbox_fixtures"]

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def postgres_server_url() -> str:
    return os.environ.get("LINKVAULT_TEST_POSTGRES_URL", DEFAULT_PG)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass
class PostgresServer:
    url: str
    template: str
    created: list[str] = field(default_factory=list)

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=5)

    async def create_database(self, *, migrated: bool = True) -> str:
        name = f"lv_test_{secrets.token_hex(6)}"
        conn = await self.admin()
        try:
            source = self.template if migrated else "template0"
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        finally:
            await conn.close()
        self.created.append(name)
        return with_database(self.url, name)

    async def drop_all(self) -> None:
        conn = await self.admin()
        try:
            for name in [*self.created, self.template]:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def postgres_server() -> AsyncIterator[PostgresServer]:
    url = postgres_server_url()
    try:
        probe = await asyncpg.connect(url, timeout=3)
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {url} ({type(exc).__name__}: {exc})"
        if in_ci():
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    template = f"lv_tpl_{secrets.token_hex(6)}"
    try:
        await probe.execute(f'CREATE DATABASE "{template}"')
    finally:
        await probe.close()
    server = PostgresServer(url, template)
    repo = await PostgresConnectionRepository.connect(with_database(url, template), min_size=1)
    try:
        await repo.migrate()
    finally:
        await repo.close()
    yield server
    await server.drop_all()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> str:
    return await postgres_server.create_database()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "linkvault.db"


@pytest.fixture
async def memory_store(clock: FakeClock) -> AsyncIterator[InMemoryConnectionRepository]:
    async with InMemoryConnectionRepository(clock=clock) as repo:
        yield repo


@pytest.fixture
async def sqlite_store(
    clock: FakeClock, tmp_path: Path
) -> AsyncIterator[SqliteConnectionRepository]:
    repo = await SqliteConnectionRepository.open(tmp_path / "store.db", clock=clock)
    async with repo:
        await repo.migrate()
        yield repo


@pytest.fixture
async def postgres_store(
    clock: FakeClock, postgres_url: str
) -> AsyncIterator[PostgresConnectionRepository]:
    repo = await PostgresConnectionRepository.connect(postgres_url, clock=clock, max_size=8)
    async with repo:
        yield repo


def pgbouncer_url() -> str | None:
    """A PgBouncer in transaction mode in front of the test server, if the environment names
    one (CI starts it: .ci/run); its databases are the server's."""
    return os.environ.get("LINKVAULT_TEST_PGBOUNCER_URL") or None


def through_pooler(url: str) -> str:
    """The same database as `url`, reached through PgBouncer in transaction mode; skips (or
    in CI fails) the test when the environment names no PgBouncer."""
    bouncer = pgbouncer_url()
    if bouncer is None:
        reason = "LINKVAULT_TEST_PGBOUNCER_URL is not set (no PgBouncer to test through)"
        if in_ci():
            pytest.fail(f"{reason}; CI must run the pooled PostgreSQL tests")
        pytest.skip(reason)
    database = urlsplit(url).path
    return urlunsplit(urlsplit(bouncer)._replace(path=database, query="pooler=transaction"))


@pytest.fixture
async def pooled_url(postgres_url: str) -> str:
    """A fresh migrated database, reached through PgBouncer in transaction mode."""
    return through_pooler(postgres_url)


@pytest.fixture
async def pooled_store(
    clock: FakeClock, pooled_url: str
) -> AsyncIterator[PostgresConnectionRepository]:
    repo = await PostgresConnectionRepository.connect(pooled_url, clock=clock, max_size=8)
    async with repo:
        yield repo


@pytest.fixture(params=["memory", "sqlite", "postgres", "pooled"])
def store(request: pytest.FixtureRequest) -> ConnectionStore:
    repo: ConnectionStore = request.getfixturevalue(f"{request.param}_store")
    return repo
