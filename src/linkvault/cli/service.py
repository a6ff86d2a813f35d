"""The long-running and database commands: migrate, worker, serve and sandbox."""

from __future__ import annotations

import asyncio
import signal
import socket
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
from linkvault.settings import Settings
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
    """Run the refresh worker and the webhook dispatcher, no HTTP (beside `linkvault api`).

    SIGTERM/SIGINT: stop claiming, hand back claims not started, and let in-flight refreshes
    and deliveries finish within LINKVAULT_SHUTDOWN_GRACE_SECONDS (then they are cut and
    their leases lapse to another worker); exit 0. Any number of workers may run at once.
    """
    import dataclasses
    from datetime import timedelta as td

    from linkvault.runtime import Runtime
    from linkvault.serving import finish_within

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
            runs = {
                asyncio.create_task(w.run(stop, until_idle=until_idle), name="refresh worker"),
                asyncio.create_task(
                    runtime.dispatcher.run(stop, until_idle=until_idle), name="webhook dispatcher"
                ),
            }
            signalled: asyncio.Task[Any] = asyncio.create_task(stop.wait())
            pending: set[asyncio.Task[Any]] = set(runs)
            try:
                while pending and not stop.is_set():
                    done, pending = await asyncio.wait(
                        pending | {signalled}, return_when=asyncio.FIRST_COMPLETED
                    )
                    pending.discard(signalled)
                    if any(t.exception() for t in done if t is not signalled):
                        stop.set()  # one failed: the other stops too, and the failure is told
            finally:
                signalled.cancel()
            # Stopped: in-flight work finishes within the grace; cut after it.
            await finish_within(runs, current.shutdown_grace_seconds)
            m = w.metrics
            warn(
                f"linkvault worker: refreshed {m.refreshed}, other outcomes "
                f"{m.failed_by_class() or 'none'}"
            )
        finally:
            await runtime.close()

    run(main_loop())


HostOption = Annotated[
    str | None, typer.Option(help="Address to listen on (default: LINKVAULT_HOST).")
]
PortOption = Annotated[
    int | None,
    typer.Option(help="Port to listen on (default: LINKVAULT_PORT).", min=0, max=65535),
]


def serve(
    database_url: DatabaseOption = None,
    host: HostOption = None,
    port: PortOption = None,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker", help="Serve the API without the refresh worker (as `linkvault api`)."
        ),
    ] = False,
) -> None:
    """Serve the HTTP API, the refresh worker and the webhook dispatcher in one process
    (SQLite ./linkvault.db unless configured): the all-in-one, embedded default.

    SIGTERM/SIGINT: stop accepting, let in-flight requests and refreshes finish within
    LINKVAULT_SHUTDOWN_GRACE_SECONDS, exit 0.
    """
    current = _serving_settings(database_url, host, port)
    sock = listen(current.host, current.port, "LINKVAULT_PORT or --port")
    try:
        run(_serve_http(current, sock, run_worker=not no_worker, prefix="linkvault"))
    finally:
        sock.close()


def api(
    database_url: DatabaseOption = None,
    host: HostOption = None,
    port: PortOption = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Processes serving the one port, each with its own database pool "
            "(on SQLite they share the file: WAL lets several processes read and write it).",
        ),
    ] = 1,
    socket_fd: Annotated[int | None, typer.Option("--socket-fd", hidden=True)] = None,
    parent_fd: Annotated[int | None, typer.Option("--parent-fd", hidden=True)] = None,
) -> None:
    """Serve the HTTP API only: no refresh worker or webhook dispatcher, run `linkvault worker`
    beside it (as many of each as you like).

    Orchestrators probe /v1/health/live (the process answers) and /v1/health/ready (the
    database answers and its schema is current; 503 while shutting down). SIGTERM/SIGINT:
    stop accepting, let in-flight requests finish within LINKVAULT_SHUTDOWN_GRACE_SECONDS,
    exit 0.
    """
    current = _serving_settings(database_url, host, port)
    if socket_fd is not None:
        # A child of `--workers N`: the parent bound the socket and checked the settings.
        sock = socket.socket(fileno=socket_fd)
        try:
            run(_serve_http(current, sock, run_worker=False, parent_fd=parent_fd))
        finally:
            sock.close()
        return
    sock = listen(current.host, current.port, "LINKVAULT_PORT or --port")
    try:
        if workers == 1:
            run(_serve_http(current, sock, run_worker=False, prefix="linkvault api"))
            return
        raise typer.Exit(_supervise(current, sock, workers))
    finally:
        sock.close()


