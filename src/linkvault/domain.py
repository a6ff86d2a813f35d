"""The provider-connection domain: statuses, credentials, the entity and its transitions.

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from uuid import UUID

from linkvault.errors import InvalidConnectionError, InvalidTransitionError
from linkvault.events import ConnectionEvent, EventType

Clock = Callable[[], datetime]

MAX_ALIAS_LENGTH = 200
MAX_REASON_LENGTH = 1000


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def uuid7() -> UUID:
    """A new time-ordered UUID (RFC 9562 version 7)."""
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rand_a << 64
    value |= 0b10 << 62
    value |= rand_b
    return UUID(int=value)


class ConnectionStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    FAILED = "failed"
    DISCONNECTED = "disconnected"


class CredentialType(StrEnum):
    OAUTH2 = "oauth2"
    API_KEY = "api_key"
    LINK_TOKEN = "link_token"
    CERTIFICATE = "certificate"
    FILE_IMPORT = "file_import"
    CUSTOM = "custom"

    @property
    def can_refresh(self) -> bool:
        return self in (CredentialType.OAUTH2, CredentialType.LINK_TOKEN)


_S = ConnectionStatus
_STATUSES = {s.value: s for s in ConnectionStatus}
_CREDENTIAL_TYPES = {t.value: t for t in CredentialType}

# The single source of truth for status changes.
TRANSITIONS: Mapping[ConnectionStatus, frozenset[ConnectionStatus]] = {
    _S.PENDING: frozenset({_S.ACTIVE, _S.FAILED, _S.DISCONNECTED}),
    _S.ACTIVE: frozenset({_S.EXPIRED, _S.REVOKED, _S.DISCONNECTED}),
    _S.EXPIRED: frozenset({_S.ACTIVE, _S.DISCONNECTED}),
    _S.REVOKED: frozenset({_S.ACTIVE, _S.DISCONNECTED}),
    _S.FAILED: frozenset({_S.ACTIVE, _S.DISCONNECTED}),
    _S.DISCONNECTED: frozenset(),
}


def can_transition(current: ConnectionStatus, target: ConnectionStatus) -> bool:
    """Whether the transition table allows moving from `current` to `target`."""
    return target in TRANSITIONS[current]


def _require_aware(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidConnectionError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidConnectionError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True, repr=False)
class ProviderCredentials:
    """Encrypted credentials: opaque sealed bytes, their type and their expiry (None = never)."""

    encrypted_data: bytes
    credential_type: CredentialType
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        # Every credential read and write builds one: the usual types pass a cheap test.
        data = self.encrypted_data
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidConnectionError("encrypted_data must be bytes")
            object.__setattr__(self, "encrypted_data", bytes(data))
        if not data:
            raise InvalidConnectionError("encrypted_data must not be empty")
        if type(self.credential_type) is not CredentialType:
            try:
                object.__setattr__(self, "credential_type", CredentialType(self.credential_type))
            except ValueError:
                raise InvalidConnectionError(
                    f"unknown credential type {self.credential_type!r}"
                ) from None
        at = self.expires_at
        if at is not None and (type(at) is not datetime or at.tzinfo is not UTC):
            object.__setattr__(self, "expires_at", _require_aware("expires_at", at))

    @classmethod
    def trusted(
        cls, encrypted_data: bytes, credential_type: CredentialType, expires_at: datetime | None
    ) -> ProviderCredentials:
        """Build from values already in canonical form (non-empty bytes, the enum, an expiry
        in UTC or None), skipping the checks: for code that made them so itself."""
        credentials = object.__new__(cls)
        object.__setattr__(credentials, "encrypted_data", encrypted_data)
        object.__setattr__(credentials, "credential_type", credential_type)
        object.__setattr__(credentials, "expires_at", expires_at)
        return credentials

    def __repr__(self) -> str:
        expiry = self.expires_at.isoformat() if self.expires_at else "never"
        return (
            f"ProviderCredentials(type={self.credential_type.value}, "
            f"{len(self.encrypted_data)} encrypted bytes, expires_at={expiry})"
        )

    __str__ = __repr__

    @classmethod
    def restore(
        cls, encrypted_data: bytes, credential_type: str, expires_at: datetime | None
    ) -> ProviderCredentials:
        """Rebuild stored credentials without re-validating them (for stores only)."""
        value = object.__new__(cls)
        # The slots' own setters: a frozen dataclass's __setattr__ refuses, and going through
        # object.__setattr__ by name costs twice as much on every row read.
        _set_encrypted_data(value, encrypted_data)
        _set_credential_type(value, _CREDENTIAL_TYPES[credential_type])
        _set_expires_at(value, expires_at)
        return value

    @property
    def supports_refresh(self) -> bool:
        return self.credential_type.can_refresh

    def is_expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at <= (now or utc_now())

    def expires_within(self, window: timedelta, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return self.expires_at <= (now or utc_now()) + window


_set_encrypted_data = ProviderCredentials.__dict__["encrypted_data"].__set__
_set_credential_type = ProviderCredentials.__dict__["credential_type"].__set__
_set_expires_at = ProviderCredentials.__dict__["expires_at"].__set__


@dataclass(slots=True)
class ProviderConnection:
    """A user's link to one account at one provider."""

    user_id: UUID
    provider_id: UUID
    provider_slug: str
    id: UUID = field(default_factory=uuid7)
    alias: str | None = None
    status: ConnectionStatus = ConnectionStatus.PENDING
    credentials: ProviderCredentials | None = None
    connected_at: datetime | None = None
    last_sync_at: datetime | None = None
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    version: int = 0
    status_reason: str | None = None
    # What happened since the last save: the store writes these with the change itself.
    _events: list[ConnectionEvent] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in ("id", "user_id", "provider_id"):
            if not isinstance(getattr(self, name), UUID):
                raise InvalidConnectionError(f"{name} must be a UUID")
        if not isinstance(self.provider_slug, str) or not self.provider_slug.strip():
            raise InvalidConnectionError("provider_slug must be a non-empty string")
        self.alias = _check_alias(self.alias)
        try:
            self.status = ConnectionStatus(self.status)
        except ValueError:
            raise InvalidConnectionError(f"unknown status {self.status!r}") from None
        if self.credentials is not None and not isinstance(self.credentials, ProviderCredentials):
            raise InvalidConnectionError("credentials must be ProviderCredentials or None")
        self.connected_at = _require_aware("connected_at", self.connected_at)
        self.last_sync_at = _require_aware("last_sync_at", self.last_sync_at)
        created = _require_aware("created_at", self.created_at)
        updated = _require_aware("updated_at", self.updated_at)
        assert created is not None
        assert updated is not None
        self.created_at, self.updated_at = created, updated
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise InvalidConnectionError("version must be a non-negative integer")
        if self.status is ConnectionStatus.ACTIVE and self.credentials is None:
            raise InvalidConnectionError("an active connection requires credentials")
        if self.status is ConnectionStatus.DISCONNECTED and self.credentials is not None:
            raise InvalidConnectionError("a disconnected connection holds no credentials")
        self.status_reason = _check_reason(self.status_reason)

    @classmethod
    def restore(
        cls,
        id: UUID,
        user_id: UUID,
        provider_id: UUID,
        provider_slug: str,
        alias: str | None,
        status: str,
        status_reason: str | None,
        credentials: ProviderCredentials | None,
        connected_at: datetime | None,
        last_sync_at: datetime | None,
        created_at: datetime,
        updated_at: datetime,
        version: int,
    ) -> ProviderConnection:
        """Rebuild a stored connection without re-validating it (for stores only).

        The rows were validated when saved and the schema's constraints hold the same rules;
        skipping the checks makes reads several times cheaper.
        """
        c = object.__new__(cls)
        c.id = id
        c.user_id = user_id
        c.provider_id = provider_id
        c.provider_slug = provider_slug
        c.alias = alias
        c.status = _STATUSES[status]
        c.status_reason = status_reason
        c.credentials = credentials
        c.connected_at = connected_at
        c.last_sync_at = last_sync_at
        c.created_at = created_at
        c.updated_at = updated_at
        c.version = version
        c._events = []
        return c

    # --- events ----------------------------------------------------------------

    def pending_events(self) -> tuple[ConnectionEvent, ...]:
        """The events of the changes made since this connection was loaded or saved."""
        return tuple(self._events)

    def events_saved(self) -> None:
        """Forget the pending events: the store wrote them with the change (stores only)."""
        self._events.clear()

    def record_event(
        self,
        type: EventType,
        *,
        reason: str | None = None,
        now: datetime | None = None,
        from_status: ConnectionStatus | None = None,
        data: Mapping[str, object] | None = None,
    ) -> None:
        """Note an event about this connection that is not a status change of its own."""
        self._events.append(
            ConnectionEvent(
                type=type,
                connection_id=self.id,
                user_id=self.user_id,
                provider_slug=self.provider_slug,
                occurred_at=_stamp(now),
                from_status=None if from_status is None else from_status.value,
                to_status=self.status.value,
                reason=reason,
                data=dict(data or {}),
            )
        )

    # --- queries -------------------------------------------------------------

    def is_connected(self) -> bool:
        return self.status is ConnectionStatus.ACTIVE

    def can_sync(self, now: datetime | None = None) -> bool:
        """Active, with credentials that have not expired."""
        return (
            self.status is ConnectionStatus.ACTIVE
            and self.credentials is not None
            and not self.credentials.is_expired(now)
        )

    def needs_reauthentication(self) -> bool:
        return self.status in (
            ConnectionStatus.EXPIRED,
            ConnectionStatus.REVOKED,
            ConnectionStatus.FAILED,
        )

    # --- transitions ---------------------------------------------------------

    def mark_connected(self, credentials: ProviderCredentials, now: datetime | None = None) -> None:
        """Move to ACTIVE with fresh credentials (from pending, expired, revoked or failed)."""
        self._check(ConnectionStatus.ACTIVE, "mark connected")
        if not isinstance(credentials, ProviderCredentials):
            raise InvalidConnectionError("mark_connected needs ProviderCredentials")
        at = _stamp(now)
        before = self.status
        self.status = ConnectionStatus.ACTIVE
        self.credentials = credentials
        self.connected_at = at
        self.status_reason = None
        self.updated_at = at
        self.record_event(EventType.ACTIVATED, now=at, from_status=before)

    def renew(self, credentials: ProviderCredentials, now: datetime | None = None) -> None:
        """The user consented again while still ACTIVE: a new grant, a new consent.

        Stays ACTIVE (no status change, so no transition); connected_at restarts, which
        restarts a consent the provider ends by rule. Logged as connection.activated.
        """
        if self.status is not ConnectionStatus.ACTIVE:
            raise InvalidTransitionError(self.status.value, None, "renew")
        if not isinstance(credentials, ProviderCredentials):
            raise InvalidConnectionError("renew needs ProviderCredentials")
        at = _stamp(now)
        self.credentials = credentials
        self.connected_at = at
        self.updated_at = at
        self.record_event(
            EventType.ACTIVATED, reason="consent renewed", now=at, from_status=self.status
        )

    def mark_failed(self, reason: str, now: datetime | None = None) -> None:
        """A pending connection could not be established."""
        self._move(ConnectionStatus.FAILED, "mark failed", reason, now)

    def mark_expired(self, reason: str | None = None, now: datetime | None = None) -> None:
        """The provider no longer accepts the credentials; the user must reconnect."""
        self._move(ConnectionStatus.EXPIRED, "mark expired", reason, now)

    def mark_revoked(self, reason: str | None = None, now: datetime | None = None) -> None:
        """The user or the provider revoked the grant."""
        self._move(ConnectionStatus.REVOKED, "mark revoked", reason, now)

    def mark_disconnected(self, now: datetime | None = None) -> None:
        """Soft delete: terminal, credentials dropped."""
        self._check(ConnectionStatus.DISCONNECTED, "disconnect")
        at = _stamp(now)
        before = self.status
        self.status = ConnectionStatus.DISCONNECTED
        self.credentials = None
        self.status_reason = None
        self.updated_at = at
        self.record_event(EventType.DISCONNECTED, now=at, from_status=before)

    def update_credentials(
        self, credentials: ProviderCredentials, now: datetime | None = None
    ) -> None:
        """Replace the credentials of an active connection (after a refresh)."""
        if self.status is not ConnectionStatus.ACTIVE:
            raise InvalidTransitionError(self.status.value, None, "update credentials of")
        if not isinstance(credentials, ProviderCredentials):
            raise InvalidConnectionError("update_credentials needs ProviderCredentials")
        self.credentials = credentials
        self.updated_at = _stamp(now)

    def reseal_credentials(self, credentials: ProviderCredentials) -> None:
        """Swap in the same credentials sealed anew (key rotation); the status is untouched."""
        if self.credentials is None:
            raise InvalidConnectionError("this connection holds no credentials to reseal")
        if (
            credentials.credential_type is not self.credentials.credential_type
            or credentials.expires_at != self.credentials.expires_at
        ):
            raise InvalidConnectionError("resealed credentials must keep their type and expiry")
        self.credentials = credentials

    def record_sync(self, now: datetime | None = None) -> None:
        """Note a successful data sync of an active connection."""
        if self.status is not ConnectionStatus.ACTIVE:
            raise InvalidTransitionError(self.status.value, None, "record a sync of")
        at = _stamp(now)
        self.last_sync_at = at
        self.updated_at = at

    def rename(self, alias: str | None, now: datetime | None = None) -> None:
        """Set or clear the user-facing alias."""
        checked = _check_alias(alias)
        self.alias = checked
        self.updated_at = _stamp(now)

    # --- internals -----------------------------------------------------------

    def _check(self, target: ConnectionStatus, verb: str) -> None:
        if not can_transition(self.status, target):
            raise InvalidTransitionError(self.status.value, target.value, verb)

    def _move(
        self, target: ConnectionStatus, verb: str, reason: str | None, now: datetime | None
    ) -> None:
        self._check(target, verb)
        checked = _check_reason(reason)
        at = _stamp(now)
        before = self.status
        self.status = target
        self.status_reason = checked
        self.updated_at = at
        self.record_event(_ENTERED[target], reason=checked, now=at, from_status=before)


_ENTERED = {
    ConnectionStatus.FAILED: EventType.FAILED,
    ConnectionStatus.EXPIRED: EventType.EXPIRED,
    ConnectionStatus.REVOKED: EventType.REVOKED,
}


def _stamp(now: datetime | None) -> datetime:
    if now is None:
        return utc_now()
    checked = _require_aware("now", now)
    assert checked is not None
    return checked


def _check_alias(alias: str | None) -> str | None:
    if alias is None:
        return None
    if not isinstance(alias, str):
        raise InvalidConnectionError("alias must be a string")
    if len(alias) > MAX_ALIAS_LENGTH:
        raise InvalidConnectionError(f"alias must be at most {MAX_ALIAS_LENGTH} characters")
    if "\x00" in alias:
        raise InvalidConnectionError("alias must not contain NUL characters")
    return alias


def _check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise InvalidConnectionError("reason must be a string")
    return reason.replace("\x00", "")[:MAX_REASON_LENGTH]
