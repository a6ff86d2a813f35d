from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkvault.domain import (
    TRANSITIONS,
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
    can_transition,
    uuid7,
)
from linkvault.errors import InvalidConnectionError, InvalidTransitionError

S = ConnectionStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def creds(expires_at: datetime | None = None) -> ProviderCredentials:
    return ProviderCredentials(b"\x01sealed", CredentialType.OAUTH2, expires_at)


def pending() -> ProviderConnection:
    return ProviderConnection(
        user_id=uuid4(), provider_id=uuid4(), provider_slug="schwab", created_at=T0, updated_at=T0
    )


Verb = Callable[[ProviderConnection, datetime], None]

VERBS: dict[str, tuple[Verb, ConnectionStatus | None]] = {
    "connect": (lambda c, now: c.mark_connected(creds(now + timedelta(hours=1)), now), S.ACTIVE),
    "fail": (lambda c, now: c.mark_failed("code exchange refused", now), S.FAILED),
    "expire": (lambda c, now: c.mark_expired("invalid_grant", now), S.EXPIRED),
    "revoke": (lambda c, now: c.mark_revoked("revoked at the provider", now), S.REVOKED),
    "disconnect": (lambda c, now: c.mark_disconnected(now), S.DISCONNECTED),
    "update": (lambda c, now: c.update_credentials(creds(now + timedelta(hours=2)), now), None),
    "renew": (lambda c, now: c.renew(creds(now + timedelta(hours=3)), now), None),
    "sync": (lambda c, now: c.record_sync(now), None),
}


def snapshot(conn: ProviderConnection) -> dict[str, object]:
    return {f.name: getattr(conn, f.name) for f in dataclasses.fields(conn)}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(sorted(VERBS)), max_size=25))
def test_random_verb_sequences_only_ever_move_along_the_table(verbs: list[str]) -> None:
    conn = pending()
    now = T0
    for name in verbs:
        now += timedelta(minutes=1)
        verb, target = VERBS[name]
        before = snapshot(conn)
        if target is not None:
            allowed = can_transition(conn.status, target)
        else:
            allowed = conn.status is S.ACTIVE
        if allowed:
            verb(conn, now)
            if target is not None:
                assert conn.status is target
                assert target in TRANSITIONS[before["status"]]  # type: ignore[index]
            else:
                assert conn.status is before["status"]
            assert conn.updated_at == now
        else:
            with pytest.raises(InvalidTransitionError):
                verb(conn, now)
            assert snapshot(conn) == before
        if conn.status is S.ACTIVE:
            assert conn.credentials is not None
        if conn.status is S.DISCONNECTED:
            assert conn.credentials is None
            assert TRANSITIONS[S.DISCONNECTED] == frozenset()


def test_the_transition_table_is_the_designed_one() -> None:
    assert {
        S.PENDING: {S.ACTIVE, S.FAILED, S.DISCONNECTED},
        S.ACTIVE: {S.EXPIRED, S.REVOKED, S.DISCONNECTED},
        S.EXPIRED: {S.ACTIVE, S.DISCONNECTED},
        S.REVOKED: {S.ACTIVE, S.DISCONNECTED},
        S.FAILED: {S.ACTIVE, S.DISCONNECTED},
        S.DISCONNECTED: set(),
    } == TRANSITIONS


def test_an_illegal_move_names_both_statuses() -> None:
    conn = pending()
    with pytest.raises(InvalidTransitionError, match="from pending to expired"):
        conn.mark_expired()


def test_reconnecting_keeps_the_id_and_clears_the_reason() -> None:
    conn = pending()
    conn.mark_connected(creds(), now=T0)
    conn.mark_expired("invalid_grant", now=T0)
    ident = conn.id

    conn.mark_connected(creds(), now=T0 + timedelta(days=1))

    assert conn.id == ident
    assert conn.status is S.ACTIVE
    assert conn.status_reason is None
    assert conn.connected_at == T0 + timedelta(days=1)


def test_queries_follow_the_status() -> None:
    conn = pending()
    assert not conn.is_connected()
    assert not conn.can_sync(T0)
    assert not conn.needs_reauthentication()

    conn.mark_connected(creds(T0 + timedelta(minutes=10)), now=T0)
    assert conn.is_connected()
    assert conn.can_sync(T0 + timedelta(minutes=9))
    assert not conn.can_sync(T0 + timedelta(minutes=10))

    conn.mark_revoked(now=T0)
    assert conn.needs_reauthentication()
    assert not conn.is_connected()


def test_credential_types_that_refresh() -> None:
    assert {t for t in CredentialType if t.can_refresh} == {
        CredentialType.OAUTH2,
        CredentialType.LINK_TOKEN,
    }


def test_credentials_repr_shows_length_never_bytes() -> None:
    secret = b"super-secret-access-token-bytes"
    value = ProviderCredentials(secret, CredentialType.OAUTH2, T0)

    for text in (
        repr(value),
        str(value),
        repr(
            ProviderConnection(
                user_id=uuid4(),
                provider_id=uuid4(),
                provider_slug="x",
                status=S.ACTIVE,
                credentials=value,
            )
        ),
    ):
        assert "super-secret" not in text
        assert secret.hex() not in text
        assert f"{len(secret)} encrypted bytes" in text


def test_credentials_are_frozen() -> None:
    value = creds()
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.encrypted_data = b"other"  # type: ignore[misc]


