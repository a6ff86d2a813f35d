"""`linkvault webhooks`: add, list and remove endpoints; list and replay their deliveries.

They go through the same webhook service as the HTTP API. The secret is printed once, by add.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

import typer

from linkvault.cli.common import (
    DatabaseOption,
    JsonOption,
    group,
    print_json,
    run,
    say,
    settings,
    with_existing_store,
)
from linkvault.crypto import AesGcmCipher, keyring_from_settings
from linkvault.ports import Cipher
from linkvault.services.webhooks import WebhookService
from linkvault.settings import is_embedded
from linkvault.stores import ConnectionStore
from linkvault.webhooks import Delivery, DeliveryAttempt, WebhookEndpoint

T = TypeVar("T")

webhooks_app = group("Manage webhook endpoints and their deliveries.")


class _NoKeys:
    """Commands that seal nothing run without reading (or creating) a key ring."""

    def seal(self, plaintext: bytes, *, connection_id: UUID) -> bytes:
        raise AssertionError("this command seals nothing")

    def open(self, blob: bytes, *, connection_id: UUID) -> bytes:
        raise AssertionError("this command opens nothing")


async def with_webhooks(
    database_url: str | None,
    work: Callable[[WebhookService], Awaitable[T]],
    *,
    keys: bool = False,
) -> T:
    current = settings()

    async def on_store(store: ConnectionStore) -> T:
        cipher: Cipher = _NoKeys()
        if keys:
            ring = keyring_from_settings(
                current.keys.get_secret_value() if current.keys else None,
                current.key_file,
                embedded=is_embedded(database_url or current.database_url),
                active=current.active_key_id,
            )
            cipher = AesGcmCipher(ring)
        service = WebhookService(
            store, cipher, allow_http_loopback=current.webhook_allow_http_loopback
        )
        return await work(service)

    return await with_existing_store(database_url, on_store)


def endpoint_json(e: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": str(e.id),
        "url": e.url,
        "events": sorted(e.event_types),
        "enabled": e.enabled,
        "disabled_reason": e.disabled_reason,
        "created_at": e.created_at.isoformat(),
        "updated_at": e.updated_at.isoformat(),
    }


def delivery_json(d: Delivery, attempts: tuple[DeliveryAttempt, ...]) -> dict[str, Any]:
    return {
        "id": str(d.id),
        "event_id": str(d.event_id),
        "event_type": d.event_type,
        "connection_id": str(d.connection_id),
        "sequence": d.sequence,
        "status": d.status.value,
        "failed_attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
        "attempts": [
            {
                "attempted_at": a.attempted_at.isoformat(),
                "status_code": a.status_code,
                "error": a.error,
            }
            for a in attempts
        ],
    }


EventOption = Annotated[
    list[str] | None,
    typer.Option("--event", "-e", help="An event type to send (repeat; none: every event)."),
]


@webhooks_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="https URL to POST events to.")],
    event: EventOption = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add an endpoint and print its signing secret (shown this once only)."""
    created = run(with_webhooks(database_url, lambda s: s.register(url, event or ()), keys=True))
    if as_json:
        print_json({**endpoint_json(created.endpoint), "secret": created.secret})
        return
    say(f"Webhook {created.endpoint.id} added for {created.endpoint.url}")
    say(f"secret: {created.secret}  (shown once: keep it to verify signatures)")


@webhooks_app.command("list")
def list_endpoints(database_url: DatabaseOption = None, as_json: JsonOption = False) -> None:
    """List endpoints (their secrets are never shown again)."""
    rows = run(with_webhooks(database_url, lambda s: s.list_endpoints()))
    if as_json:
        print_json([endpoint_json(e) for e in rows])
        return
    if not rows:
        say("No webhooks.")
    for e in rows:
        state = "enabled" if e.enabled else f"disabled: {e.disabled_reason}"
        events = ",".join(sorted(e.event_types)) or "all events"
        say(f"{e.id}  {e.url}  {events}  {state}")


@webhooks_app.command("remove")
def remove(
    webhook_id: Annotated[UUID, typer.Argument(help="The endpoint's id.")],
    database_url: DatabaseOption = None,
) -> None:
    """Remove an endpoint and its deliveries."""
    run(with_webhooks(database_url, lambda s: s.remove(webhook_id)))
    say(f"Webhook {webhook_id} removed.")


@webhooks_app.command("deliveries")
def deliveries(
    webhook_id: Annotated[UUID, typer.Argument(help="The endpoint's id.")],
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """An endpoint's deliveries, newest first, with their attempts."""
    records = run(with_webhooks(database_url, lambda s: s.deliveries(webhook_id, limit=limit)))
    if as_json:
        print_json([delivery_json(r.delivery, r.attempts) for r in records])
        return
    if not records:
        say("No deliveries.")
    for r in records:
        d = r.delivery
        last = d.last_error or (str(d.last_status_code) if d.last_status_code else "")
        say(f"{d.id}  {d.event_type}  #{d.sequence}  {d.status.value}  {len(r.attempts)}  {last}")


@webhooks_app.command("replay")
def replay(
    webhook_id: Annotated[UUID, typer.Argument(help="The endpoint's id.")],
    delivery_id: Annotated[UUID, typer.Argument(help="The delivery's id.")],
    database_url: DatabaseOption = None,
) -> None:
    """Send a delivery again (same webhook-id), now; enables a disabled endpoint."""
    run(with_webhooks(database_url, lambda s: s.replay(webhook_id, delivery_id)))
    say(f"Delivery {delivery_id} is due again.")
