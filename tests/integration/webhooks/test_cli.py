"""`linkvault webhooks` on a SQLite file: add, list, deliveries, replay, remove; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

from linkvault.crypto import generate_key
from tests.support import run_cli


def base_env(tmp_path: Path) -> dict[str, str]:
    """The settings of these tests; run_cli drops every other LINKVAULT_* of this process."""
    return {
        "LINKVAULT_DATABASE_URL": f"sqlite:///{tmp_path / 'lv.db'}",
        "LINKVAULT_KEYS": generate_key("k1"),
    }


def test_add_list_deliveries_and_remove_an_endpoint(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert run_cli("migrate", cwd=tmp_path, env=env).returncode == 0

    added = run_cli(
        "webhooks", "add", "https://hooks.example.com/x", "--event", "connection.expired",
        "--json", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["connection.expired"]

    listed = run_cli("webhooks", "list", "--json", cwd=tmp_path, env=env)
    assert [e["id"] for e in json.loads(listed.stdout)] == [created["id"]]
    assert created["secret"] not in listed.stdout
    shown = run_cli("webhooks", "deliveries", created["id"], "--json", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == []

    removed = run_cli("webhooks", "remove", created["id"], cwd=tmp_path, env=env)
    assert removed.returncode == 0, removed.stderr
    again = run_cli("webhooks", "remove", created["id"], cwd=tmp_path, env=env)
    assert again.returncode != 0
    assert again.stderr.strip().count("\n") == 0
    assert "not found" in again.stderr


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert run_cli("migrate", cwd=tmp_path, env=env).returncode == 0

    for args, says in [
        (("add", "http://hooks.example.com/x"), "https"),
        (("add", "https://a.example", "--event", "nope"), "unknown event type"),
        (("replay", str(uuid4()), str(uuid4())), "not found"),
    ]:
        result = run_cli("webhooks", *args, cwd=tmp_path, env=env)
        assert result.returncode != 0, args
        assert says in result.stderr, (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "Traceback" not in result.stderr
