"""Webhook signatures verified by the Standard Webhooks reference library; URLs; retries."""

from __future__ import annotations

import json
import random
import time
from datetime import timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from linkvault.errors import InvalidArgumentError
from linkvault.webhooks import (
    RETRY_DELAYS,
    check_url,
    event_matches,
    new_secret,
    retry_delay,
    secret_key,
    signed_headers,
)


def test_a_signed_delivery_verifies_with_the_standard_webhooks_library() -> None:
    secret = new_secret()
    body = json.dumps({"type": "connection.expired", "data": {"reason": "café ✓"}}).encode()
    headers = signed_headers(secret, "msg_01", int(time.time()), body)

    assert Webhook(secret).verify(body, headers) == json.loads(body)
    assert headers["webhook-id"] == "msg_01"
    assert headers["content-type"] == "application/json"


def test_a_changed_body_id_timestamp_or_secret_fails_verification() -> None:
    secret = new_secret()
    body = b'{"type":"connection.revoked"}'
    now = int(time.time())
    headers = signed_headers(secret, "msg_02", now, body)

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_03"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-timestamp": str(now + 1)})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_an_old_timestamp_is_refused_by_receivers_so_each_attempt_signs_anew() -> None:
    secret = new_secret()
    body = b"{}"
    stale = signed_headers(secret, "msg_04", int(time.time()) - 3600, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)


def test_secrets_are_fresh_prefixed_and_hold_thirty_two_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert len(secret_key(first)) == 32
    for bad in ("", "whsec_", "whsec_not base64!", "plain", "whsec_" + "QUJD"):
        with pytest.raises(InvalidArgumentError) as caught:
            secret_key(bad)
        assert bad[6:] == "" or bad[6:] not in str(caught.value)


def test_retries_start_fast_turn_hourly_and_last_more_than_a_day() -> None:
    rng = random.Random(1)
    delays = []
    attempt = 1
    while (delay := retry_delay(attempt, rng)) is not None:
        delays.append(delay)
        attempt += 1
    assert len(delays) == len(RETRY_DELAYS)
    assert timedelta(seconds=4) <= delays[0] <= timedelta(seconds=6)
    assert timedelta(seconds=24) <= delays[1] <= timedelta(seconds=36)
    assert all(timedelta(minutes=48) <= d <= timedelta(minutes=72) for d in delays[5:]), (
        "hourly after the first half hour"
    )
    assert sum(delays, timedelta()) >= timedelta(hours=24)
    assert retry_delay(0, rng) is None


def test_retry_delays_of_deliveries_that_failed_together_are_spread() -> None:
    rng = random.Random(7)
    firsts = {round(retry_delay(2, rng).total_seconds(), 1) for _ in range(20)}  # type: ignore[union-attr]
    assert len(firsts) >= 10


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/linkvault", "https://example.com:8443/a?b=c", "https://[::1]/x"],
)
def test_https_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/x", "must use https"),
        ("http://127.0.0.1:9000/x", "LINKVAULT_WEBHOOK_ALLOW_HTTP_LOOPBACK"),
        ("ftp://example.com/x", "absolute https"),
        ("/relative/path", "absolute https"),
        ("https://user:pw@example.com/x", "no user name"),
        ("https://example.com/x#frag", "fragment"),
        ("https://example.com/a b", "no spaces"),
        ("https://example.com:99999/x", "valid absolute URL"),
        ("", "absolute https"),
    ],
)
def test_other_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError, match=why):
        check_url(url)


def test_http_on_loopback_only_when_the_deployment_allows_it() -> None:
    for url in ("http://127.0.0.1:9000/x", "http://localhost/x", "http://[::1]:80/"):
        assert check_url(url, allow_http_loopback=True) == url
    with pytest.raises(InvalidArgumentError, match="https"):
        check_url("http://10.0.0.1/x", allow_http_loopback=True)
    with pytest.raises(InvalidArgumentError, match="https"):
        check_url("http://127.0.0.1.example.com/x", allow_http_loopback=True)


def test_an_endpoint_without_a_list_of_events_gets_them_all() -> None:
    assert event_matches(frozenset(), "connection.expired")
    assert event_matches(frozenset({"connection.expired"}), "connection.expired")
    assert not event_matches(frozenset({"connection.expired"}), "connection.revoked")
