"""`linkvault connections import`: existing grants moved in, tokens never on argv or output."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from linkvault import (
    AesGcmCipher,
    ConnectionStatus,
    OAuth2Tokens,
    generate_key,
    open_credentials,
    open_store,
    parse_keys,
)
from tests.support import run_cli


def _token(kind: str) -> str:
    # Made at run time: no token-shaped literal is committed.
    return f"{kind}-IMPORTCANARY-{secrets.token_hex(8)}"


def _grant(provider: str = "schwab", **fields: str) -> dict[str, str]:
    return {
        "user_id": str(uuid4()),
        "provider": provider,
        "access_token": _token("at"),
        "refresh_token": _token("rt"),
        "expires_at": "2026-05-01T12:00:00+00:00",
        **fields,
    }


def _lines(*grants: dict[str, str]) -> str:
    return "".join(json.dumps(g) + "\n" for g in grants)


def _assert_no_token(text: str, *grants: dict[str, str]) -> None:
    assert "IMPORTCANARY" not in text
    for grant in grants:
        assert grant["access_token"] not in text


@pytest.fixture
def keys() -> str:
    return generate_key("k1")


async def test_imported_grants_become_active_connections_whose_tokens_decrypt(
    tmp_path: Path, keys: str
) -> None:
    first, second = _grant(alias="Main"), _grant("sandbox")
    grants_file = tmp_path / "grants.jsonl"
    grants_file.write_text(_lines(first, second))
    url = f"sqlite:///{tmp_path}/lv.db"

    result = run_cli(
        "connections", "import", str(grants_file), "--json", "-d", url,
        cwd=tmp_path, env={"LINKVAULT_KEYS": keys},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    _assert_no_token(result.stdout + result.stderr, first, second)
    rows = json.loads(result.stdout)
    assert [(r["line"], r["provider"]) for r in rows] == [(1, "schwab"), (2, "sandbox")]
    cipher = AesGcmCipher(parse_keys(keys))
    async with await open_store(url) as store:
        for row, grant in zip(rows, (first, second), strict=True):
            conn = await store.find_by_id(UUID(row["id"]))
            assert conn is not None
            assert conn.status is ConnectionStatus.ACTIVE
            assert str(conn.user_id) == grant["user_id"]
            assert conn.credentials is not None
            tokens = open_credentials(
                conn.credentials, connection_id=conn.id, cipher=cipher, expect=OAuth2Tokens
            )
            assert tokens.access_token == grant["access_token"]
            assert tokens.refresh_token == grant["refresh_token"]
            assert tokens.expires_at is not None
            assert tokens.expires_at.isoformat() == grant["expires_at"]


async def test_grants_read_from_stdin_import_into_postgres(
    tmp_path: Path, postgres_url: str, keys: str
) -> None:
    grant = _grant()

    result = run_cli(
        "connections", "import", "-", "-d", postgres_url,
        cwd=tmp_path, env={"LINKVAULT_KEYS": keys}, stdin=_lines(grant),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Imported 1 connection(s)." in result.stdout
    _assert_no_token(result.stdout + result.stderr, grant)
    async with await open_store(postgres_url) as store:
        (conn,) = await store.find_by_user_id(UUID(grant["user_id"]))
    assert conn.status is ConnectionStatus.ACTIVE


_NO_UUID = '{"user_id": "x", "provider": "schwab", "access_token": "at-IMPORTCANARY-1"}'
_CUT_SHORT = '{"access_token": "at-IMPORTCANARY-2", "provider": '
_NO_ACCESS_TOKEN = {"user_id": str(uuid4()), "provider": "schwab", "refresh_token": "IMPORTCANARY"}


@pytest.mark.parametrize(
    ("second_line", "needle"),
    [
        (json.dumps(_grant("nope")), "line 2: unknown provider 'nope'"),
        (_NO_UUID, "line 2: user_id is not a UUID"),
        (_CUT_SHORT, "line 2: not a JSON object"),
        (json.dumps({**_grant(), "pw": "IMPORTCANARY"}), "line 2: unknown field(s) 'pw'"),
        (json.dumps(_grant(expires_at="tomorrow")), "line 2: expires_at must be an ISO 8601"),
        (json.dumps(_NO_ACCESS_TOKEN), "line 2: access_token must be a non-empty string"),
    ],
)
async def test_one_bad_grant_imports_nothing_and_says_which_line_without_its_tokens(
    tmp_path: Path, keys: str, second_line: str, needle: str
) -> None:
    good = _grant()
    url = f"sqlite:///{tmp_path}/lv.db"
    assert run_cli("migrate", "-d", url, cwd=tmp_path).returncode == 0

    result = run_cli(
        "connections", "import", "-", "-d", url,
        cwd=tmp_path, env={"LINKVAULT_KEYS": keys}, stdin=_lines(good) + second_line + "\n",
    )  # fmt: skip

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    _assert_no_token(result.stdout + result.stderr, good)
    async with await open_store(url) as store:
        assert await store.list_connections() == []


def test_import_takes_no_token_on_the_command_line(tmp_path: Path) -> None:
    result = run_cli("connections", "import", "--help", cwd=tmp_path)

    assert result.returncode == 0
    assert "or - for stdin" in result.stdout
    assert "token" not in result.stdout.split("Options:")[1].lower()
