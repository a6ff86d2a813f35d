"""A real webhook receiver on loopback that verifies every signature, and what the tests share."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.providers import load_registry
from linkvault.services.webhooks import DeliveryPolicy, WebhookDispatcher, WebhookService
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock, RunningSandbox, SandboxSettings, sandbox_in_thread
from tests.refreshing import Bench, WatchedTokenClient


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: str
    body: dict[str, Any]
    verified: bool
    answered: int
    cookie: str | None = None

    @property
    def connection_id(self) -> str:
        return str(self.body["data"]["connection_id"])

    @property
    def sequence(self) -> int:
        return int(self.body["data"]["sequence"])


class Receiver:
    """An HTTP server on 127.0.0.1 recording each request, verifying it with the
    standardwebhooks library, and answering the statuses queued in `answers` (then 204).

    `stop()` closes the port (a receiver that is down); `start()` opens the same port again.
    """

    def __init__(self) -> None:
        self.secret: str | None = None
        self.received: list[Received] = []
        self.answers: list[int] = []
        self.delay = 0.0  # seconds each request is held before its answer
        self.set_cookie: str | None = None  # a Set-Cookie header each answer carries
        self.lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = True
                try:
                    assert receiver.secret is not None
                    Webhook(receiver.secret).verify(raw, headers)
                except Exception:
                    verified = False
                with receiver.lock:
                    status = receiver.answers.pop(0) if receiver.answers else 204
                    if not verified:
                        status = 400
                    receiver.received.append(
                        Received(
                            headers.get("webhook-id", ""),
                            headers.get("webhook-timestamp", ""),
                            json.loads(raw),
                            verified,
                            status,
                            headers.get("cookie"),
                        )
                    )
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", "/elsewhere")
                if receiver.set_cookie:
                    self.send_header("set-cookie", receiver.set_cookie)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx, in the order they arrived."""
        with self.lock:
            return [r for r in self.received if 200 <= r.answered < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def cipher() -> AesGcmCipher:
    return AesGcmCipher(KeyRing([Key.generate("k1")]))


@pytest.fixture
def service(store: ConnectionStore, cipher: AesGcmCipher, clock: FakeClock) -> WebhookService:
    return WebhookService(store, cipher, clock=clock, allow_http_loopback=True)


POLICY = DeliveryPolicy(timeout=2.0, connect_timeout=1.0, lease=timedelta(seconds=30))


@pytest.fixture
async def dispatcher(
    store: ConnectionStore, cipher: AesGcmCipher, clock: FakeClock
) -> AsyncIterator[WebhookDispatcher]:
    d = WebhookDispatcher(
        store, cipher, policy=POLICY, clock=clock, rng=random.Random(3), owner="dispatcher-1"
    )
    yield d
    await d.aclose()


@pytest.fixture(scope="module")
def module_sandbox() -> Iterator[RunningSandbox]:
    with sandbox_in_thread() as running:
        yield running


@pytest.fixture
async def bench(
    store: ConnectionStore, module_sandbox: RunningSandbox, clock: FakeClock, cipher: AesGcmCipher
) -> AsyncIterator[Bench]:
    module_sandbox.sandbox.reset(counters=True, faults=True, grants=True)
    module_sandbox.sandbox.settings.update(SandboxSettings().as_dict())
    registry = load_registry(env=module_sandbox.env())
    async with WatchedTokenClient() as tokens:
        yield Bench(store, registry, cipher, module_sandbox, clock, tokens)