def test_credentials_expiry_is_normalised_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    value = creds(datetime(2026, 1, 1, 13, 0, tzinfo=paris))
    assert value.expires_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert value.expires_at is not None
    assert value.expires_at.tzinfo is UTC


@pytest.mark.parametrize(
    "build",
    [
        lambda: ProviderCredentials(b"", CredentialType.OAUTH2),
        lambda: ProviderCredentials(b"x", "password"),  # type: ignore[arg-type]
        lambda: ProviderCredentials(b"x", CredentialType.OAUTH2, datetime(2026, 1, 1)),
        lambda: ProviderConnection(user_id=uuid4(), provider_id=uuid4(), provider_slug=" "),
        lambda: ProviderConnection(user_id="u", provider_id=uuid4(), provider_slug="x"),  # type: ignore[arg-type]
        lambda: ProviderConnection(
            user_id=uuid4(), provider_id=uuid4(), provider_slug="x", status=S.ACTIVE
        ),
        lambda: ProviderConnection(
            user_id=uuid4(),
            provider_id=uuid4(),
            provider_slug="x",
            status=S.DISCONNECTED,
            credentials=creds(),
        ),
        lambda: ProviderConnection(
            user_id=uuid4(), provider_id=uuid4(), provider_slug="x", version=-1
        ),
        lambda: ProviderConnection(
            user_id=uuid4(), provider_id=uuid4(), provider_slug="x", alias="a" * 201
        ),
        lambda: ProviderConnection(
            user_id=uuid4(), provider_id=uuid4(), provider_slug="x", created_at=datetime(2026, 1, 1)
        ),
        lambda: ProviderConnection(
            user_id=uuid4(),
            provider_id=uuid4(),
            provider_slug="x",
            status="sleeping",  # type: ignore[arg-type]
        ),
    ],
    ids=[
        "empty-blob",
        "unknown-type",
        "naive-expiry",
        "blank-slug",
        "non-uuid-user",
        "active-without-credentials",
        "disconnected-with-credentials",
        "negative-version",
        "long-alias",
        "naive-created-at",
        "unknown-status",
    ],
)
def test_invalid_values_are_refused_with_a_typed_error(build: Callable[[], object]) -> None:
    with pytest.raises(InvalidConnectionError):
        build()


def test_the_entity_is_constructible_by_keyword_with_the_original_field_names() -> None:
    ident, user, provider = uuid7(), uuid4(), uuid4()
    conn = ProviderConnection(
        id=ident,
        user_id=user,
        provider_id=provider,
        provider_slug="schwab",
        alias="Main",
        status=S.ACTIVE,
        credentials=creds(),
        connected_at=T0,
        last_sync_at=None,
        created_at=T0,
        updated_at=T0,
    )
    assert conn.version == 0
    assert (conn.id, conn.user_id, conn.provider_id) == (ident, user, provider)


def test_new_ids_are_time_ordered_uuid_version_7() -> None:
    ids = [uuid7() for _ in range(2000)]
    assert all(i.version == 7 and i.variant == "specified in RFC 4122" for i in ids)
    assert len(set(ids)) == len(ids)
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps)
    assert isinstance(pending().id, UUID)
    assert pending().id.version == 7


def test_reseal_keeps_type_and_expiry_and_refuses_otherwise() -> None:
    conn = pending()
    conn.mark_connected(creds(T0), now=T0)
    conn.reseal_credentials(ProviderCredentials(b"\x02other", CredentialType.OAUTH2, T0))
    assert conn.credentials is not None
    assert conn.credentials.encrypted_data == b"\x02other"
    with pytest.raises(InvalidConnectionError):
        conn.reseal_credentials(ProviderCredentials(b"\x03", CredentialType.API_KEY, T0))


def test_restore_builds_what_the_validating_constructor_builds() -> None:
    expiry = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)
    built = ProviderConnection(
        user_id=uuid4(),
        provider_id=uuid4(),
        provider_slug="schwab",
        alias="Main",
        status=S.ACTIVE,
        status_reason=None,
        credentials=ProviderCredentials(b"\x01sealed", CredentialType.OAUTH2, expiry),
        connected_at=T0,
        last_sync_at=T0 + timedelta(hours=1),
        created_at=T0,
        updated_at=T0,
        version=3,
    )

    restored = ProviderConnection.restore(
        built.id,
        built.user_id,
        built.provider_id,
        "schwab",
        "Main",
        "active",
        None,
        ProviderCredentials.restore(b"\x01sealed", "oauth2", expiry),
        T0,
        T0 + timedelta(hours=1),
        T0,
        T0,
        3,
    )

    assert restored == built
    assert restored.status is S.ACTIVE
    assert restored.credentials is not None
    assert restored.credentials.credential_type is CredentialType.OAUTH2
    restored.mark_expired("invalid_grant", now=T0)
    assert restored.needs_reauthentication()


def test_renewing_consent_keeps_the_connection_active_and_restarts_its_consent() -> None:
    conn = pending()
    conn.mark_connected(creds(T0 + timedelta(hours=1)), T0)
    conn.events_saved()
    later = T0 + timedelta(days=6)
    fresh = creds(later + timedelta(hours=1))

    conn.renew(fresh, later)

    assert (conn.status, conn.credentials, conn.connected_at) == (S.ACTIVE, fresh, later)
    [event] = conn.pending_events()
    assert (event.type.value, event.from_status, event.to_status, event.reason) == (
        "connection.activated",
        "active",
        "active",
        "consent renewed",
    )
