from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from linkvault.domain import utc_now
from linkvault.errors import ConfigurationError, InvalidArgumentError, SchemaError
from linkvault.stores import DEFAULT_URL, open_store, redact_url
from linkvault.stores import queries as named
from linkvault.stores.memory import InMemoryConnectionRepository
from linkvault.stores.migrations import SCHEMA_TABLE, latest_version, load_migrations
from linkvault.stores.postgres import PostgresConnectionRepository, pooler_mode
from linkvault.stores.sqlite import SqliteConnectionRepository, split_statements
from tests.conftest import PostgresServer, through_pooler

PORT_QUERIES: dict[str, Callable[[Any, Any, Any], tuple[Any, ...]]] = {
    "find_by_id": lambda u, p, t: (u,),
    "find_by_user_id": lambda u, p, t: (u,),
    "find_by_user_and_provider": lambda u, p, t: (u, p),
    "find_active_by_user": lambda u, p, t: (u,),
    "find_expiring_soon": lambda u, p, t: (t,),
    "list_by_user": lambda u, p, t: (u, None, None, None, None, 50, True, 8),
    "list_expiring": lambda u, p, t: (None, None, None, t, None, 50, None, 8),
    "list_all": lambda u, p, t: (None, None, "active", None, None, 50, True, 8),
}


