"""The `linkvault` command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any, TypeVar
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

from linkvault.cli_keys import keys_app
from linkvault.domain import ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import LinkvaultError
from linkvault.settings import Settings, load_settings
from linkvault.stores import ConnectionStore, open_store, redact_url
from linkvault.stores.common import ConnectionFilter

T = TypeVar("T")

app = typer.Typer(
    name="linkvault",
    help="Keep your users' connections to external data providers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
connections_app = typer.Typer(help="Inspect and manage connections.", no_args_is_help=True)
app.add_typer(connections_app, name="connections")
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True, soft_wrap=True)

DatabaseOption = Annotated[
    str | None,
    typer.Option("--database-url", "-d", help="Database URL (default: LINKVAULT_DATABASE_URL)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def settings() -> Settings:
    return load_settings()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def with_store(
    database_url: str | None,
    work: Callable[[ConnectionStore], Awaitable[T]],
    *,
    migrate: bool = False,
    check_schema: bool = True,
) -> T:
    url = database_url or settings().database_url
    store = await open_store(url, migrate=migrate)
    try:
        if check_schema and not migrate:
            await store.check_schema()
        return await work(store)
    finally:
        await store.close()


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
        out.print_json(json.dumps([connection_json(c) for c in rows]))
        return
    if not rows:
        out.print("No connections.")
        return
    table = Table("id", "user", "provider", "alias", "status", "expires", "updated")
    for c in rows:
        expires = c.credentials.expires_at if c.credentials else None
        table.add_row(
            str(c.id),
            str(c.user_id),
            c.provider_slug,
            c.alias or "",
            c.status.value,
            expires.strftime("%Y-%m-%d %H:%M") if expires else "",
            c.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@app.command()
def migrate(database_url: DatabaseOption = None) -> None:
    """Apply pending schema migrations (safe to run concurrently and repeatedly)."""
    url = database_url or settings().database_url

    async def work(store: ConnectionStore) -> list[int]:
        return await store.migrate()

    applied = run(with_store(url, work, check_schema=False))
    target = redact_url(url)
    if applied:
        out.print(f"Applied migrations {', '.join(map(str, applied))} to {target}.")
    else:
        out.print(f"{target} is up to date.")


@connections_app.command("list")
def connections_list(
    user: Annotated[UUID | None, typer.Option(help="Only this user's connections.")] = None,
    provider: Annotated[UUID | None, typer.Option(help="Only this provider's (its id).")] = None,
    status: Annotated[ConnectionStatus | None, typer.Option(help="Only this status.")] = None,
    expiring_within: Annotated[
        int | None, typer.Option(help="Only active ones expiring within N minutes.", min=0)
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=1000)] = 100,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """List connections, filtered by user, provider, status or expiry."""
    expiring_before = (
        None if expiring_within is None else utc_now() + timedelta(minutes=expiring_within)
    )
    where = ConnectionFilter(user, provider, status, expiring_before)

    async def work(store: ConnectionStore) -> list[ProviderConnection]:
        return await store.list_connections(where, limit=limit)

    print_connections(run(with_store(database_url, work, migrate=_embedded(database_url))), as_json)


@connections_app.command("show")
def connections_show(
    connection_id: Annotated[UUID, typer.Argument(help="The connection's id.")],
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one connection."""

    async def work(store: ConnectionStore) -> ProviderConnection | None:
        return await store.find_by_id(connection_id)

    found = run(with_store(database_url, work))
    if found is None:
        fail(f"connection {connection_id} not found")
    assert found is not None
    if as_json:
        out.print_json(json.dumps(connection_json(found)))
        return
    table = Table("field", "value", show_header=False)
    for key, value in connection_json(found).items():
        table.add_row(key, "" if value is None else str(value))
    out.print(table)


@connections_app.command("disconnect")
def connections_disconnect(
    connection_id: Annotated[UUID, typer.Argument(help="The connection's id.")],
    database_url: DatabaseOption = None,
) -> None:
    """Disconnect a connection (soft: kept for the record, credentials dropped)."""

    async def work(store: ConnectionStore) -> None:
        found = await store.find_by_id(connection_id)
        if found is None:
            fail(f"connection {connection_id} not found")
        assert found is not None
        found.mark_disconnected()
        await store.save(found)

    run(with_store(database_url, work))
    out.print(f"Disconnected {connection_id}.")


