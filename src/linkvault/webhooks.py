"""Webhook signatures, endpoint addresses and the retry schedule (pure: no I/O).

Signatures follow the Standard Webhooks specification (standardwebhooks.com): the headers
`webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`), keyed by a secret written
`whsec_<base64>`. Receivers verify them with any Standard Webhooks library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit
from uuid import UUID

from linkvault.errors import InvalidArgumentError

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32

# The delay before each retry of a failed delivery: fast at first (a receiver restarting),
# then hourly, for a bit more than a day in all; after the last one the endpoint is disabled.
RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    *(timedelta(hours=1),) * 24,
)


def new_secret() -> str:
    """A fresh signing secret, in the `whsec_<base64>` form receivers expect."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_` secret holds."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidArgumentError("a webhook secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        raise InvalidArgumentError("a webhook secret is 'whsec_' and base64") from None
    if len(key) < 24:
        raise InvalidArgumentError("a webhook secret holds at least 24 bytes")
    return key


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one attempt of one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header a delivery carries: the three signature headers and the content type."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


def retry_delay(attempt: int, rng: random.Random) -> timedelta | None:
    """How long after failed attempt number `attempt` (1-based) to try again; None: give up.

    Each delay is jittered by up to a fifth either way, so deliveries that failed together
    (a receiver that was down) do not all come back at the same second.
    """
    if attempt < 1 or attempt > len(RETRY_DELAYS):
        return None
    base = RETRY_DELAYS[attempt - 1].total_seconds()
    return timedelta(seconds=base * rng.uniform(0.8, 1.2))


def check_url(url: str, *, allow_http_loopback: bool = False) -> str:
    """An endpoint address linkvault will deliver to, or InvalidArgumentError saying why not.

    https only; plain http only to a loopback address, and only when the deployment allows it
    (LINKVAULT_WEBHOOK_ALLOW_HTTP_LOOPBACK, for local development and tests).
    """
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise InvalidArgumentError(
            "a webhook url is an absolute https URL of at most 2000 characters"
        )
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise InvalidArgumentError("a webhook url holds no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgumentError("a webhook url must be a valid absolute URL") from None
    del port
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidArgumentError("a webhook url must be an absolute https URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError("a webhook url carries no user name or password")
    if parts.fragment:
        raise InvalidArgumentError("a webhook url has no #fragment")
    if parts.scheme == "http":
        if not _loopback(host):
            raise InvalidArgumentError("a webhook url must use https (http only on loopback)")
        if not allow_http_loopback:
            raise InvalidArgumentError(
                "http webhook urls are refused; set LINKVAULT_WEBHOOK_ALLOW_HTTP_LOOPBACK=true "
                "to allow http on loopback for development"
            )
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def event_matches(subscribed: frozenset[str], event_type: str) -> bool:
    """Whether an endpoint subscribed to `subscribed` (empty: everything) gets `event_type`."""
    return not subscribed or event_type in subscribed


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The response headers kept on a delivery record: a few, and never cookies."""
    keep = ("content-type", "retry-after", "content-length")
    return {k.lower(): v[:200] for k, v in headers.items() if k.lower() in keep}


# What a delivery record keeps of an error (never a response body, never a header value).
MAX_DELIVERY_ERROR = 300


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # not delivered yet: due now, or waiting for a retry or its turn
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # given up after the last retry (the endpoint was disabled)


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """Where events are delivered: a URL, the event types it wants (empty: all), its secret
    sealed with the key ring (the endpoint id as associated data)."""

    id: UUID
    url: str
    event_types: frozenset[str]
    sealed_secret: bytes = field(repr=False)
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one endpoint: its fixed payload, its state and its last answer."""

    id: UUID
    endpoint_id: UUID
    event_id: UUID  # the webhook-id of every attempt
    event_type: str
    connection_id: UUID
    sequence: int
    payload: str
    status: DeliveryStatus
    attempts: int  # failed attempts since fan-out or the last replay
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One POST of a delivery: when, and the status code or the error."""

    id: UUID
    delivery_id: UUID
    attempted_at: datetime
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryClaim:
    """A delivery leased to one worker, with the endpoint it goes to."""

    delivery: Delivery
    endpoint: WebhookEndpoint


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one attempt of a delivery ended, as the worker records it with finish_delivery.

    `status` and `attempts` are the delivery's after this attempt, `next_attempt_at` its next
    try (None once it is delivered or given up); `status_code` and `error` are this attempt's
    answer. With `disable_reason`, the endpoint is disabled too, saying why.
    """

    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    disable_reason: str | None = None


def safe_error(error: str | None) -> str | None:
    """An attempt's error cut to size, printable only."""
    if error is None:
        return None
    return "".join(ch if ch.isprintable() else " " for ch in error)[:MAX_DELIVERY_ERROR]