async def test_postgres_migrate_is_idempotent_and_recorded(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.create_database(migrated=False)
    async with await PostgresConnectionRepository.connect(url) as repo:
        assert await repo.schema_version() == 0
        with pytest.raises(SchemaError, match="linkvault migrate"):
            await repo.check_schema()

        assert await repo.migrate() == list(range(1, latest_version("postgres") + 1))
        assert await repo.migrate() == []

        assert await repo.schema_version() == latest_version("postgres")
        await repo.check_schema()
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT version, name, applied_at FROM {SCHEMA_TABLE}")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == list(range(1, latest_version("postgres") + 1))
    assert rows[0]["name"] == "initial"


async def test_concurrent_postgres_migrations_do_not_collide(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.create_database(migrated=False)
    repos = [await PostgresConnectionRepository.connect(url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(r.migrate() for r in repos))
    finally:
        for repo in repos:
            await repo.close()

    assert sorted(applied, key=len) == [[], [], [], list(range(1, latest_version("postgres") + 1))]


async def test_migrations_run_through_a_transaction_pooler(
    postgres_server: PostgresServer,
) -> None:
    direct = await postgres_server.create_database(migrated=False)
    pooled = through_pooler(direct)
    repos = [await PostgresConnectionRepository.connect(pooled) for _ in range(3)]
    try:
        # Concurrent runs serialize on a transaction-scoped lock: one applies everything.
        applied = await asyncio.gather(*(r.migrate() for r in repos))
        assert sorted(applied, key=len) == [[], [], list(range(1, latest_version("postgres") + 1))]
        await repos[0].check_schema()
    finally:
        for repo in repos:
            await repo.close()


def test_a_pooler_mode_other_than_transaction_is_refused() -> None:
    for url in (
        "postgresql://app@db/linkvault?pooler=session",
        "postgresql://app@db/linkvault?pooler=transaction&pooler=transaction",
        "postgresql://app@db/linkvault?pooler=",
    ):
        with pytest.raises(ConfigurationError, match="pooler=transaction"):
            pooler_mode(url)
    assert pooler_mode("postgresql://app@db/linkvault?sslmode=require&pooler=transaction") == (
        "postgresql://app@db/linkvault?sslmode=require",
        True,
    )
    assert pooler_mode("postgresql://app@db/linkvault") == ("postgresql://app@db/linkvault", False)


async def test_sqlite_migrate_is_idempotent_and_recorded(tmp_path: Path) -> None:
    async with await SqliteConnectionRepository.open(tmp_path / "lv.db") as repo:
        assert await repo.schema_version() == 0
        assert await repo.migrate() == list(range(1, latest_version("sqlite") + 1))
        assert await repo.migrate() == []
        await repo.check_schema()
    with sqlite3.connect(tmp_path / "lv.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in db.execute(f"SELECT version FROM {SCHEMA_TABLE}")]
    assert versions == list(range(1, latest_version("sqlite") + 1))


async def test_sqlite_events_keep_their_positions_across_migration_8(tmp_path: Path) -> None:
    """Dropping AUTOINCREMENT rebuilds the event table: every event and position stays, and
    the next event is placed after the last one."""
    path = tmp_path / "lv.db"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE {SCHEMA_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                   " applied_at TEXT NOT NULL DEFAULT 'x')")  # fmt: skip
        for migration in load_migrations("sqlite")[:7]:
            for statement in split_statements(migration.sql):
                db.execute(statement)
            db.execute(f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES (?, ?)",
                       (migration.version, migration.name))  # fmt: skip
        cid = uuid4().bytes
        for seq in (1, 2, 3):
            db.execute(
                "INSERT INTO connection_events (position, id, connection_id, user_id,"
                " provider_slug, seq, type, occurred_at) VALUES (?, ?, ?, ?, 'x', ?, 't', 0)",
                (seq * 10, uuid4().bytes, cid, uuid4().bytes, seq),
            )
    async with await SqliteConnectionRepository.open(path) as repo:
        assert await repo.migrate() == list(range(8, latest_version("sqlite") + 1))
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT position FROM connection_events")] == [10, 20, 30]
        db.execute(
            "INSERT INTO connection_events (id, connection_id, user_id, provider_slug, seq,"
            " type, occurred_at) VALUES (?, ?, ?, 'x', 4, 't', 0)",
            (uuid4().bytes, cid, uuid4().bytes),
        )
        assert db.execute("SELECT max(position) FROM connection_events").fetchone()[0] == 31
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'connection_events'")
        assert "AUTOINCREMENT" not in sql.fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError):  # (connection_id, seq) is still unique
            db.execute(
                "INSERT INTO connection_events (id, connection_id, user_id, provider_slug, seq,"
                " type, occurred_at) VALUES (?, ?, ?, 'x', 4, 't', 0)",
                (uuid4().bytes, cid, uuid4().bytes),
            )


async def test_concurrent_sqlite_migrations_do_not_collide(tmp_path: Path) -> None:
    repos = [await SqliteConnectionRepository.open(tmp_path / "lv.db") for _ in range(4)]
    try:
        applied = await asyncio.gather(*(r.migrate() for r in repos))
    finally:
        for repo in repos:
            await repo.close()
    assert sorted(applied, key=len) == [[], [], [], list(range(1, latest_version("sqlite") + 1))]


async def _fill_postgres(url: str, rows: int) -> None:
    conn = await asyncpg.connect(url)
    now = utc_now()
    try:
        records = []
        for n in range(rows):
            status = "active" if n % 10 < 7 else "expired"
            records.append(
                (
                    uuid4(),
                    uuid4(),
                    uuid4(),
                    "schwab",
                    None,
                    status,
                    None,
                    "oauth2",
                    os.urandom(32),
                    now + timedelta(seconds=n),
                    now,
                    None,
                    now,
                    now,
                    1,
                )
            )
        columns = named.load("postgres")["find_by_id"].split("FROM")[0]
        names = [c.strip() for c in columns.replace("SELECT", "").split(",")]
        await conn.copy_records_to_table("provider_connections", records=records, columns=names)
        await conn.execute("ANALYZE provider_connections")
    finally:
        await conn.close()


async def test_every_port_query_is_answered_from_an_index_on_postgres(
    postgres_url: str,
) -> None:
    await _fill_postgres(postgres_url, 20_000)
    conn = await asyncpg.connect(postgres_url)
    try:
        for name, args in PORT_QUERIES.items():
            sql = named.load("postgres")[name]
            params = args(uuid4(), uuid4(), utc_now() + timedelta(minutes=5))
            for mode in ("auto", "force_generic_plan"):
                await conn.execute(f"SET plan_cache_mode = {mode}")
                plan = "\n".join(
                    r[0] for r in await conn.fetch(f"EXPLAIN (COSTS OFF) {sql}", *params)
                )
                assert "Seq Scan" not in plan, f"{name} ({mode}):\n{plan}"
                assert "Index" in plan, f"{name} ({mode}):\n{plan}"
    finally:
        await conn.close()


async def test_every_port_query_is_answered_from_an_index_on_sqlite(tmp_path: Path) -> None:
    async with await SqliteConnectionRepository.open(tmp_path / "lv.db") as repo:
        await repo.migrate()
    with sqlite3.connect(tmp_path / "lv.db") as db:
        db.execute("ANALYZE")
        for name, args in PORT_QUERIES.items():
            sql = named.load("sqlite")[name]
            params = args(uuid4().bytes, uuid4().bytes, 0)
            plan = " | ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert (
                "USING INDEX" in plan
                or "USING PRIMARY KEY" in plan
                or ("USING COVERING INDEX" in plan)
            ), f"{name}: {plan}"
            if name == "list_all":
                # The unfiltered listing walks the primary key in order and stops at its LIMIT.
                assert "SCAN provider_connections USING INDEX sqlite_autoindex" in plan, plan
                assert "TEMP B-TREE" not in plan, plan
            else:
                assert "SCAN provider_connections" not in plan, f"{name}: {plan}"


async def test_the_health_of_a_page_is_read_by_key_on_both_databases(
    tmp_path: Path, postgres_url: str
) -> None:
    await _fill_postgres(postgres_url, 20_000)
    ids = sorted((uuid4() for _ in range(50)), key=lambda i: i.bytes)
    conn = await asyncpg.connect(postgres_url)
    try:
        sql = named.load("postgres")["connection_health"]
        rows = await conn.fetch(f"EXPLAIN (COSTS OFF) {sql}", ids, ids[0], ids[-1])
        plan = "\n".join(r[0] for r in rows)
    finally:
        await conn.close()
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan, plan
    async with await SqliteConnectionRepository.open(tmp_path / "lv.db") as repo:
        await repo.migrate()
    with sqlite3.connect(tmp_path / "lv.db") as db:
        sql = named.load("sqlite")["connection_health"]
        hexes = json.dumps([i.bytes.hex().upper() for i in ids])
        params = (hexes, ids[0].bytes, ids[-1].bytes)
        lite = " | ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "SEARCH provider_connections USING INDEX sqlite_autoindex" in lite, lite


async def test_open_store_opens_each_kind_from_one_url(tmp_path: Path, postgres_url: str) -> None:
    async with await open_store(f"sqlite:///{tmp_path}/a.db", migrate=True) as lite:
        assert isinstance(lite, SqliteConnectionRepository)
        assert await lite.find_by_user_id(uuid4()) == []
    async with await open_store(postgres_url) as pg:
        assert isinstance(pg, PostgresConnectionRepository)
        assert await pg.find_by_user_id(uuid4()) == []
    async with await open_store("memory://") as mem:
        assert isinstance(mem, InMemoryConnectionRepository)


async def test_open_store_defaults_to_linkvault_db_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_URL == "sqlite:///./linkvault.db"
    store = await open_store(migrate=True)
    await store.close()
    assert (tmp_path / "linkvault.db").exists()


@pytest.mark.parametrize(
    "url", ["mysql://root@localhost/db", "linkvault.db", "sqlite://", "sqlite:///", ""]
)
async def test_open_store_refuses_an_unsupported_url(url: str) -> None:
    with pytest.raises(InvalidArgumentError):
        await open_store(url)


def test_a_password_in_a_url_is_redacted_in_messages() -> None:
    assert redact_url("postgresql://app:hunter2@db:5432/lv") == "postgresql://app:***@db:5432/lv"