@connections_app.command("delete")
def connections_delete(
    connection_id: Annotated[UUID, typer.Argument(help="The connection's id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    database_url: DatabaseOption = None,
) -> None:
    """Delete a connection for good."""
    if not yes and not typer.confirm(f"Delete {connection_id} permanently?"):
        raise typer.Exit(1)

    async def work(store: ConnectionStore) -> None:
        await store.delete(connection_id)

    run(with_store(database_url, work))
    out.print(f"Deleted {connection_id}.")


providers_app = typer.Typer(help="The providers linkvault knows.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")


@providers_app.command("list")
def providers_list(as_json: JsonOption = False) -> None:
    """List the providers of the registry (built in, plus LINKVAULT_PROVIDERS_FILE)."""
    from linkvault.providers import load_registry

    current = settings()
    registry = load_registry(current.providers_file, env=os.environ)
    rows = [
        {
            "slug": p.slug,
            "id": str(p.id),
            "display_name": p.display_name,
            "auth_style": p.auth_style.value,
            "refreshes": p.refreshes,
            "rotates_refresh_tokens": p.rotates_refresh_tokens,
            "client_configured": p.client is not None,
        }
        for p in registry
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("slug", "name", "auth", "refreshes", "rotates", "client", "id")
    for r in rows:
        table.add_row(
            str(r["slug"]),
            str(r["display_name"]),
            str(r["auth_style"]),
            "yes" if r["refreshes"] else "no",
            "yes" if r["rotates_refresh_tokens"] else "no",
            "configured" if r["client_configured"] else "missing",
            str(r["id"]),
        )
    out.print(table)


@app.command()
def worker(
    database_url: DatabaseOption = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once nothing is due.")
    ] = False,
    concurrency: Annotated[int | None, typer.Option(min=1, max=1000)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=1000)] = None,
    lease_seconds: Annotated[int | None, typer.Option(min=1, max=3600)] = None,
    horizon_minutes: Annotated[int | None, typer.Option(min=0, max=1440)] = None,
    idle_poll: Annotated[float | None, typer.Option(min=0.01, max=600)] = None,
) -> None:
    """Run the refresh worker until SIGTERM/SIGINT (in-flight refreshes finish first)."""
    import dataclasses
    from datetime import timedelta as td

    from linkvault.runtime import Runtime

    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    current = settings().model_copy(update=overrides)
    configure_logging(current.log_level)

    async def main_loop() -> None:
        runtime = await Runtime.open(current)
        try:
            w = runtime.worker
            changes: dict[str, Any] = {}
            if concurrency is not None:
                changes["concurrency"] = concurrency
            if batch_size is not None:
                changes["batch_size"] = batch_size
            if lease_seconds is not None:
                changes["lease"] = td(seconds=lease_seconds)
            if horizon_minutes is not None:
                changes["horizon"] = td(minutes=horizon_minutes)
            if idle_poll is not None:
                changes["idle_poll"] = idle_poll
            w.policy = dataclasses.replace(w.policy, **changes)
            w.policy.check()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await w.run(stop, until_idle=until_idle)
            m = w.metrics
            err.print(
                f"linkvault worker: refreshed {m.refreshed}, other outcomes "
                f"{m.failed_by_class() or 'none'}",
                markup=False,
                highlight=False,
            )
        finally:
            await runtime.close()

    run(main_loop())


@app.command()
def serve(
    database_url: DatabaseOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.", min=0, max=65535)] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve the API without the refresh worker.")
    ] = False,
) -> None:
    """Serve the HTTP API and the refresh worker (SQLite ./linkvault.db unless configured)."""
    from linkvault.access import access_from_settings
    from linkvault.api import serve as serve_api
    from linkvault.runtime import Runtime

    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    current = settings().model_copy(update=overrides)
    configure_logging(current.log_level)

    def announce(message: str) -> None:
        err.print(message, markup=False, highlight=False)

    async def main_loop() -> None:
        access = access_from_settings(current, announce=announce)
        runtime = await Runtime.open(current)
        try:
            base = f"http://{current.host}:{current.port}"
            err.print(
                f"linkvault: serving {redact_url(current.database_url)} — API {base}/v1, "
                f"docs {base}/docs, health {base}/v1/health"
                + ("" if no_worker else "; refresh worker running"),
                markup=False,
                highlight=False,
            )
            await serve_api(
                runtime,
                access,
                host=current.host,
                port=current.port,
                run_worker=not no_worker,
                log_level=current.log_level.lower(),
            )
        finally:
            await runtime.close()

    run(main_loop())


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8765,
    access_token_ttl: Annotated[float, typer.Option(min=1)] = 1800.0,
    no_rotation: Annotated[
        bool, typer.Option("--no-rotation", help="Keep refresh tokens on refresh.")
    ] = False,
) -> None:
    """Run the sandbox OAuth2 provider (for demos and tests; loopback only)."""
    from linkvault import sandbox as sb

    config = sb.SandboxConfig(
        settings=sb.SandboxSettings(
            access_token_ttl=access_token_ttl, rotate_refresh_tokens=not no_rotation
        )
    )

    def ready(url: str) -> None:
        err.print(
            f"linkvault sandbox: listening at {url} (client id {sb.DEFAULT_CLIENT_ID}); "
            "stop with Ctrl-C",
            markup=False,
            highlight=False,
        )

    sb.serve_sandbox(host, port, config=config, on_ready=ready)


def configure_logging(level: str) -> None:
    """Plain key=value lines on stderr; a deployment may install its own handlers instead."""
    import logging

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _embedded(database_url: str | None) -> bool:
    url = database_url or settings().database_url
    return url.startswith("sqlite:")


def fail(message: str, code: int = 1) -> None:
    raise CliError(message, code)


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: one line on stderr and a non-zero exit for every error, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    if not args:
        args = ["--help"]
    try:
        result = command.main(args=args, prog_name="linkvault", standalone_mode=False)
    except typer.Abort:
        err.print("linkvault: aborted")
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"linkvault: error: {message}", markup=False, highlight=False)
        return int(getattr(exc, "exit_code", 2))
    except CliError as exc:
        err.print(f"linkvault: error: {exc}", markup=False, highlight=False)
        return exc.code
    except LinkvaultError as exc:
        err.print(f"linkvault: error: {exc}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
