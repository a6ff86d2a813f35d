from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.stores import open_store
from tests.factories import SCHWAB


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkvault.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_migrate_then_list_on_the_embedded_default(tmp_path: Path) -> None:
    first = cli("migrate", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Applied migrations 1" in first.stdout
    assert (tmp_path / "linkvault.db").exists()

    again = cli("migrate", cwd=tmp_path)
    assert "up to date" in again.stdout

    listed = cli("connections", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


async def test_list_show_disconnect_and_delete_a_connection(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lv.db"
    async with await open_store(url, migrate=True) as store:
        conn = ProviderConnection(
            user_id=uuid4(), provider_id=SCHWAB, provider_slug="schwab", alias="Main"
        )
        await store.save(conn)

    listed = cli("connections", "list", "-d", url, "--json", cwd=tmp_path)
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [str(conn.id)]
    assert rows[0]["alias"] == "Main"

    shown = cli("connections", "show", str(conn.id), "-d", url, cwd=tmp_path)
    assert shown.returncode == 0
    assert "Main" in shown.stdout

    assert cli("connections", "disconnect", str(conn.id), "-d", url, cwd=tmp_path).returncode == 0
    async with await open_store(url) as store:
        found = await store.find_by_id(conn.id)
        assert found is not None
        assert found.status is ConnectionStatus.DISCONNECTED

    again = cli("connections", "disconnect", str(conn.id), "-d", url, cwd=tmp_path)
    assert again.returncode == 1
    assert "disconnected" in again.stderr

    deleted = cli("connections", "delete", str(conn.id), "--yes", "-d", url, cwd=tmp_path)
    assert deleted.returncode == 0
    missing = cli("connections", "show", str(conn.id), "-d", url, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"linkvault: error: connection {conn.id} not found"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["connections", "show", "not-a-uuid"], 2, "valid UUID"),
        (["connections", "list", "--status", "sleeping"], 2, "sleeping"),
        (["no-such-command"], 2, "No such command"),
        (["connections", "list", "-d", "mysql://u:hunter2@h/db"], 1, "unsupported database URL"),
        (["migrate", "-d", "postgresql://postgres@127.0.0.1:1/x"], 1, "unreachable"),
        (
            ["connections", "list", "-d", "sqlite:////nonexistent-dir/x/lv.db"],
            1,
            "no database at /nonexistent-dir/x/lv.db",
        ),
    ],
)
def test_bad_input_gives_one_line_and_a_non_zero_exit(
    tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("linkvault: error: ")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_a_schema_that_is_behind_is_refused_with_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    result = cli(
        "connections", "show", str(uuid4()), "-d", f"sqlite:///{tmp_path}/empty.db", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "linkvault migrate" in result.stderr
