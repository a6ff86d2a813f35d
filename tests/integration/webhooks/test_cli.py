"""`linkvault webhooks` on a SQLite file: add, list, deliveries, replay, remove; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

from linkvault.crypto import generate_key


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkvault.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKVAULT_")}
    env["LINKVAULT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'lv.db'}"
    env["LINKVAULT_KEYS"] = generate_key("k1")
    return env


def test_add_list_deliveries_and_remove_an_endpoint(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert cli("migrate", cwd=tmp_path, env=env).returncode == 0

    added = cli(
        "webhooks", "add", "https://hooks.example.com/x", "--event", "connection.expired",
        "--json", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["connection.expired"]

    listed = cli("webhooks", "list", "--json", cwd=tmp_path, env=env)
    assert [e["id"] for e in json.loads(listed.stdout)] == [created["id"]]
    assert created["secret"] not in listed.stdout
    shown = cli("webhooks", "deliveries", created["id"], "--json", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == []

    removed = cli("webhooks", "remove", created["id"], cwd=tmp_path, env=env)
    assert removed.returncode == 0, removed.stderr
    again = cli("webhooks", "remove", created["id"], cwd=tmp_path, env=env)
    assert again.returncode != 0
    assert again.stderr.strip().count("\n") == 0
    assert "not found" in again.stderr


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert cli("migrate", cwd=tmp_path, env=env).returncode == 0

    for args, says in [
        (("add", "http://hooks.example.com/x"), "https"),
        (("add", "https://a.example", "--event", "nope"), "unknown event type"),
        (("replay", str(uuid4()), str(uuid4())), "not found"),
    ]:
        result = cli("webhooks", *args, cwd=tmp_path, env=env)
        assert result.returncode != 0, args
        assert says in result.stderr, (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "Traceback" not in result.stderr
