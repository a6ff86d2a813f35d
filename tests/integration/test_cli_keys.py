from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from linkvault.credentials import (
    ApiKeyCredentials,
    CredentialPayload,
    OAuth2Tokens,
    open_credentials,
    seal_credentials,
)
from linkvault.crypto import AesGcmCipher, Key, KeyRing, generate_key, load_key_file, parse_keys
from linkvault.domain import ProviderConnection
from linkvault.stores import open_store
from linkvault.stores.common import Page

ENTRY = re.compile(r"[A-Za-z0-9_.-]{1,32}:[A-Za-z0-9_-]{43}")
TOKEN = "at-CLICANARY-0123456789abcdef"


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LINKVAULT_")}
    return subprocess.run(
        [sys.executable, "-m", "linkvault.cli", "keys", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, "COLUMNS": "200", **env},
        check=False,
    )


def secrets_of(*entries: str) -> list[str]:
    return ["CLICANARY", *(e.split(":", 1)[1] for e in entries)]


def assert_no_secret(result: subprocess.CompletedProcess[str], *entries: str) -> None:
    for secret in secrets_of(*entries):
        assert secret not in result.stdout
        assert secret not in result.stderr


def assert_one_error_line(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("linkvault: error: ")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def write_key_file(path: Path, *entries: str) -> None:
    path.write_text("# keys: the first is active\n" + "".join(f"{e}\n" for e in entries))
    path.chmod(0o600)


async def seed(url: str, ring: KeyRing, count: int) -> dict[UUID, CredentialPayload]:
    cipher = AesGcmCipher(ring)
    payloads: dict[UUID, CredentialPayload] = {}
    async with await open_store(url, migrate=True) as store:
        for i in range(count):
            conn = ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug="bank")
            payload: CredentialPayload = (
                OAuth2Tokens(access_token=f"{TOKEN}-{i}", refresh_token=f"rt-CLICANARY-{i}")
                if i % 2
                else ApiKeyCredentials(api_key=f"ak-CLICANARY-{i}")
            )
            conn.mark_connected(seal_credentials(payload, connection_id=conn.id, cipher=cipher))
            await store.save(conn)
            payloads[conn.id] = payload
    return payloads


async def opened(url: str, ring: KeyRing) -> dict[UUID, CredentialPayload]:
    cipher = AesGcmCipher(ring)
    async with await open_store(url) as store:
        rows = await store.list_connections(None, Page(limit=1000))
    return {
        r.id: open_credentials(r.credentials, connection_id=r.id, cipher=cipher)
        for r in rows
        if r.credentials is not None
    }


def listed(url: str, cwd: Path, **env: str) -> dict[str, object]:
    result = cli("list", "--json", "-d", url, cwd=cwd, **env)
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_generate_prints_one_entry_on_stdout_and_the_hint_on_stderr(tmp_path: Path) -> None:
    named = cli("generate", "--id", "2026-q1", cwd=tmp_path)
    unnamed = cli("generate", cwd=tmp_path)

    assert named.returncode == 0, named.stderr
    assert re.fullmatch(r"2026-q1:[A-Za-z0-9_-]{43}\n", named.stdout)
    assert re.fullmatch(r"\d{8}-[0-9a-f]{6}:[A-Za-z0-9_-]{43}\n", unnamed.stdout)
    assert parse_keys(named.stdout).active_id == "2026-q1"
    assert named.stdout.split(":")[1] not in named.stderr
    assert "linkvault keys rotate" in named.stderr
    assert named.stdout.split(":")[1] != unnamed.stdout.split(":")[1]
    assert not list(tmp_path.iterdir()), "generate must not create files"


async def test_list_rotate_and_retire_with_a_key_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lv.db"
    key_file = tmp_path / "lv.keys"
    old = generate_key("old")
    write_key_file(key_file, old)
    payloads = await seed(url, load_key_file(key_file), 25)
    env = {"LINKVAULT_KEY_FILE": str(key_file)}

    only_key = cli("retire", "old", "-d", url, cwd=tmp_path, **env)
    assert_one_error_line(only_key, "'old' is the active key")

    new = cli("generate", "--id", "new", cwd=tmp_path).stdout.strip()
    write_key_file(key_file, new, old)
    assert listed(url, tmp_path, **env) == {
        "source": f"key file {key_file}",
        "active": "new",
        "keys": [
            {"id": "new", "active": True, "connections": 0},
            {"id": "old", "active": False, "connections": 25},
        ],
        "connections_under_unknown_keys": 0,
    }
    table = cli("list", "-d", url, cwd=tmp_path, **env)
    assert re.search(r"new\s+│\s+yes\s+│\s+0", table.stdout), table.stdout
    assert re.search(r"old\s+│\s+│\s+25", table.stdout), table.stdout

    refused = cli("retire", "old", "-d", url, cwd=tmp_path, **env)
    assert_one_error_line(refused, "25 connections are still sealed under it")
    assert "run `linkvault keys rotate` first" in refused.stderr
    assert key_file.read_text().count("old:") == 1

    rotated = cli("rotate", "--batch-size", "4", "-d", url, cwd=tmp_path, **env)
    assert rotated.returncode == 0, rotated.stderr
    assert "Re-encrypted 25 connection(s) under key 'new'" in rotated.stdout
    assert "Key 'old': 0 connection(s) left" in rotated.stdout
    assert "25/25" in rotated.stderr
    again = cli("rotate", "--json", "-d", url, cwd=tmp_path, **env)
    assert json.loads(again.stdout)["rotated"] == 0
    assert json.loads(again.stdout)["complete"] is True

    retired = cli("retire", "old", "-d", url, cwd=tmp_path, **env)
    assert retired.returncode == 0, retired.stderr
    assert f"Removed key 'old' from key file {key_file}" in retired.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text() == f"# keys: the first is active\n{new}\n"
    assert load_key_file(key_file).ids == ("new",)
    assert await opened(url, load_key_file(key_file)) == payloads
    assert sorted(os.listdir(tmp_path)) == ["lv.db", "lv.keys"]

    for result in (only_key, table, refused, rotated, again, retired):
        assert_no_secret(result, old, new)


