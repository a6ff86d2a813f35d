"""What a connection's refresh record means: ok, retrying, needs attention, needs its user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.services.health import HealthStatus, assess
from linkvault.stores.common import ConnectionHealth

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S, H = ConnectionStatus, HealthStatus


def connection(status: ConnectionStatus, reason: str | None = None) -> ProviderConnection:
    conn = ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug="schwab")
    creds = ProviderCredentials(b"sealed", CredentialType.OAUTH2, NOW + timedelta(hours=1))
    if status is not S.PENDING:
        conn.mark_connected(creds, now=NOW)
    if status is S.EXPIRED:
        conn.mark_expired(reason or "expired", now=NOW)
    elif status is S.REVOKED:
        conn.mark_revoked(reason or "revoked", now=NOW)
    elif status is S.DISCONNECTED:
        conn.mark_disconnected(now=NOW)
    return conn


@pytest.mark.parametrize(
    ("status", "failures", "error", "health"),
    [
        (S.ACTIVE, 0, None, H.OK),
        (S.PENDING, 0, None, H.OK),
        (S.DISCONNECTED, 0, None, H.OK),
        (S.ACTIVE, 1, "unavailable: HTTP 503", H.RETRYING),
        (S.ACTIVE, 0, "answer lost: read timeout", H.RETRYING),  # replayed, not counted
        (S.ACTIVE, 1, "decrypt_failed: no key k0", H.NEEDS_ATTENTION),
        (S.ACTIVE, 2, "client_rejected: invalid_client", H.NEEDS_ATTENTION),
        (S.ACTIVE, 1, "unrefreshable: the provider does not refresh tokens", H.NEEDS_ATTENTION),
        (S.ACTIVE, 1, "unavailable: decrypt_failed: lookalike", H.RETRYING),
        (S.ACTIVE, 3, "decrypt_failed: no key k0", H.NEEDS_USER_ACTION),  # out of attempts
        (S.EXPIRED, 0, None, H.NEEDS_USER_ACTION),
        (S.REVOKED, 2, "unavailable: HTTP 503", H.NEEDS_USER_ACTION),
    ],
)
def test_the_most_urgent_health_that_applies_wins(
    status: ConnectionStatus, failures: int, error: str | None, health: HealthStatus
) -> None:
    conn = connection(status)

    report = assess(conn, ConnectionHealth(conn.id, failures, None, error), max_attempts=3)

    assert report.health is health
    assert report.needs_user_action is (health is H.NEEDS_USER_ACTION)
    assert (report.needs_user_action_reason is not None) is report.needs_user_action
    assert (report.refresh_failures, report.last_refresh_error) == (failures, error)


def test_the_reason_is_the_status_reason_or_the_failures_that_ran_out() -> None:
    revoked = connection(S.REVOKED, "the user revoked access at the provider")
    stuck = connection(S.ACTIVE)
    record = ConnectionHealth(stuck.id, 8, None, "client_rejected: invalid_client")

    assert assess(revoked, None, max_attempts=8).needs_user_action_reason == (
        "the user revoked access at the provider"
    )
    reason = assess(stuck, record, max_attempts=8).needs_user_action_reason
    assert reason is not None
    assert "failed 8 times in a row" in reason
    assert "client_rejected: invalid_client" in reason
    assert assess(stuck, record, max_attempts=9).needs_user_action is False
