"""`linkvault connections`: list, show, disconnect, delete and import connections.

Reading and changing go through the same connection service as the HTTP API.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from uuid import UUID

import typer
from rich import box
from rich.table import Table

from linkvault.cli.common import (
    CliError,
    DatabaseOption,
    JsonOption,
    group,
    markup_safe,
    out,
    print_json,
    registry,
    run,
    say,
    settings,
    with_existing_store,
)
from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.errors import InvalidTransitionError, UnknownProviderError
from linkvault.services.connections import ConnectionService
from linkvault.stores import ConnectionStore

T = TypeVar("T")

connections_app = group("Inspect, import and manage connections.")


async def with_connections(
    database_url: str | None, work: Callable[[ConnectionService], Awaitable[T]]
) -> T:
    """Run `work` on the connection service of a database that exists and is migrated."""

    async def on_store(store: ConnectionStore) -> T:
        return await work(ConnectionService(store))

    return await with_existing_store(database_url, on_store)


def connection_json(c: ProviderConnection) -> dict[str, Any]:
    """The public fields of a connection; credentials are described, never included."""
    creds = c.credentials
    return {
        "id": str(c.id),
        "user_id": str(c.user_id),
        "provider_id": str(c.provider_id),
        "provider_slug": c.provider_slug,
        "alias": c.alias,
        "status": c.status.value,
        "status_reason": c.status_reason,
        "credential_type": creds.credential_type.value if creds else None,
        "expires_at": creds.expires_at.isoformat() if creds and creds.expires_at else None,
        "connected_at": c.connected_at.isoformat() if c.connected_at else None,
        "last_sync_at": c.last_sync_at.isoformat() if c.last_sync_at else None,
        "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
        "version": c.version,
    }


def print_connections(rows: list[ProviderConnection], as_json: bool) -> None:
    if as_json:
        print_json([connection_json(c) for c in rows])
        return
    if not rows:
        say("No connections.")
        return
    # Ids are never cut (they are copied into other commands): id and user share a column.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_lines=True)
    table.add_column("id\nuser", no_wrap=True, min_width=36)
    table.add_column("provider\nalias", overflow="fold", max_width=24)
    table.add_column("status\nexpires (UTC)", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    for c in rows:
        expires = c.credentials.expires_at if c.credentials else None
        table.add_row(
            f"{c.id}\n{c.user_id}",
            markup_safe(f"{c.provider_slug}\n{c.alias or ''}"),
            f"{c.status.value}\n{expires.strftime('%Y-%m-%d %H:%M') if expires else ''}",
            markup_safe(c.status_reason or ""),
        )
    out.print(table)


@connections_app.command("list")
def connections_list(
    user: Annotated[UUID | None, typer.Option(help="Only this user's connections.")] = None,
    provider: Annotated[
        str | None, typer.Option(help="Only this provider's: its slug or its id.", metavar="SLUG")
    ] = None,
    status: Annotated[ConnectionStatus | None, typer.Option(help="Only this status.")] = None,
    expiring_within: Annotated[
        int | None,
        typer.Option(help="Only active ones expiring within N minutes.", min=0, metavar="N"),
    ] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many.", min=1, max=1000, metavar="N")
    ] = 100,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """List connections, filtered by user, provider, status or expiry."""
    provider_id = None if provider is None else _provider_id(provider)

    async def work(connections: ConnectionService) -> list[ProviderConnection]:
        page = await connections.list(
            user_id=user,
            provider_id=provider_id,
            status=status,
            expiring_within=expiring_within,
            limit=limit,
        )
        return page.items

    print_connections(run(with_connections(database_url, work)), as_json)


def _provider_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        pass
    known = registry(settings())
    try:
        return known.get(value).id
    except UnknownProviderError:
        raise CliError(
            f"unknown provider {value!r} (known: {', '.join(known.slugs)})", code=2
        ) from None


ConnectionIdArgument = Annotated[UUID, typer.Argument(help="The connection's id.", metavar="ID")]


@connections_app.command("show")
def connections_show(
    connection_id: ConnectionIdArgument,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one connection."""
    found = _find(database_url, connection_id)
    if as_json:
        print_json(connection_json(found))
        return
    table = Table("field", "value", show_header=False, box=box.SIMPLE, pad_edge=False)
    for key, value in connection_json(found).items():
        table.add_row(key, "" if value is None else markup_safe(str(value)))
    out.print(table)


def _find(database_url: str | None, connection_id: UUID) -> ProviderConnection:
    async def work(connections: ConnectionService) -> ProviderConnection:
        return await connections.get(connection_id)

    return run(with_connections(database_url, work))


@connections_app.command("disconnect")
def connections_disconnect(
    connection_id: ConnectionIdArgument, database_url: DatabaseOption = None
) -> None:
    """Disconnect a connection (soft: kept for the record, credentials dropped)."""

    async def work(connections: ConnectionService) -> None:
        try:
            await connections.disconnect(connection_id)
        except InvalidTransitionError as exc:
            if exc.current != ConnectionStatus.DISCONNECTED.value:
                raise
            raise CliError(f"connection {connection_id} is already disconnected") from None

    run(with_connections(database_url, work))
    say(f"Disconnected {connection_id}.")


@connections_app.command("delete")
def connections_delete(
    connection_id: ConnectionIdArgument,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Delete a connection for good."""
    _find(database_url, connection_id)
    if not yes and not typer.confirm(f"Delete {connection_id} permanently?"):
        raise typer.Exit(1)

    async def work(connections: ConnectionService) -> None:
        await connections.delete(connection_id)

    run(with_connections(database_url, work))
    say(f"Deleted {connection_id}.")


@connections_app.command("import")
def connections_import(
    source: Annotated[
        str,
        typer.Argument(
            help="A file of grants, one JSON object per line, or - for stdin.", metavar="FILE"
        ),
    ],
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import existing OAuth2 grants as active connections, all or none.

    Each line: {"user_id", "provider", "access_token", and optionally "refresh_token",
    "token_type", "scope", "expires_at" (ISO 8601 with offset), "alias"}.
    """
    from linkvault.imports import import_grants, parse_grants
    from linkvault.runtime import Runtime

    grants = parse_grants(_read_grants(source).splitlines())
    if not grants:
        raise CliError(f"{'stdin' if source == '-' else source} holds no grants")
    overrides = {"database_url": database_url} if database_url else {}
    current = settings().model_copy(update=overrides)

    async def work() -> list[ProviderConnection]:
        async with await Runtime.open(current) as runtime:
            return await import_grants(
                runtime.store, runtime.registry, runtime.cipher, grants, clock=runtime.clock
            )

    created = run(work())
    pairs = list(zip(grants, created, strict=True))
    if as_json:
        print_json(
            [
                {"line": g.line, "id": str(c.id), "user_id": str(c.user_id), "provider": g.provider}
                for g, c in pairs
            ]
        )
        return
    say(f"Imported {len(pairs)} connection(s).")
    table = Table("line", "id", "user", "provider", box=box.SIMPLE_HEAD, pad_edge=False)
    for g, c in pairs:
        table.add_row(str(g.line), str(c.id), str(c.user_id), markup_safe(c.provider_slug))
    out.print(table)


def _read_grants(source: str) -> str:
    # Tokens come from a file or stdin only: argv is visible to every user of the machine.
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {Path(source).resolve()}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{Path(source).resolve()} is not UTF-8 text") from None
