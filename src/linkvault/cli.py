"""The `linkvault` command line."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import typer
from rich import box
from rich.table import Table
from typer.exceptions import TyperException

from linkvault import __version__
from linkvault.cli_common import (
    CliError,
    DatabaseOption,
    JsonOption,
    existing_database,
    group,
    markup_safe,
    out,
    print_json,
    say,
    warn,
)
from linkvault.cli_keys import keys_app
from linkvault.domain import ConnectionStatus, ProviderConnection, utc_now
from linkvault.errors import LinkvaultError, UnknownProviderError
from linkvault.providers import ProviderRegistry
from linkvault.settings import Settings, environment, load_settings, source_of
from linkvault.stores import ConnectionStore, open_store, redact_url
from linkvault.stores.common import ConnectionFilter

T = TypeVar("T")

app = typer.Typer(
    name="linkvault",
    help="Keep your users' connections to external data providers.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
connections_app = group("Inspect, import and manage connections.")
providers_app = group("The providers linkvault knows.")
app.add_typer(connections_app, name="connections")
app.add_typer(providers_app, name="providers")
app.add_typer(keys_app, name="keys")


def _print_version(value: bool) -> None:
    if value:
        say(f"linkvault {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Keep your users' connections to external data providers."""


def settings() -> Settings:
    return load_settings()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def registry(current: Settings) -> ProviderRegistry:
    """The providers as `serve` sees them: the API reports the same."""
    from linkvault.runtime import provider_registry

    return provider_registry(current, environment())


async def with_existing_store(
    database_url: str | None, work: Callable[[ConnectionStore], Awaitable[T]]
) -> T:
    """Run `work` on a database that exists and is migrated; never creates or migrates one."""
    current = settings()
    url = database_url or current.database_url
    source = "--database-url" if database_url else source_of(current, "database_url")
    store = await open_store(existing_database(url, source), migrate=False)
    try:
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


@app.command()
def migrate(database_url: DatabaseOption = None) -> None:
    """Apply pending schema migrations (safe to run concurrently and repeatedly)."""
    url = database_url or settings().database_url

    async def work() -> list[int]:
        store = await open_store(url, migrate=False)
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = run(work())
    target = redact_url(url)
    if applied:
        say(f"Applied migrations {', '.join(map(str, applied))} to {target}.")
    else:
        say(f"{target} is up to date.")


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
    expiring_before = (
        None if expiring_within is None else utc_now() + timedelta(minutes=expiring_within)
    )
    provider_id = None if provider is None else _provider_id(provider)
    where = ConnectionFilter(user, provider_id, status, expiring_before)

    async def work(store: ConnectionStore) -> list[ProviderConnection]:
        return await store.list_connections(where, limit=limit)

    print_connections(run(with_existing_store(database_url, work)), as_json)


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
    async def work(store: ConnectionStore) -> ProviderConnection | None:
        return await store.find_by_id(connection_id)

    found = run(with_existing_store(database_url, work))
    if found is None:
        raise CliError(f"connection {connection_id} not found")
    return found


@connections_app.command("disconnect")
def connections_disconnect(
    connection_id: ConnectionIdArgument, database_url: DatabaseOption = None
) -> None:
    """Disconnect a connection (soft: kept for the record, credentials dropped)."""

    async def work(store: ConnectionStore) -> None:
        found = await store.find_by_id(connection_id)
        if found is None:
            raise CliError(f"connection {connection_id} not found")
        if found.status is ConnectionStatus.DISCONNECTED:
            raise CliError(f"connection {connection_id} is already disconnected")
        found.mark_disconnected()
        await store.save(found)

    run(with_existing_store(database_url, work))
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

    async def work(store: ConnectionStore) -> None:
        await store.delete(connection_id)

    run(with_existing_store(database_url, work))
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


