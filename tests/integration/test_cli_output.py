"""What the command line prints: safe from planted markup, copyable, one line per error."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID, uuid4

import pytest
from pydantic import SecretStr

from linkvault.crypto import generate_key
from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.runtime import Runtime
from linkvault.settings import Settings
from linkvault.stores import open_store
from tests.support import free_port, run_cli

SCHWAB = "4260d0e7-ea6e-4625-9003-c05ef76b88eb"
SANDBOX = "4f5719b1-4747-40c7-a72e-d8da540f0541"

# Markup rich would interpret, an OSC-8 hyperlink, a colour, a C1 CSI and a bidi override.
PLANTED_ALIAS = "[/]x[link=https://evil.example]y\x1b]8;;https://evil.example\x1b\\z\x1b]8;;\x1b\\"
PLANTED_REASON = "[bold]b\x1b[31mred\x1b[0m\x9b2J\u202eevil[/bold][/]"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


async def _saved(url: str, *connections: ProviderConnection) -> None:
    async with await open_store(url) as store:
        for conn in connections:
            await store.save(conn)


def _connection(provider: str = "schwab", **fields: object) -> ProviderConnection:
    provider_id = SCHWAB if provider == "schwab" else SANDBOX
    return ProviderConnection(
        user_id=uuid4(),
        provider_id=UUID(provider_id),
        provider_slug=provider,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/lv.db"


async def test_planted_markup_and_escape_sequences_are_shown_as_inert_text(
    tmp_path: Path, db_url: str
) -> None:
    conn = _connection(alias=PLANTED_ALIAS)
    conn.mark_failed(PLANTED_REASON)
    await _saved(db_url, conn)

    wide = {"COLUMNS": "400"}
    listed = run_cli("connections", "list", "-d", db_url, cwd=tmp_path, env=wide)
    shown = run_cli("connections", "show", str(conn.id), "-d", db_url, cwd=tmp_path, env=wide)
    as_json = run_cli("connections", "show", str(conn.id), "-d", db_url, "--json", cwd=tmp_path)

    for result in (listed, shown, as_json):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert CONTROL.search(result.stdout.replace("\n", "")) is None, repr(result.stdout)
    assert "[/]x[link=https://evil.example]yz" in shown.stdout
    assert "[bold]bredevil[/bold][/]" in shown.stdout
    assert "[/]x[link=https://e" in listed.stdout
    assert "[bold]bredevil[/bold]" in listed.stdout
    assert json.loads(as_json.stdout)["alias"] == PLANTED_ALIAS


async def test_a_providers_file_cannot_plant_escape_sequences_in_the_providers_table(
    tmp_path: Path,
) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(
        "[[providers]]\n"
        'slug = "acme"\n'
        f'id = "{uuid4()}"\n'
        'display_name = "[link=https://evil.example]Acme\\u001b[2J\\u001b]8;;x\\u0007"\n'
        'auth_style = "api_key"\n'
    )

    env = {"LINKVAULT_PROVIDERS_FILE": str(providers), "COLUMNS": "400"}
    result = run_cli("providers", "list", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    assert "[link=https://evil.example]Acme" in result.stdout
    assert CONTROL.search(result.stdout.replace("\n", "")) is None


async def test_ids_are_printed_whole_at_80_columns_with_the_status_reason(
    tmp_path: Path, db_url: str
) -> None:
    conn = _connection(alias="Main account")
    conn.mark_failed("access was denied at the provider: start again to retry")
    await _saved(db_url, conn)

    result = run_cli("connections", "list", "-d", db_url, cwd=tmp_path, env={"COLUMNS": "80"})

    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert str(conn.id) in result.stdout
    assert str(conn.user_id) in result.stdout
    assert "…" not in result.stdout
    words = result.stdout.split()
    assert "reason" in words
    assert {"access", "denied", "retry"} <= set(words)


async def test_connections_list_takes_the_provider_slug_as_the_api_does(
    tmp_path: Path, db_url: str
) -> None:
    schwab, sandbox = _connection("schwab"), _connection("sandbox")
    await _saved(db_url, schwab, sandbox)

    by_slug = run_cli(
        "connections", "list", "--provider", "sandbox", "--json", "-d", db_url, cwd=tmp_path
    )
    by_id = run_cli(
        "connections", "list", "--provider", SANDBOX, "--json", "-d", db_url, cwd=tmp_path
    )
    unknown = run_cli("connections", "list", "--provider", "nope", "-d", db_url, cwd=tmp_path)

    assert [r["id"] for r in json.loads(by_slug.stdout)] == [str(sandbox.id)]
    assert [r["id"] for r in json.loads(by_id.stdout)] == [str(sandbox.id)]
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "linkvault: error: unknown provider 'nope' (known: schwab, sandbox)"
    ]


def test_a_bare_command_group_prints_its_help_and_no_error(tmp_path: Path) -> None:
    for group in ("connections", "providers", "keys"):
        result = run_cli(group, cwd=tmp_path)

        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.startswith(f"Usage: linkvault {group}")


def test_help_texts_show_no_bool_placeholder(tmp_path: Path) -> None:
    for args in (["--help"], ["connections", "list", "--help"], ["keys", "list", "--help"]):
        result = run_cli(*args, cwd=tmp_path)

        assert result.returncode == 0
        assert "<bool>" not in result.stdout
        assert "--help" in result.stdout


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    import linkvault

    result = run_cli("--version", cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout == f"linkvault {linkvault.__version__}\n"


async def test_delete_of_an_unknown_id_fails_before_asking_for_confirmation(
    tmp_path: Path, db_url: str
) -> None:
    await _saved(db_url)
    missing = uuid4()

    result = run_cli("connections", "delete", str(missing), "-d", db_url, cwd=tmp_path, stdin="y\n")

    assert result.returncode == 1
    assert "Delete" not in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"linkvault: error: connection {missing} not found"
    ]


async def test_disconnecting_twice_says_it_is_already_disconnected_and_changes_nothing(
    tmp_path: Path, db_url: str
) -> None:
    conn = _connection()
    await _saved(db_url, conn)
    first = run_cli("connections", "disconnect", str(conn.id), "-d", db_url, cwd=tmp_path)
    async with await open_store(db_url) as store:
        before = await store.find_by_id(conn.id)

    again = run_cli("connections", "disconnect", str(conn.id), "-d", db_url, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"linkvault: error: connection {conn.id} is already disconnected"
    ]
    async with await open_store(db_url) as store:
        after = await store.find_by_id(conn.id)
    assert before is not None
    assert after is not None
    assert after.status is ConnectionStatus.DISCONNECTED
    assert after.version == before.version


def test_serve_on_a_busy_port_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()

        result = run_cli("serve", "--port", str(port), cwd=tmp_path)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"linkvault: error: cannot listen on 127.0.0.1:{port}")
    assert "serving" not in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_a_callback_error_is_stored_as_a_known_code_never_as_the_text_sent(
    tmp_path: Path, db_url: str
) -> None:
    settings = Settings(database_url=db_url, keys=SecretStr(generate_key("k1")))
    planted = "[/]\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
    async with await Runtime.open(settings) as runtime:
        reasons = []
        for error in (planted, "access_denied"):
            started = await runtime.connect.start_oauth(
                user_id=uuid4(), provider_slug="sandbox", redirect_uri="http://127.0.0.1:9/cb"
            )
            state = dict(parse_qsl(urlsplit(started.authorize_url).query))["state"]
            result = await runtime.connect.complete_oauth(state=state, error=error)
            reasons.append(result.connection.status_reason)

    assert reasons == [
        "the provider answered with an unknown error: start again to retry",
        "access was denied at the provider: start again to retry",
    ]
    listed = run_cli("connections", "list", "-d", db_url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "evil" not in listed.stdout