def _serving_settings(database_url: str | None, host: str | None, port: int | None) -> Settings:
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    current = settings().model_copy(update=overrides)
    configure_logging(current.log_level)
    return current


def _supervise(current: Settings, sock: socket.socket, workers: int) -> int:
    """`api --workers N`: check the settings once here, then N children serve `sock`."""
    import os
    import sys

    from linkvault.access import access_from_settings
    from linkvault.runtime import Runtime
    from linkvault.serving import socket_url
    from linkvault.supervisor import Supervisor

    async def preflight() -> None:
        access_from_settings(current, announce=warn)
        runtime = await Runtime.open(current)  # migrates an embedded database, checks schema
        await runtime.close()

    run(preflight())
    base = socket_url(sock)
    env = {
        **os.environ,
        "LINKVAULT_DATABASE_URL": current.database_url,
        "LINKVAULT_HOST": current.host,
        "LINKVAULT_PORT": str(sock.getsockname()[1]),
    }
    warn(
        f"linkvault api: serving {redact_url(current.database_url)} from {workers} processes — "
        f"API {base}/v1, docs {base}/docs, health {base}/v1/health/live and "
        f"{base}/v1/health/ready; no refresh worker here: run `linkvault worker` beside it"
    )
    supervisor = Supervisor(
        [sys.executable, "-m", "linkvault.cli", "api"],
        sock,
        workers,
        env=env,
        grace=current.shutdown_grace_seconds,
        say=warn,
    )
    return supervisor.run()


async def _serve_http(
    current: Settings,
    sock: socket.socket,
    *,
    run_worker: bool,
    prefix: str | None = None,
    parent_fd: int | None = None,
) -> None:
    """Serve the API on `sock` until SIGTERM/SIGINT (or, for a child, its parent's end)."""
    import os

    from linkvault.access import access_from_settings
    from linkvault.api import serve as serve_api
    from linkvault.runtime import Runtime
    from linkvault.serving import Server, socket_url

    access = access_from_settings(current, announce=warn)
    runtime = await Runtime.open(current)
    loop = asyncio.get_running_loop()
    try:
        base = socket_url(sock)
        if prefix is not None:
            warn(
                f"{prefix}: serving {redact_url(current.database_url)} — API {base}/v1, "
                f"docs {base}/docs, health {base}/v1/health/live and {base}/v1/health/ready"
                + (
                    "; refresh worker and webhook dispatcher running"
                    if run_worker
                    else "; no refresh worker here: run `linkvault worker` beside it"
                )
            )

        def watch_parent(server: Server) -> None:
            if parent_fd is None:
                return

            def parent_gone() -> None:
                if not os.read(parent_fd, 1):  # end of file: the parent is gone
                    loop.remove_reader(parent_fd)
                    server.drain()

            loop.add_reader(parent_fd, parent_gone)

        def started() -> None:
            if parent_fd is not None:
                warn(f"linkvault api: process {os.getpid()} serving {base}")

        await serve_api(
            runtime,
            access,
            host=current.host,
            port=current.port,
            run_worker=run_worker,
            log_level=current.log_level.lower(),
            sockets=[sock],
            on_started=started,
            on_server=watch_parent,
        )
    finally:
        if parent_fd is not None:
            loop.remove_reader(parent_fd)
        await runtime.close()


def listen(host: str, port: int, how_to_move: str) -> socket.socket:
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
