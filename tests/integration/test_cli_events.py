"""`linkvault connections list/show/events` and `linkvault events`: health and the event log."""

from __future__ import annotations

import asyncio
import json
import re
import selectors
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from linkvault.domain import CredentialType, ProviderConnection, ProviderCredentials
from linkvault.stores import open_store
from linkvault.stores.common import ClaimResult
from tests.support import LINKVAULT, clean_env, run_cli

SCHWAB = UUID("4260d0e7-ea6e-4625-9003-c05ef76b88eb")
PLANTED_REASON = "[bold]b\x1b[31mred\x1b[0m\x9b2J\u202eevil[/bold][/]"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
LEASE = timedelta(minutes=1)


def connection(**fields: Any) -> ProviderConnection:
    return ProviderConnection(user_id=uuid4(), provider_id=SCHWAB, provider_slug="schwab", **fields)


def active() -> ProviderConnection:
    conn = connection()
    expires = datetime.now(UTC) + timedelta(hours=1)
    conn.mark_connected(ProviderCredentials(b"sealed", CredentialType.OAUTH2, expires))
    return conn


async def saved(url: str, *conns: ProviderConnection) -> None:
    async with await open_store(url) as store:
        for conn in conns:
            await store.save(conn)


async def failed_refreshes(url: str, conn: ProviderConnection, error: str, times: int) -> None:
    async with await open_store(url) as store:
        for _ in range(times):
            assert await store.claim_connection(conn.id, "test", lease=LEASE) is not None
            await store.finish_claim(conn.id, "test", ClaimResult(succeeded=False, error=error))


def cli_json(*args: str, cwd: Path) -> Any:
    result = run_cli(*args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/lv.db"


async def test_list_and_show_give_each_connection_s_health(tmp_path: Path, db_url: str) -> None:
    broken, flaky, fine = active(), active(), active()
    expired = connection()
    expired.mark_failed("access was denied at the provider: start again to retry")
    await saved(db_url, broken, flaky, fine, expired)
    await failed_refreshes(db_url, broken, "decrypt_failed: no key k0 in the key ring", 1)
    await failed_refreshes(db_url, flaky, "unavailable: HTTP 503", 2)

    listed = cli_json("connections", "list", "-d", db_url, cwd=tmp_path)
    shown = cli_json("connections", "show", str(broken.id), "-d", db_url, cwd=tmp_path)
    table = run_cli("connections", "list", "-d", db_url, cwd=tmp_path)

    health = {c["id"]: (c["health"], c["refresh_failures"]) for c in listed}
    assert health == {
        str(broken.id): ("needs_attention", 1),
        str(flaky.id): ("retrying", 2),
        str(fine.id): ("ok", 0),
        str(expired.id): ("needs_user_action", 0),
    }
    assert shown["last_refresh_error"] == "decrypt_failed: no key k0 in the key ring"
    assert shown["needs_user_action"] is False
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert {"needs_attention", "retrying", "needs_user_action"} <= set(table.stdout.split())
    assert "decrypt_failed:nokeyk0" in re.sub(r"\s", "", table.stdout)


async def test_needs_user_action_lists_only_what_only_the_user_can_fix(
    tmp_path: Path, db_url: str
) -> None:
    revoked, fine, stuck = connection(), active(), active()
    revoked.mark_failed("the provider revoked the grant")
    await saved(db_url, revoked, fine, stuck)
    await failed_refreshes(db_url, stuck, "client_rejected: invalid_client", 8)

    listed = cli_json(
        "connections", "list", "--needs-user-action", "--limit", "1", "-d", db_url, cwd=tmp_path
    )
    both = cli_json("connections", "list", "--needs-user-action", "-d", db_url, cwd=tmp_path)

    assert len(listed) == 1
    assert {c["id"] for c in both} == {str(revoked.id), str(stuck.id)}
    reasons = {c["id"]: c["needs_user_action_reason"] for c in both}
    assert reasons[str(revoked.id)] == "the provider revoked the grant"
    assert "failed 8 times in a row" in reasons[str(stuck.id)]


async def test_connection_events_show_its_history_after_a_sequence_even_once_deleted(
    tmp_path: Path, db_url: str
) -> None:
    conn = connection()
    conn.mark_failed(PLANTED_REASON)
    await saved(db_url, conn)
    async with await open_store(db_url) as store:
        await store.delete(conn.id)

    everything = cli_json("connections", "events", str(conn.id), "-d", db_url, cwd=tmp_path)
    after = cli_json(
        "connections", "events", str(conn.id), "--after", "1", "-d", db_url, cwd=tmp_path
    )
    table = run_cli("connections", "events", str(conn.id), "-d", db_url, cwd=tmp_path)

    assert [e["type"] for e in everything["data"]] == [
        "connection.created",
        "connection.failed",
        "connection.deleted",
    ]
    assert everything["next_cursor"] is None
    assert [e["data"]["sequence"] for e in after["data"]] == [2, 3]
    assert table.returncode == 0, table.stderr
    assert CONTROL.search(table.stdout.replace("\n", "")) is None, repr(table.stdout)
    # Markup is shown as text (the escape sequences lost their ESC when the event was made).
    assert "[bold]b[31mred[0m2Jevil[/bold][/]" in re.sub(r"\s", "", table.stdout)
    assert "connection.deleted" in table.stdout


async def test_connection_events_refuse_an_unknown_id_or_a_bad_sequence_in_one_line(
    tmp_path: Path, db_url: str
) -> None:
    await saved(db_url)
    missing = uuid4()

    unknown = run_cli("connections", "events", str(missing), "-d", db_url, cwd=tmp_path)
    negative = run_cli(
        "connections", "events", str(missing), "--after", "-1", "-d", db_url, cwd=tmp_path
    )

    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        f"linkvault: error: connection {missing} not found"
    ]
    assert negative.returncode == 2
    assert len(negative.stderr.strip().splitlines()) == 1
    assert unknown.stdout == negative.stdout == ""


