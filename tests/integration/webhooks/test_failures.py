"""Whatever is not a 2xx is a failed attempt, recorded and retried: a redirect, a timeout, a
peer that answers garbage; the delivery goes through once the receiver answers 2xx."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from linkvault.services.webhooks import WebhookDispatcher, WebhookService
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock
from linkvault.testing.fleet import BlackHole
from linkvault.webhooks import DeliveryStatus
from tests.factories import feed_shows, make, saved
from tests.integration.webhooks.conftest import Receiver


class Garbage:
    """A loopback server that answers every connection with bytes that are not HTTP."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/hooks"

    def _serve(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with client:
                client.recv(65536)
                client.sendall(b"\x00\x01 certainly not HTTP\r\n\r\n")

    def __enter__(self) -> Garbage:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped = True
        self._listener.close()


@pytest.fixture
def garbage() -> Iterator[Garbage]:
    with Garbage() as g:
        yield g


async def one_attempt(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    url: str,
    receiver: Receiver | None = None,
) -> tuple[int | None, str | None, DeliveryStatus]:
    created = await service.register(url)
    if receiver is not None:
        receiver.secret = created.secret
    conn = await saved(store, make(FakeClock(created.endpoint.created_at)))
    await feed_shows(store, conn.id)
    await dispatcher.fan_out()
    assert await dispatcher.deliver_due() == 1
    [record] = await service.deliveries(created.endpoint.id)
    [attempt] = record.attempts
    return attempt.status_code, attempt.error, record.delivery.status


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    receiver: Receiver,
) -> None:
    receiver.answers = [307]
    code, error, status = await one_attempt(store, service, dispatcher, receiver.url, receiver)
    assert (code, error, status) == (307, "HTTP 307", DeliveryStatus.PENDING)
    assert len(receiver.received) == 1


async def test_a_receiver_that_never_answers_is_a_timed_out_attempt(
    store: ConnectionStore, service: WebhookService, dispatcher: WebhookDispatcher
) -> None:
    with BlackHole() as hole:
        code, error, status = await one_attempt(store, service, dispatcher, hole.url + "/x")
        assert hole.bytes_read > 0
    assert code is None
    assert error is not None
    assert "timed out" in error
    assert status is DeliveryStatus.PENDING


async def test_garbage_instead_of_http_is_a_failed_attempt(
    store: ConnectionStore,
    service: WebhookService,
    dispatcher: WebhookDispatcher,
    garbage: Garbage,
) -> None:
    code, error, status = await one_attempt(store, service, dispatcher, garbage.url)
    assert code is None
    assert error is not None
    assert "Protocol" in error or "Error" in error
    assert status is DeliveryStatus.PENDING