async def test_retire_with_keys_from_the_environment_says_which_entry_to_remove(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/lv.db"
    old, new = generate_key("old"), generate_key("new")
    await seed(url, parse_keys(old), 3)
    env = {"LINKVAULT_KEYS": f"{new},{old}"}

    refused = cli("retire", "old", "-d", url, cwd=tmp_path, **env)
    assert_one_error_line(refused, "3 connections are still sealed under it")
    assert cli("rotate", "-d", url, cwd=tmp_path, **env).returncode == 0
    retired = cli("retire", "old", "-d", url, cwd=tmp_path, **env)

    assert retired.returncode == 0, retired.stderr
    assert "remove the entry that starts with `old:` from LINKVAULT_KEYS" in retired.stdout
    assert_no_secret(retired, old, new)
    assert_no_secret(refused, old, new)


async def test_rotate_exits_non_zero_naming_keys_the_ring_lacks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lv.db"
    key = generate_key("current")
    await seed(url, KeyRing([Key.generate("lost")]), 2)
    await seed(url, parse_keys(generate_key("old")), 3)

    result = cli("rotate", "-d", url, cwd=tmp_path, LINKVAULT_KEYS=key)

    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("linkvault: error: 5 connection(s) hold credentials the ring cannot")
    assert "'lost': 2" in last
    assert "'old': 3" in last
    assert "Traceback" not in result.stderr
    assert "Re-encrypted 0 connection(s)" in result.stdout
    listing = cli("list", "-d", url, cwd=tmp_path, LINKVAULT_KEYS=key)
    assert "(not in the ring)" in listing.stdout
    assert "5 connection(s) are sealed under keys the ring does not hold" in listing.stderr
    assert_no_secret(result, key)


@pytest.mark.parametrize(
    ("args", "key_file_text", "mode", "needle"),
    [
        (["retire", "missing"], None, 0o600, "key 'missing' is not in the key ring"),
        (["retire", "A:c2VjcmV0LWtleS1tYXRlcmlhbA"], None, 0o600, "invalid key id"),
        (["list"], "# comment\n\nB:bm90LWEta2V5\n", 0o600, "line 3 of key file"),
        (["rotate"], "B:not base64 at all!\n", 0o600, "is not valid base64"),
        (["list"], None, 0o644, "chmod 600"),
        (["generate", "--id", "white space"], None, 0o600, "invalid key id"),
    ],
)
def test_bad_input_gives_one_line_a_non_zero_exit_and_no_key_material(
    tmp_path: Path, args: list[str], key_file_text: str | None, mode: int, needle: str
) -> None:
    key_file = tmp_path / "lv.keys"
    entry = generate_key("A")
    key_file.write_text(key_file_text if key_file_text is not None else f"{entry}\n")
    key_file.chmod(mode)
    url = f"sqlite:///{tmp_path}/lv.db"
    extra = [] if args[0] == "generate" else ["-d", url]
    migrate = [sys.executable, "-m", "linkvault.cli", "migrate", "-d", url]
    subprocess.run(migrate, check=True, capture_output=True, timeout=60)

    result = cli(*args, *extra, cwd=tmp_path, LINKVAULT_KEY_FILE=str(key_file))

    assert_one_error_line(result, needle)
    assert result.stdout == ""
    assert_no_secret(result, entry)
    assert "c2VjcmV0" not in result.stderr
    assert "bm90LWEta2V5" not in result.stderr


def test_batch_size_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("rotate", "--batch-size", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_create_api_key_prints_a_key_that_its_entry_accepts(tmp_path: Path) -> None:
    from linkvault.access import parse_api_keys

    result = cli("create-api-key", "ci-bot", "--scopes", "read,credentials", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    plaintext = result.stdout.strip()
    assert plaintext.startswith("lvk_")
    entry = result.stderr.strip().rsplit(" ", 1)[-1]
    assert plaintext not in result.stderr
    keys = parse_api_keys(entry)
    found = keys.authenticate(plaintext)
    assert found is not None
    assert found.name == "ci-bot"
    assert {s.value for s in found.scopes} == {"read", "credentials"}
    assert keys.authenticate(plaintext + "x") is None


def test_create_api_key_refuses_an_unknown_scope_in_one_line(tmp_path: Path) -> None:
    result = cli("create-api-key", "ci-bot", "--scopes", "read,admin", cwd=tmp_path)

    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "unknown scope 'admin'" in result.stderr
