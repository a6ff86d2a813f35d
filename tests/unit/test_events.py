"""The domain notes an event for every status change, with a reason safe to show anyone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.events import EventType, StoredEvent, safe_reason

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def credentials() -> ProviderCredentials:
    return ProviderCredentials(
        encrypted_data=b"\x01" * 40,
        credential_type=CredentialType.OAUTH2,
        expires_at=NOW + timedelta(hours=1),
    )


def connection() -> ProviderConnection:
    return ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug="bank")


def test_each_status_change_notes_one_event_with_where_it_came_from_and_went() -> None:
    conn = connection()
    conn.mark_connected(credentials(), now=NOW)
    conn.mark_expired("invalid_grant: the refresh token was revoked", now=NOW)
    conn.mark_connected(credentials(), now=NOW)
    conn.mark_revoked("the user revoked access", now=NOW)
    conn.mark_disconnected(now=NOW)

    events = conn.pending_events()
    assert [(e.type, e.from_status, e.to_status) for e in events] == [
        (EventType.ACTIVATED, "pending", "active"),
        (EventType.EXPIRED, "active", "expired"),
        (EventType.ACTIVATED, "expired", "active"),
        (EventType.REVOKED, "active", "revoked"),
        (EventType.DISCONNECTED, "revoked", "disconnected"),
    ]
    assert events[1].reason == "invalid_grant: the refresh token was revoked"
    assert all(e.connection_id == conn.id and e.user_id == conn.user_id for e in events)
    assert all(e.provider_slug == "bank" and e.occurred_at == NOW for e in events)


def test_a_failed_pending_connection_notes_connection_failed() -> None:
    conn = connection()
    conn.mark_failed("authorization was not completed", now=NOW)
    [event] = conn.pending_events()
    assert (event.type, event.from_status, event.to_status) == (
        EventType.FAILED,
        "pending",
        "failed",
    )


def test_changes_that_are_not_transitions_note_nothing() -> None:
    conn = connection()
    conn.mark_connected(credentials(), now=NOW)
    conn.events_saved()
    conn.rename("Main account", now=NOW)
    conn.record_sync(now=NOW)
    conn.update_credentials(credentials(), now=NOW)
    assert conn.pending_events() == ()


def test_saved_events_are_forgotten_and_a_loaded_connection_has_none() -> None:
    conn = connection()
    conn.mark_connected(credentials(), now=NOW)
    assert len(conn.pending_events()) == 1
    conn.events_saved()
    assert conn.pending_events() == ()
    restored = ProviderConnection.restore(
        conn.id,
        conn.user_id,
        conn.provider_id,
        conn.provider_slug,
        conn.alias,
        conn.status.value,
        None,
        conn.credentials,
        conn.connected_at,
        None,
        conn.created_at,
        conn.updated_at,
        conn.version,
    )
    assert restored.pending_events() == ()
    assert restored == conn


def test_events_do_not_change_equality_or_repr() -> None:
    conn = connection()
    twin = ProviderConnection(
        user_id=conn.user_id,
        provider_id=conn.provider_id,
        provider_slug=conn.provider_slug,
        id=conn.id,
        created_at=conn.created_at,
        updated_at=conn.updated_at,
    )
    conn.record_event(EventType.NEEDS_ATTENTION, reason="credentials cannot be opened")
    assert conn == twin
    assert "needs_attention" not in repr(conn)


def test_reasons_are_cut_to_size_and_lose_control_characters() -> None:
    assert safe_reason("line one\nline two\x1b[31m") == "line one line two [31m"
    assert len(safe_reason("x" * 5000) or "") == 500
    assert safe_reason(None) is None


def test_the_payload_names_the_event_and_carries_no_credentials() -> None:
    conn = connection()
    conn.mark_connected(credentials(), now=NOW)
    [event] = conn.pending_events()
    stored = StoredEvent(id=uuid4(), position=42, sequence=1, event=event)
    payload = stored.payload()
    assert payload["type"] == "connection.activated"
    assert payload["timestamp"] == NOW.isoformat()
    assert payload["data"]["connection_id"] == str(conn.id)
    assert payload["data"]["sequence"] == 1
    assert payload["data"]["to_status"] == ConnectionStatus.ACTIVE.value
    assert "encrypted" not in str(payload)
    assert "\\x01" not in str(payload)