async def test_events_reads_the_log_from_a_cursor_and_refuses_a_malformed_one(
    tmp_path: Path, db_url: str
) -> None:
    first, second = connection(), connection()
    await saved(db_url, first)
    start = cli_json("events", "-d", db_url, cwd=tmp_path)
    await saved(db_url, second)

    news = cli_json("events", "--after", start["next_cursor"], "-d", db_url, cwd=tmp_path)
    idle = cli_json("events", "--after", news["next_cursor"], "-d", db_url, cwd=tmp_path)
    bad = run_cli("events", "--after", "1.2.3", "-d", db_url, cwd=tmp_path)

    assert {e["data"]["connection_id"] for e in start["data"]} == {str(first.id)}
    assert {e["data"]["connection_id"] for e in news["data"]} == {str(second.id)}
    assert idle == {"data": [], "next_cursor": news["next_cursor"]}
    assert bad.returncode != 0
    assert bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "linkvault: error: an events cursor is two numbers joined by a dot, e.g. 0.0"
    ]


def read_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), "no output from linkvault events --follow"
    return proc.stdout.readline()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_follow_prints_new_events_as_they_come_and_stops_cleanly_on_a_signal(
    tmp_path: Path, db_url: str, stop: signal.Signals
) -> None:
    first, second = connection(), connection()
    asyncio.run(saved(db_url, first))
    proc = subprocess.Popen(
        [LINKVAULT, "events", "--follow", "--json", "--interval", "0.05", "-d", db_url],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        before = json.loads(read_line(proc))
        asyncio.run(saved(db_url, second))
        after = json.loads(read_line(proc))
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert {e["data"]["connection_id"] for e in before["data"]} == {str(first.id)}
    assert {e["data"]["connection_id"] for e in after["data"]} == {str(second.id)}
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
