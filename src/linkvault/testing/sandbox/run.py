"""Running a sandbox: in a thread of the test process, in its own process, or in the
foreground (`python -m linkvault.testing.sandbox`), and the provider that points at it."""

from __future__ import annotations

import argparse
import dataclasses
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from linkvault.providers import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    ClientCredentials,
    Provider,
    TokenEndpointAuth,
    builtin_providers_text,
    parse_providers,
)
from linkvault.serving import Server, bind_loopback, socket_url
from linkvault.testing.sandbox.admin import SandboxAdmin
from linkvault.testing.sandbox.config import SandboxClient, SandboxConfig, SandboxSettings
from linkvault.testing.sandbox.server import Sandbox

READY_PREFIX = "LINKVAULT_SANDBOX_URL="


def sandbox_provider(
    base_url: str,
    *,
    client_id: str = SANDBOX_CLIENT_ID,
    client_secret: str | None = SANDBOX_CLIENT_SECRET,
    token_endpoint_auth: TokenEndpointAuth = TokenEndpointAuth.CLIENT_SECRET_BASIC,
) -> Provider:
    """The built-in `sandbox` provider, pointed at `base_url` with these client credentials."""
    builtin = next(p for p in parse_providers(builtin_providers_text()) if p.slug == "sandbox")
    return dataclasses.replace(
        builtin,
        base_url=base_url,
        token_endpoint_auth=token_endpoint_auth,
        client=ClientCredentials(client_id, client_secret),
    )


@dataclass(frozen=True, slots=True)
class RunningSandbox:
    """A sandbox serving on `url`, with its in-process `sandbox` for direct control."""

    url: str
    sandbox: Sandbox

    def provider(
        self,
        *,
        client_id: str = SANDBOX_CLIENT_ID,
        client_secret: str | None = SANDBOX_CLIENT_SECRET,
        token_endpoint_auth: TokenEndpointAuth = TokenEndpointAuth.CLIENT_SECRET_BASIC,
    ) -> Provider:
        """The `sandbox` provider pointed at this server."""
        return sandbox_provider(
            self.url,
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth=token_endpoint_auth,
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point the registry's `sandbox` provider here."""
        return {
            "LINKVAULT_PROVIDER_SANDBOX_BASE_URL": self.url,
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": SANDBOX_CLIENT_ID,
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
        }


def _server(
    sandbox: Sandbox, log_level: str, access_log: bool, on_started: Callable[[], None]
) -> Server:
    config = uvicorn.Config(
        sandbox.app,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=5,
        backlog=2048,
    )
    return Server(config, on_started)


def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    config: SandboxConfig | None = None,
    sandbox: Sandbox | None = None,
    log_level: str = "warning",
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the sandbox until SIGINT/SIGTERM; `on_ready` gets the base URL once it listens.

    One process, one event loop: the sandbox keeps its state in memory.
    """
    sandbox = sandbox or Sandbox(config)
    sock = bind_loopback(host, port)
    url = socket_url(sock)
    server = _server(sandbox, log_level, access_log, lambda: on_ready(url) if on_ready else None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def sandbox_in_thread(
    config: SandboxConfig | None = None,
    *,
    sandbox: Sandbox | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
) -> Iterator[RunningSandbox]:
    """Serve a sandbox on a free loopback port in a background thread; stopped on exit."""
    sandbox = sandbox or Sandbox(config)
    sock = bind_loopback(host, 0)
    started = threading.Event()
    server = _server(sandbox, "warning", False, started.set)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="linkvault-sandbox", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not started.wait(0.05):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
        yield RunningSandbox(socket_url(sock), sandbox)
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()


@contextmanager
def sandbox_in_subprocess(*args: str, startup_timeout: float = 20.0) -> Iterator[SandboxAdmin]:
    """Serve a sandbox in its own Python process on a free loopback port; stopped on exit.

    `args` are `python -m linkvault.testing.sandbox` options (for example `--no-rotation`).
    """
    command = [sys.executable, "-m", "linkvault.testing.sandbox", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        url = _read_ready_line(process, startup_timeout)
        with SandboxAdmin(url) as admin:
            yield admin
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _read_ready_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line.startswith(READY_PREFIX):
        raise RuntimeError(f"the sandbox process did not start (exit code {process.poll()})")
    return line.removeprefix(READY_PREFIX).strip()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m linkvault.testing.sandbox`: serve a sandbox, printing its URL once it listens."""
    parser = argparse.ArgumentParser(prog="python -m linkvault.testing.sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--access-token-ttl", type=float, default=1800.0)
    parser.add_argument("--refresh-token-ttl", type=float, default=None)
    parser.add_argument("--no-rotation", action="store_true")
    parser.add_argument("--client-id", default=SANDBOX_CLIENT_ID)
    parser.add_argument("--client-secret", default=SANDBOX_CLIENT_SECRET)
    parser.add_argument("--access-log", action="store_true")
    options = parser.parse_args(argv)
    settings = SandboxSettings(
        access_token_ttl=options.access_token_ttl,
        refresh_token_ttl=options.refresh_token_ttl,
        rotate_refresh_tokens=not options.no_rotation,
    )
    config = SandboxConfig(
        clients=(SandboxClient(options.client_id, options.client_secret),), settings=settings
    )

    def announce(url: str) -> None:
        print(f"{READY_PREFIX}{url}", flush=True)

    serve_sandbox(
        options.host,
        options.port,
        config=config,
        access_log=options.access_log,
        on_ready=announce,
    )
