"""`linkvault keys`: generate, list, rotate and retire encryption keys.

Errors are LinkvaultErrors, which cli.main prints as one line; a command that finishes but
leaves work undone prints its own line on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from linkvault.cli.common import (
    CliError,
    DatabaseOption,
    JsonOption,
    err,
    existing_database,
    group,
    markup_safe,
    out,
    print_json,
    say,
    warn,
)
from linkvault.crypto import (
    DEFAULT_KEY_FILE,
    AesGcmCipher,
    KeyRing,
    generate_key,
    keyring_from_settings,
    remove_key_from_file,
)
from linkvault.services.rotation import (
    RotationReport,
    count_outside_ring,
    key_usage,
    retire,
    rotate,
)
from linkvault.settings import Settings, is_embedded, load_settings, source_of
from linkvault.stores import ConnectionStore, open_store

T = TypeVar("T")

keys_app = group("Manage encryption keys: generate, list, rotate to the active key, retire.")


@dataclass(frozen=True)
class KeySource:
    """The ring the settings describe, and where its keys are kept."""

    ring: KeyRing
    settings: Settings
    database_url: str
    key_file: Path | None

    @property
    def describe(self) -> str:
        return "LINKVAULT_KEYS" if self.key_file is None else f"key file {self.key_file}"


def load_keys(database_url: str | None) -> KeySource:
    """The key ring as runtime.py builds it, for a database and a key file that both exist."""
    settings = load_settings()
    url = database_url or settings.database_url
    source = "--database-url" if database_url else source_of(settings, "database_url")
    existing_database(url, source)
    keys = settings.keys.get_secret_value() if settings.keys else None
    key_file = None if keys else (settings.key_file or DEFAULT_KEY_FILE)
    if key_file is not None and not key_file.exists():
        raise CliError(
            f"no key file at {key_file.resolve()} (from {source_of(settings, 'key_file')}) "
            "and LINKVAULT_KEYS is not set: point LINKVAULT_KEY_FILE at the key file "
            "`linkvault serve` created"
        )
    ring = keyring_from_settings(
        keys, settings.key_file, embedded=is_embedded(url), active=settings.active_key_id
    )
    return KeySource(ring, settings, url, key_file)


async def _with_store(url: str, work: Callable[[ConnectionStore], Awaitable[T]]) -> T:
    store = await open_store(url, migrate=False)
    try:
        await store.check_schema()
        return await work(store)
    finally:
        await store.close()


def _run(url: str, work: Callable[[ConnectionStore], Awaitable[T]]) -> T:
    return asyncio.run(_with_store(url, work))


def _incomplete(message: str) -> None:
    warn(f"linkvault: error: {message}")
    raise typer.Exit(1)


@keys_app.command("generate")
def keys_generate(
    key_id: Annotated[
        str | None, typer.Option("--id", help="The new key's id (default: date and random).")
    ] = None,
) -> None:
    """Print a new key entry (id:base64url); nothing else goes to stdout."""
    entry = generate_key(key_id)
    sys.stdout.write(entry + "\n")
    sys.stdout.flush()
    warn(
        "Put this line first in your key file (the first key is active) or first in "
        "LINKVAULT_KEYS, restart linkvault, then run `linkvault keys rotate`.",
    )


@keys_app.command("create-api-key")
def keys_create_api_key(
    name: Annotated[str, typer.Argument(help="A name for the key, shown in audit logs.")],
    scopes: Annotated[
        str,
        typer.Option(
            help="Comma-separated scopes: read, write, credentials, token, proxy, or all."
        ),
    ] = "read,write",
) -> None:
    """Print a new API key once, and the hashed entry to configure for it."""
    from linkvault.access import generate_api_key, parse_scopes

    chosen = parse_scopes(scopes.replace(",", "+"), "--scopes")
    plaintext, entry = generate_api_key(name, chosen)
    sys.stdout.write(plaintext + "\n")
    sys.stdout.flush()
    warn(
        f"Give the key above to the client; it is shown only now. Add this entry to "
        f"LINKVAULT_API_KEYS (comma separated) or to LINKVAULT_API_KEY_FILE: {entry.spec}",
    )


@keys_app.command("list")
def keys_list(database_url: DatabaseOption = None, as_json: JsonOption = False) -> None:
    """List the keys of the ring, which one is active, and how many connections use each."""
    source = load_keys(database_url)
    ring = source.ring

    async def work(store: ConnectionStore) -> tuple[dict[str, int], int]:
        return await key_usage(store, ring), await count_outside_ring(store, ring)

    usage, outside = _run(source.database_url, work)
    if as_json:
        document: dict[str, Any] = {
            "source": source.describe,
            "active": ring.active_id,
            "keys": [
                {"id": key_id, "active": key_id == ring.active_id, "connections": count}
                for key_id, count in usage.items()
            ],
            "connections_under_unknown_keys": outside,
        }
        print_json(document)
    else:
        table = Table(
            "key id", "active", "connections", title=markup_safe(f"Keys from {source.describe}")
        )
        for key_id, count in usage.items():
            table.add_row(
                markup_safe(key_id), "yes" if key_id == ring.active_id else "", f"{count:,}"
            )
        if outside:
            table.add_row("(not in the ring)", "", f"{outside:,}")
        out.print(table)
    if outside:
        warn(
            f"warning: {outside} connection(s) are sealed under keys the ring does not hold; "
            "they cannot be decrypted until those keys are added back",
        )


@keys_app.command("rotate")
def keys_rotate(
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Connections per batch.", min=1, max=1000)
    ] = 500,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-encrypt every connection's credentials under the active key, online and resumable."""
    source = load_keys(database_url)
    cipher = AesGcmCipher(source.ring)

    async def work(store: ConnectionStore) -> RotationReport:
        columns = (
            TextColumn(f"re-encrypting under key {source.ring.active_id!r}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("rotate", total=None)

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await rotate(store, cipher, batch_size=batch_size, on_progress=on_progress)

    report = _run(source.database_url, work)
    _print_report(report, as_json)
    if report.unreadable or report.outside_ring:
        by_key = ", ".join(
            f"{'no key id' if key_id is None else repr(key_id)}: {count}"
            for key_id, count in report.unreadable_by_key().items()
        )
        count = max(len(report.unreadable), report.outside_ring)
        _incomplete(
            f"{count} connection(s) hold credentials the ring cannot decrypt "
            f"({by_key or 'keys not in the ring'}); add the missing keys, or disconnect those "
            "connections, and run `linkvault keys rotate` again"
        )
    if not report.complete:
        left = len(report.busy) + sum(report.remaining.values())
        _incomplete(
            f"{left} connection(s) are still under old keys (busy refreshing or changed "
            "concurrently); run `linkvault keys rotate` again"
        )


def _print_report(report: RotationReport, as_json: bool) -> None:
    if as_json:
        document = {
            "active": report.active_key,
            "total": report.total,
            "rotated": report.rotated,
            "retried": report.retried,
            "skipped": report.skipped,
            "busy": [str(i) for i in report.busy],
            "unreadable": [
                {"connection_id": str(u.connection_id), "key_id": u.key_id, "reason": u.reason}
                for u in report.unreadable
            ],
            "remaining": dict(report.remaining),
            "connections_under_unknown_keys": report.outside_ring,
            "complete": report.complete,
        }
        print_json(document)
        return
    say(
        f"Re-encrypted {report.rotated:,} connection(s) under key {report.active_key!r} "
        f"({report.retried:,} retried after concurrent writes, {report.skipped:,} changed "
        "meanwhile and needed nothing).",
    )
    for key_id, count in report.remaining.items():
        hint = f" (retire it with `linkvault keys retire {key_id}`)" if count == 0 else ""
        say(f"Key {key_id!r}: {count:,} connection(s) left{hint}.")


@keys_app.command("retire")
def keys_retire(
    key_id: Annotated[str, typer.Argument(help="The id of the key to drop from the ring.")],
    database_url: DatabaseOption = None,
) -> None:
    """Drop a key no connection uses any more from the key file (or say what to remove)."""
    source = load_keys(database_url)

    async def work(store: ConnectionStore) -> KeyRing:
        return await retire(store, source.ring, key_id)

    _run(source.database_url, work)
    if source.key_file is None:
        say(
            f"No connection uses key {key_id!r} any more: remove the entry that starts with "
            f"`{key_id}:` from LINKVAULT_KEYS and restart linkvault.",
        )
        return
    remove_key_from_file(source.key_file, key_id, active=source.settings.active_key_id)
    say(f"Removed key {key_id!r} from key file {source.key_file}.")
