"""Failures only PostgreSQL has: refusals of the server, timeouts, restarts and outages.

The failures both databases share are tested in tests/conformance/test_errors.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import asyncpg
import pytest

from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaError,
)
from linkvault.stores.postgres import PostgresConnectionRepository
from tests.factories import PORT_CALLS, active, assert_translated, raised_by
from tests.pg_cluster import (  # noqa: F401  (fixtures used by name)
    PrivateCluster,
    private_postgres_fixture,
    running_private_postgres_fixture,
)

pytestmark = pytest.mark.postgres

CLOSED_PORT_URL = "postgresql://postgres@127.0.0.1:1/postgres"
LOCK_ROW = "SELECT 1 FROM provider_connections WHERE id = $1 FOR UPDATE"


@pytest.fixture
async def raw(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_url, timeout=5)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def repo(postgres_url: str) -> AsyncIterator[PostgresConnectionRepository]:
    async with await PostgresConnectionRepository.connect(postgres_url, max_size=2) as repo:
        yield repo


# --- an unreachable server ---------------------------------------------------


async def test_a_transaction_on_an_unreachable_server_raises_database_unavailable() -> None:
    pool = await asyncpg.create_pool(CLOSED_PORT_URL, min_size=0, max_size=1, timeout=2)
    repo = PostgresConnectionRepository(pool)

    async def use() -> None:
        async with repo.transaction() as tx:
            await tx.find_by_id(uuid4())

    try:
        exc = await raised_by(use())
    finally:
        await pool.close()

    assert_translated(exc, DatabaseUnavailableError)


# --- refusals of the server --------------------------------------------------


async def test_a_read_only_database_refuses_a_save_with_a_database_error(
    postgres_url: str, raw: asyncpg.Connection
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    await raw.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    async with await PostgresConnectionRepository.connect(postgres_url, max_size=1) as repo:
        assert await repo.find_by_id(uuid4()) is None
        exc = await raised_by(repo.save(active()))

    cause = assert_translated(exc, DatabaseError)
    assert isinstance(cause, asyncpg.ReadOnlySQLTransactionError)
    assert not isinstance(exc, ConstraintViolationError | SchemaError)


async def test_a_server_side_statement_timeout_raises_a_database_error(
    postgres_url: str, raw: asyncpg.Connection
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    connection = active()
    async with await PostgresConnectionRepository.connect(postgres_url, max_size=1) as seed:
        await seed.save(connection)
    await raw.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 300')
    async with (
        await PostgresConnectionRepository.connect(postgres_url, max_size=1) as repo,
        raw.transaction(),
    ):
        await raw.execute(LOCK_ROW, connection.id)
        connection.rename("blocked")
        started = time.monotonic()
        exc = await raised_by(repo.save(connection))
        elapsed = time.monotonic() - started

    assert isinstance(assert_translated(exc, DatabaseError), asyncpg.QueryCanceledError)
    assert elapsed < 3
    assert connection.version == 1


async def test_a_statement_past_the_client_command_timeout_is_not_retried(
    postgres_url: str, raw: asyncpg.Connection
) -> None:
    timeout = 0.5
    connection = active()
    async with await PostgresConnectionRepository.connect(
        postgres_url, max_size=2, command_timeout=timeout
    ) as repo:
        await repo.save(connection)
        async with raw.transaction():
            await raw.execute(LOCK_ROW, connection.id)
            connection.rename("blocked")
            started = time.monotonic()
            exc = await raised_by(repo.save(connection))
            elapsed = time.monotonic() - started

    assert isinstance(assert_translated(exc, DatabaseError), TimeoutError)
    # A timeout is not a lost connection: running the write again doubles the wait, and a
    # first attempt that committed after all would come back as a false StaleConnectionError.
    assert elapsed < timeout * 1.8, f"waited {elapsed:.2f}s: the timed-out save was run twice"


async def test_a_role_without_privileges_gets_a_database_error(
    running_private_postgres: PrivateCluster,
) -> None:
    url = await running_private_postgres.create_database()
    admin = await asyncpg.connect(running_private_postgres.url, timeout=5)
    try:
        await admin.execute("DROP ROLE IF EXISTS lv_nobody")
        await admin.execute("CREATE ROLE lv_nobody LOGIN")
    finally:
        await admin.close()
    nobody_url = url.replace("postgres@", "lv_nobody@", 1)
    async with await PostgresConnectionRepository.connect(nobody_url, max_size=1) as repo:
        exc = await raised_by(repo.find_by_id(uuid4()))

    assert isinstance(assert_translated(exc, DatabaseError), asyncpg.InsufficientPrivilegeError)


# --- a server that goes away and comes back ---------------------------------


@pytest.fixture
async def private_url(running_private_postgres: PrivateCluster) -> str:
    return await running_private_postgres.create_database()


async def test_the_next_call_after_a_restart_succeeds_on_the_same_repository(
    running_private_postgres: PrivateCluster, private_url: str
) -> None:
    connection = active()
    async with await PostgresConnectionRepository.connect(private_url, min_size=1) as repo:
        await repo.save(connection)

        # Blocking: the pool's connection dies without the event loop noticing, as when a
        # server restarts between two requests of an idle application.
        running_private_postgres.restart()
        found = await repo.find_by_id(connection.id)

        running_private_postgres.restart()
        connection.rename("after restart")
        await repo.save(connection)

    assert found is not None
    assert (found.id, found.alias, found.version) == (connection.id, "main", 1)
    assert connection.version == 2


async def test_without_the_stores_retry_the_first_call_after_a_restart_would_fail(
    running_private_postgres: PrivateCluster, private_url: str
) -> None:
    pool = await asyncpg.create_pool(private_url, min_size=1, max_size=1)
    try:
        await pool.fetchval("SELECT 1")
        running_private_postgres.restart()

        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            await pool.fetchval("SELECT 1")
    finally:
        await pool.close()


async def test_every_pooled_connection_is_replaced_after_a_restart(
    running_private_postgres: PrivateCluster, private_url: str
) -> None:
    async with await PostgresConnectionRepository.connect(
        private_url, min_size=4, max_size=4
    ) as repo:
        await asyncio.gather(*(repo.find_by_user_id(uuid4()) for _ in range(8)))
        running_private_postgres.restart()

        results = await asyncio.gather(*(repo.find_by_user_id(uuid4()) for _ in range(8)))

    assert results == [[]] * 8


async def test_a_restart_while_the_application_runs_is_survived_too(
    running_private_postgres: PrivateCluster, private_url: str
) -> None:
    connection = active()
    async with await PostgresConnectionRepository.connect(private_url, min_size=2) as repo:
        await repo.save(connection)
        await running_private_postgres.astop()
        await running_private_postgres.astart()

        found = await repo.find_by_id(connection.id)

    assert found is not None
    assert found.version == 1


@pytest.mark.parametrize("method", PORT_CALLS)
async def test_a_call_while_the_server_is_down_raises_database_unavailable_then_recovers(
    method: str, running_private_postgres: PrivateCluster, private_url: str
) -> None:
    async with await PostgresConnectionRepository.connect(
        private_url, min_size=1, connect_timeout=2
    ) as repo:
        await repo.find_by_id(uuid4())
        await running_private_postgres.astop()
        started = time.monotonic()

        exc = await raised_by(PORT_CALLS[method](repo))
        elapsed = time.monotonic() - started

        await running_private_postgres.astart()
        connection = active()
        await repo.save(connection)
        assert await repo.find_by_id(connection.id) is not None

    assert_translated(exc, DatabaseUnavailableError)
    assert elapsed < 5


async def test_a_transaction_while_the_server_is_down_raises_database_unavailable(
    running_private_postgres: PrivateCluster, private_url: str
) -> None:
    async with await PostgresConnectionRepository.connect(private_url, min_size=1) as repo:
        await repo.find_by_id(uuid4())
        running_private_postgres.stop()

        async def use() -> None:
            async with repo.transaction() as tx:
                await tx.save(active())

        exc = await raised_by(use())
        running_private_postgres.start()

        async with repo.transaction() as tx:
            await tx.save(active())

    assert_translated(exc, DatabaseUnavailableError)