@providers_app.command("list")
def providers_list(as_json: JsonOption = False) -> None:
    """List the providers of the registry (built in, plus LINKVAULT_PROVIDERS_FILE)."""
    rows = [
        {
            "slug": p.slug,
            "id": str(p.id),
            "display_name": p.display_name,
            "auth_style": p.auth_style.value,
            "refreshes": p.refreshes,
            "rotates_refresh_tokens": p.rotates_refresh_tokens,
            "configured": p.configured,
        }
        for p in registry(settings())
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("slug", "configured", "auth", "name", "id", box=box.SIMPLE_HEAD, pad_edge=False)
    table.columns[1].min_width = 10
    table.columns[4].no_wrap = True
    for r in rows:
        table.add_row(
            markup_safe(str(r["slug"])),
            "yes" if r["configured"] else "no",
            str(r["auth_style"]),
            markup_safe(str(r["display_name"])),
            str(r["id"]),
        )
    out.print(table)
    if not all(r["configured"] for r in rows):
        say(
            "A provider that is not configured needs its client: "
            "LINKVAULT_PROVIDER_<SLUG>_CLIENT_ID and _CLIENT_SECRET."
        )


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
            warn(
                f"linkvault worker: refreshed {m.refreshed}, other outcomes "
                f"{m.failed_by_class() or 'none'}"
            )
        finally:
            await runtime.close()

    run(main_loop())


@app.command()
def serve(
    database_url: DatabaseOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: LINKVAULT_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on (default: LINKVAULT_PORT).", min=0, max=65535),
    ] = None,
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
    sock = listen(current.host, current.port, "LINKVAULT_PORT or --port")

    async def main_loop() -> None:
        access = access_from_settings(current, announce=warn)
        runtime = await Runtime.open(current)
        try:
            base = f"http://{current.host}:{sock.getsockname()[1]}"
            warn(
                f"linkvault: serving {redact_url(current.database_url)} — API {base}/v1, "
                f"docs {base}/docs, health {base}/v1/health"
                + ("" if no_worker else "; refresh worker running")
            )
            await serve_api(
                runtime,
                access,
                host=current.host,
                port=current.port,
                run_worker=not no_worker,
                log_level=current.log_level.lower(),
                sockets=[sock],
            )
        finally:
            await runtime.close()

    try:
        run(main_loop())
    finally:
        sock.close()


def listen(host: str, port: int, how_to_move: str) -> Any:
    """A listening socket, or one line saying why there is none."""
    from linkvault.serving import bind_loopback

    try:
        return bind_loopback(host, port)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another with "
            f"{how_to_move}"
        ) from None


@app.command()
def sandbox(
    host: Annotated[
        str | None, typer.Option(help="Loopback address (default: where serve looks for it).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port (default: where serve looks for it).", min=0, max=65535),
    ] = None,
    access_token_ttl: Annotated[float, typer.Option(min=1, metavar="SECONDS")] = 1800.0,
    no_rotation: Annotated[
        bool, typer.Option("--no-rotation", help="Keep refresh tokens on refresh.")
    ] = False,
) -> None:
    """Run the sandbox OAuth2 provider (for demos and tests; loopback only).

    It listens where `serve` looks for it: the sandbox provider's base URL, which
    LINKVAULT_PROVIDER_SANDBOX_BASE_URL moves for both.
    """
    from linkvault.providers import SANDBOX_CLIENT_ID
    from linkvault.testing import sandbox as sb

    expected = registry(settings()).get("sandbox").base_url or ""
    parts = urlsplit(expected)
    listen_host = host or parts.hostname or "127.0.0.1"
    listen_port = parts.port or 80 if port is None else port
    config = sb.SandboxConfig(
        settings=sb.SandboxSettings(
            access_token_ttl=access_token_ttl, rotate_refresh_tokens=not no_rotation
        )
    )

    def ready(url: str) -> None:
        warn(
            f"linkvault sandbox: listening at {url} (client id {SANDBOX_CLIENT_ID}); "
            "stop with Ctrl-C"
        )
        if url.rstrip("/") != expected.rstrip("/"):
            warn(
                f"linkvault sandbox: serve looks for the sandbox at {expected}: start serve "
                f"with LINKVAULT_PROVIDER_SANDBOX_BASE_URL={url}"
            )

    try:
        sb.serve_sandbox(listen_host, listen_port, config=config, on_ready=ready)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {listen_host}:{listen_port}: {exc.strerror or exc}; move the "
            "sandbox for serve and sandbox alike with LINKVAULT_PROVIDER_SANDBOX_BASE_URL"
        ) from None


def configure_logging(level: str) -> None:
    """Plain key=value lines on stderr; a deployment may install its own handlers instead."""
    import logging

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: one line on stderr and a non-zero exit for every error, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    if not args:
        args = ["--help"]
    try:
        result = command.main(args=args, prog_name="linkvault", standalone_mode=False)
    except typer.Abort:
        warn("linkvault: aborted")
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        warn(f"linkvault: error: {message}")
        return int(getattr(exc, "exit_code", 2))
    except LinkvaultError as exc:
        warn(f"linkvault: error: {exc}")
        return exc.code if isinstance(exc, CliError) else 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
