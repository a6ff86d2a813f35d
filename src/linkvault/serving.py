"""Serving ASGI apps on loopback sockets with uvicorn: the API and the sandbox share this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn

log = logging.getLogger("linkvault")


def bind_loopback(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket for `serve(sockets=...)`; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Without TCP_NODELAY, Nagle plus delayed ACKs cost 40 ms per keep-alive response.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def socket_url(sock: socket.socket) -> str:
    """The http:// base URL a bound socket serves."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server, telling `on_started` when it listens and `on_exit` (on its loop) when
    a signal starts the graceful stop; a signal stop just returns.

    On SIGTERM or SIGINT it stops accepting at once, lets in-flight requests finish for up to
    the config's `timeout_graceful_shutdown` seconds, cancels what is left, then runs the
    lifespan's shutdown.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_started: Callable[[], None] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first and self._on_exit is not None and self._loop is not None:
            # A signal handler may run in the middle of the loop's own work: hand over.
            self._loop.call_soon_threadsafe(self._on_exit)

    def drain(self) -> None:
        """Start the graceful stop, as SIGTERM does."""
        self.handle_exit(signal.SIGTERM, None)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a caught SIGTERM after its graceful stop, which would kill the
        # process before the caller closes the runtime; here the stop just returns.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def finish_within(tasks: set[asyncio.Task[None]], seconds: float) -> None:
    """Wait up to `seconds` for `tasks` to end, then cancel the rest and wait for them."""
    _, pending = await asyncio.wait(tasks, timeout=max(seconds, 0.01))
    if pending:
        log.warning(
            "shutdown grace exceeded: cancelling %s (%s)",
            ", ".join(sorted(t.get_name() for t in pending)),
            "in-flight work is cut; its leases lapse and another worker takes it up",
        )
    for t in pending:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
