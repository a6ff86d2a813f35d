"""The files a first run creates, and the ones read-only commands never create."""

from __future__ import annotations

import signal
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from uuid import uuid4

import pytest

from linkvault.access import KEY_PREFIX
from linkvault.domain import ProviderConnection
from linkvault.errors import SchemaError
from linkvault.stores import open_store
from linkvault.stores.migrations import latest_version
from tests.conftest import PostgresServer
from tests.support import LINKVAULT, clean_env, free_port, run_cli, wait_for_http


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_keeps_the_admin_key_out_of_the_log_stream_and_every_file_private(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [LINKVAULT, "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/v1/health") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)

    assert proc.returncode == 0, err
    admin_key_file = tmp_path / "linkvault.admin-key"
    plaintext = admin_key_file.read_text().strip()
    assert plaintext.startswith(KEY_PREFIX)
    assert plaintext not in out + err
    assert KEY_PREFIX not in out + err
    assert str(admin_key_file) in err
    for name in ("linkvault.db", "linkvault.keys", "linkvault.api-keys", "linkvault.admin-key"):
        assert _mode(tmp_path / name) == 0o600, name
    for extra in tmp_path.glob("linkvault.db-*"):
        assert _mode(extra) & 0o077 == 0, extra.name


async def test_the_readme_library_example_opens_a_new_sqlite_file_without_a_migrate_flag(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/new.db"

    async with await open_store(url) as store:
        conn = ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug="schwab")
        await store.save(conn)
        assert await store.find_by_id(conn.id) == conn
        assert await store.schema_version() == latest_version("sqlite")
    assert _mode(tmp_path / "new.db") == 0o600


def test_two_processes_opening_one_new_sqlite_file_at_once_both_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    script = (
        "import asyncio, sys\n"
        "from linkvault import open_store\n"
        "async def main():\n"
        "    store = await open_store(sys.argv[1])\n"
        "    print(await store.schema_version())\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    for _ in range(5):
        (tmp_path / "race.db").unlink(missing_ok=True)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [p.communicate(timeout=60) for p in procs]
        for proc, (out, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err
            assert out.strip() == str(latest_version("sqlite"))


async def test_postgres_still_refuses_a_schema_that_is_behind_with_the_command_to_run(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.create_database(migrated=False)

    with pytest.raises(SchemaError, match="linkvault migrate"):
        await open_store(url)

    async with await open_store(url, migrate=True) as store:
        assert await store.schema_version() == latest_version("postgres")


@pytest.mark.parametrize(
    "args",
    [
        ["connections", "list"],
        ["connections", "show", "0f8fad5b-d9cb-469f-a165-70867728950e"],
        ["connections", "disconnect", "0f8fad5b-d9cb-469f-a165-70867728950e"],
        ["connections", "delete", "--yes", "0f8fad5b-d9cb-469f-a165-70867728950e"],
        ["keys", "list"],
        ["keys", "rotate"],
    ],
)
def test_commands_that_only_read_refuse_a_missing_database_and_create_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    result = run_cli(*args, cwd=tmp_path)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"linkvault: error: no database at {tmp_path / 'linkvault.db'}")
    assert list(tmp_path.iterdir()) == []


def test_keys_list_refuses_a_missing_key_file_saying_where_it_looked(tmp_path: Path) -> None:
    assert run_cli("migrate", cwd=tmp_path).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())

    result = run_cli("keys", "list", cwd=tmp_path)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"linkvault: error: no key file at {tmp_path / 'linkvault.keys'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_read_only_command_on_an_unmigrated_file_says_to_migrate_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty.db").touch()

    result = run_cli("connections", "list", "-d", f"sqlite:///{tmp_path}/empty.db", cwd=tmp_path)

    assert result.returncode == 1
    assert "linkvault migrate" in result.stderr
    with closing(sqlite3.connect(tmp_path / "empty.db")) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
