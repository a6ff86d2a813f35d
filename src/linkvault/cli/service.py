"""The long-running and database commands: migrate, worker, serve and sandbox."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from linkvault.cli.common import (
    CliError,
    DatabaseOption,
    configure_logging,
    registry,
    run,
    say,
    settings,
    warn,
)
from linkvault.stores import open_store, redact_url


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
    """Run the refresh worker and the webhook dispatcher until SIGTERM/SIGINT (in-flight
    refreshes and deliveries finish first)."""
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
            # The webhook dispatcher works beside the refresh loop, until the same stop.
            await asyncio.gather(
                w.run(stop, until_idle=until_idle),
                runtime.dispatcher.run(stop, until_idle=until_idle),
            )
            m = w.metrics
            warn(
                f"linkvault worker: refreshed {m.refreshed}, other outcomes "
                f"{m.failed_by_class() or 'none'}"
            )
        finally:
            await runtime.close()

    run(main_loop())


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
    """Serve the HTTP API, the refresh worker and the webhook dispatcher (SQLite ./linkvault.db
    unless configured)."""
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
                + ("" if no_worker else "; refresh worker and webhook dispatcher running")
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
