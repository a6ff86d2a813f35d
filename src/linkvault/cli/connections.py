"""`linkvault connections`: list, show, events, disconnect, delete and import connections.

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
from linkvault.cli.events import print_events
from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.errors import InvalidTransitionError, UnknownProviderError
from linkvault.services.connections import ConnectionPage, ConnectionService
from linkvault.services.events import EventPage, EventService
from linkvault.services.health import HealthReport
from linkvault.stores import ConnectionStore

T = TypeVar("T")

connections_app = group("Inspect, import and manage connections.")


async def with_connections(
    database_url: str | None, work: Callable[[ConnectionService], Awaitable[T]]
) -> T:
    """Run `work` on the connection service of a database that exists and is migrated."""

    configured = settings()
    attempts = configured.refresh_max_attempts
    # The providers say when a consent ends by rule (shown as consent_expires_at).
    providers = registry(configured)

    async def on_store(store: ConnectionStore) -> T:
        return await work(ConnectionService(store, registry=providers, max_attempts=attempts))

    return await with_existing_store(database_url, on_store)


def connection_json(c: ProviderConnection, h: HealthReport) -> dict[str, Any]:
    """The public fields of a connection and its health; credentials are described only."""
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
        "health": h.health.value,
        "needs_user_action": h.needs_user_action,
        "needs_user_action_reason": h.needs_user_action_reason,
        "refresh_failures": h.refresh_failures,
        "next_refresh_at": h.next_refresh_at.isoformat() if h.next_refresh_at else None,
        "last_refresh_error": h.last_refresh_error,
        "consent_expires_at": h.consent_expires_at.isoformat() if h.consent_expires_at else None,
    }


def print_connections(page: ConnectionPage, as_json: bool) -> None:
    rows, health = page.items, page.health
    if as_json:
        print_json([connection_json(c, health[c.id]) for c in rows])
        return
    if not rows:
        say("No connections.")
        return
    # Ids are never cut (they are copied into other commands): id and user share a column.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_lines=True)
    table.add_column("id\nuser", no_wrap=True, min_width=36)
    table.add_column("provider\nalias", overflow="fold", max_width=24)
    table.add_column("status\nexpires (UTC)\nhealth", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    for c in rows:
        h = health[c.id]
        expires = c.credentials.expires_at if c.credentials else None
        when = expires.strftime("%Y-%m-%d %H:%M") if expires else ""
        table.add_row(
            f"{c.id}\n{c.user_id}",
            markup_safe(f"{c.provider_slug}\n{c.alias or ''}"),
            f"{c.status.value}\n{when}\n{h.health.value}",
            markup_safe(_reason(c, h)),
        )
    out.print(table)


def _reason(c: ProviderConnection, h: HealthReport) -> str:
    """The status reason, or why the user must act, and the last refresh error if any."""
    lines = [h.needs_user_action_reason or c.status_reason or ""]
    if h.last_refresh_error and h.last_refresh_error not in lines[0]:
        lines.append(f"last refresh ({h.refresh_failures} failed): {h.last_refresh_error}")
    return "\n".join(lines)


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
    needs_user_action: Annotated[
        bool,
        typer.Option(
            "--needs-user-action",
            help="Only those only their user can fix: expired, revoked, failed, or out of "
            "refresh attempts.",
        ),
    ] = False,
    limit: Annotated[
        int, typer.Option(help="At most this many.", min=1, max=1000, metavar="N")
    ] = 100,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """List connections with their health, filtered by user, provider, status or expiry."""
    provider_id = None if provider is None else _provider_id(provider)

    async def work(connections: ConnectionService) -> ConnectionPage:
        return await connections.list(
            user_id=user,
            provider_id=provider_id,
            status=status,
            expiring_within=expiring_within,
            needs_user_action=True if needs_user_action else None,
            limit=limit,
        )

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
    """Show one connection and its health."""
    found, health = _find(database_url, connection_id)
    fields = connection_json(found, health)
    if as_json:
        print_json(fields)
        return
    table = Table("field", "value", show_header=False, box=box.SIMPLE, pad_edge=False)
    for key, value in fields.items():
        table.add_row(key, "" if value is None else markup_safe(str(value)))
    out.print(table)


def _find(database_url: str | None, connection_id: UUID) -> tuple[ProviderConnection, HealthReport]:
    async def work(connections: ConnectionService) -> tuple[ProviderConnection, HealthReport]:
        conn = await connections.get(connection_id)
        return conn, await connections.health(conn)

    return run(with_connections(database_url, work))


@connections_app.command("events")
def connections_events(
    connection_id: ConnectionIdArgument,
    after: Annotated[
        int, typer.Option(help="Only events after this sequence number.", min=0, metavar="N")
    ] = 0,
    limit: Annotated[
        int, typer.Option(help="At most this many.", min=1, max=1000, metavar="N")
    ] = 100,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what happened to a connection, in order (a deleted one's events too)."""

    async def on_store(store: ConnectionStore) -> EventPage:
        return await EventService(store).connection_events(connection_id, after=after, limit=limit)

    page = run(with_existing_store(database_url, on_store))
    following = None if page.next_after is None else str(page.next_after)
    if as_json:
        print_json({"data": [e.payload() for e in page.events], "next_cursor": following})
        return
    print_events(page.events, with_connection=False)
    if following is not None:
        say(f"More: --after {following}")


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
    _find(database_url, connection_id)  # an unknown id fails before the question
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
