from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import uuid4

import asyncpg
import pytest

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.errors import (
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    LinkvaultError,
    SchemaError,
    StaleConnectionError,
)
from linkvault.stores.postgres import PostgresConnectionRepository
from tests.pg_cluster import (  # noqa: F401  (fixtures used by name)
    PrivateCluster,
    private_postgres_fixture,
    running_private_postgres_fixture,
)

if TYPE_CHECKING:
    from tests.conftest import PostgresServer

pytestmark = pytest.mark.postgres

CLOSED_PORT_URL = "postgresql://postgres@127.0.0.1:1/postgres"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET_ALIAS = "alias-7f3c9e-do-not-leak"
SECRET_BLOB = b"blob-51d0a2-do-not-leak"
LOCK_ROW = "SELECT 1 FROM provider_connections WHERE id = $1 FOR UPDATE"

PortCall = Callable[[PostgresConnectionRepository], Awaitable[object]]


def active(alias: str | None = "main", blob: bytes = b"sealed") -> ProviderConnection:
    return ProviderConnection(
        user_id=uuid4(),
        provider_id=uuid4(),
        provider_slug="schwab",
        alias=alias,
        status=ConnectionStatus.ACTIVE,
        credentials=ProviderCredentials(blob, CredentialType.OAUTH2, NOW),
        connected_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


def stored_copy(connection: ProviderConnection) -> ProviderConnection:
    copy = active(connection.alias)
    copy.id = connection.id
    copy.version = 1
    return copy


PORT_CALLS: dict[str, PortCall] = {
    "find_by_id": lambda r: r.find_by_id(uuid4()),
    "find_by_user_id": lambda r: r.find_by_user_id(uuid4()),
    "find_by_user_and_provider": lambda r: r.find_by_user_and_provider(uuid4(), uuid4()),
    "find_active_by_user": lambda r: r.find_active_by_user(uuid4()),
    "find_expiring_soon": lambda r: r.find_expiring_soon(30),
    "save (insert)": lambda r: r.save(active()),
    "save (update)": lambda r: r.save(stored_copy(active())),
    "delete": lambda r: r.delete(uuid4()),
}


def assert_translated(exc: BaseException, expected: type[DatabaseError]) -> BaseException:
    assert isinstance(exc, expected), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    assert cause is not None, "the driver's error must be chained as __cause__"
    assert not isinstance(cause, LinkvaultError)
    return cause


async def raised_by(call: Awaitable[object]) -> BaseException:
    try:
        await call
    except BaseException as exc:
        return exc
    raise AssertionError("the call did not fail")


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


async def test_connecting_to_a_closed_port_raises_database_unavailable() -> None:
    started = time.monotonic()

    exc = await raised_by(PostgresConnectionRepository.connect(CLOSED_PORT_URL))

    assert isinstance(assert_translated(exc, DatabaseUnavailableError), OSError)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("method", PORT_CALLS)
async def test_every_port_method_on_an_unreachable_server_raises_database_unavailable(
    method: str,
) -> None:
    pool = await asyncpg.create_pool(CLOSED_PORT_URL, min_size=0, max_size=1, timeout=2)
    try:
        exc = await raised_by(PORT_CALLS[method](PostgresConnectionRepository(pool)))
    finally:
        await pool.close()

    assert isinstance(assert_translated(exc, DatabaseUnavailableError), OSError)


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


# --- a missing schema --------------------------------------------------------


@pytest.mark.parametrize("method", PORT_CALLS)
async def test_every_port_method_on_an_unmigrated_database_raises_schema_error(
    method: str, postgres_server: PostgresServer
) -> None:
    url = await postgres_server.create_database(migrated=False)
    async with await PostgresConnectionRepository.connect(url, max_size=1) as repo:
        exc = await raised_by(PORT_CALLS[method](repo))

    assert isinstance(assert_translated(exc, SchemaError), asyncpg.UndefinedTableError)


async def test_checking_the_schema_of_an_unmigrated_database_raises_schema_error(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.create_database(migrated=False)
    async with await PostgresConnectionRepository.connect(url, max_size=1) as repo:
        with pytest.raises(SchemaError):
            await repo.check_schema()


async def test_a_dropped_column_raises_schema_error(
    repo: PostgresConnectionRepository, raw: asyncpg.Connection
) -> None:
    await raw.execute("ALTER TABLE provider_connections DROP COLUMN status_reason")

    for method in ("find_by_id", "save (insert)", "save (update)"):
        exc = await raised_by(PORT_CALLS[method](repo))
        assert isinstance(assert_translated(exc, SchemaError), asyncpg.UndefinedColumnError)


# --- a violated constraint ---------------------------------------------------


async def test_an_empty_provider_slug_that_bypassed_the_domain_violates_a_check(
    repo: PostgresConnectionRepository,
) -> None:
    connection = active()
    connection.provider_slug = ""  # the domain would refuse it; the CHECK must too

    exc = await raised_by(repo.save(connection))

    assert isinstance(assert_translated(exc, ConstraintViolationError), asyncpg.CheckViolationError)
    assert connection.version == 0
    assert await repo.find_by_id(connection.id) is None


async def test_an_active_connection_without_credentials_violates_a_check_on_update(
    repo: PostgresConnectionRepository,
) -> None:
    connection = active()
    await repo.save(connection)
    connection.credentials = None

    exc = await raised_by(repo.save(connection))

    assert isinstance(assert_translated(exc, ConstraintViolationError), asyncpg.CheckViolationError)
    stored = await repo.find_by_id(connection.id)
    assert stored is not None
    assert stored.credentials is not None
    assert stored.version == connection.version == 1


async def test_a_unique_index_added_outside_linkvault_raises_constraint_violation(
    repo: PostgresConnectionRepository, raw: asyncpg.Connection
) -> None:
    await raw.execute(
        "CREATE UNIQUE INDEX one_alias ON provider_connections (user_id, provider_id, alias)"
    )
    first = active("shared")
    await repo.save(first)
    second = active("shared")
    second.user_id, second.provider_id = first.user_id, first.provider_id

    exc = await raised_by(repo.save(second))

    assert isinstance(
        assert_translated(exc, ConstraintViolationError), asyncpg.UniqueViolationError
    )


async def test_a_row_inserted_by_another_client_between_build_and_save_is_not_overwritten(
    repo: PostgresConnectionRepository, raw: asyncpg.Connection
) -> None:
    mine = active("mine")
    await raw.execute(
        "INSERT INTO provider_connections (id, user_id, provider_id, provider_slug, alias,"
        " status, created_at, updated_at, version)"
        " VALUES ($1, $2, $3, 'other', 'theirs', 'pending', now(), now(), 7)",
        mine.id,
        uuid4(),
        uuid4(),
    )

    with pytest.raises(StaleConnectionError):
        await repo.save(mine)

    row = await raw.fetchrow(
        "SELECT alias, version FROM provider_connections WHERE id = $1", mine.id
    )
    assert row is not None
    assert (row["alias"], row["version"]) == ("theirs", 7)


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


# --- secrets stay out of messages -------------------------------------------


def _leaks(message: str) -> list[str]:
    forms = [SECRET_ALIAS, SECRET_BLOB.decode(), SECRET_BLOB.hex(), repr(SECRET_BLOB)]
    return [form for form in forms if form in message]


async def _check_violation(repo: PostgresConnectionRepository, raw: asyncpg.Connection) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    connection.provider_slug = ""
    await repo.save(connection)


async def _unique_violation(repo: PostgresConnectionRepository, raw: asyncpg.Connection) -> None:
    await raw.execute(
        "CREATE UNIQUE INDEX one_alias ON provider_connections (user_id, provider_id, alias)"
    )
    first = active(SECRET_ALIAS, SECRET_BLOB)
    await repo.save(first)
    second = active(SECRET_ALIAS, SECRET_BLOB)
    second.user_id, second.provider_id = first.user_id, first.provider_id
    await repo.save(second)


async def _unencodable_value(repo: PostgresConnectionRepository, raw: asyncpg.Connection) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    assert connection.credentials is not None
    # A caller that bypassed the value object: the driver cannot encode the value.
    object.__setattr__(connection.credentials, "encrypted_data", SECRET_BLOB.decode())
    await repo.save(connection)


async def _unencodable_alias(repo: PostgresConnectionRepository, raw: asyncpg.Connection) -> None:
    connection = active(SECRET_ALIAS, SECRET_BLOB)
    connection.alias = SECRET_ALIAS.encode()  # type: ignore[assignment]
    await repo.save(connection)


@pytest.mark.parametrize(
    "failure", [_check_violation, _unique_violation, _unencodable_value, _unencodable_alias]
)
async def test_no_database_error_message_contains_parameter_values(
    failure: Callable[[PostgresConnectionRepository, asyncpg.Connection], Awaitable[None]],
    repo: PostgresConnectionRepository,
    raw: asyncpg.Connection,
) -> None:
    exc = await raised_by(failure(repo, raw))

    assert_translated(exc, DatabaseError)
    assert _leaks(str(exc)) == [], str(exc)
    assert _leaks(repr(exc)) == []


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
