"""The API served from a background thread on a loopback port, for tests and demos."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import uvicorn

from linkvault.access import ApiKeySet
from linkvault.api.app import create_app, server_config
from linkvault.domain import Clock, utc_now
from linkvault.runtime import Runtime
from linkvault.serving import Server, bind_loopback, socket_url
from linkvault.settings import Settings

__all__ = ["RunningApi", "api_in_thread"]


@dataclasses.dataclass(frozen=True, slots=True)
class RunningApi:
    """An API served from a background thread at `url`."""

    url: str


@contextmanager
def api_in_thread(
    settings: Settings,
    access: ApiKeySet,
    *,
    env: Mapping[str, str] | None = None,
    run_worker: bool = False,
    sock: socket.socket | None = None,
    startup_timeout: float = 30.0,
    clock: Clock = utc_now,
) -> Iterator[RunningApi]:
    """Open a runtime and serve the API on a loopback port in a thread; all closed on exit.

    The runtime is opened on the thread's own event loop, where the server runs.
    """
    sock = sock or bind_loopback()
    started = threading.Event()
    failure: list[BaseException] = []
    servers: list[uvicorn.Server] = []

    async def main() -> None:
        runtime = await Runtime.open(settings, env=env, clock=clock)
        try:
            app = create_app(runtime, access, run_worker=run_worker)
            server = Server(server_config(app, "127.0.0.1", 0, "warning"), started.set)
            servers.append(server)
            await server.serve(sockets=[sock])
        finally:
            await runtime.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="linkvault-api", daemon=True)
    thread.start()
    try:
        if not started.wait(startup_timeout) or failure or not servers or not servers[0].started:
            raise RuntimeError("the API server did not start") from (
                failure[0] if failure else None
            )
        yield RunningApi(socket_url(sock))
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()
