"""Typed credential payloads, and sealing them into the domain's opaque ProviderCredentials.

A payload serializes to compact JSON tagged with its credential type and a format version;
that JSON is what the cipher seals. Reprs of payloads never show a secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload
from uuid import UUID

from linkvault.domain import CredentialType, ProviderCredentials
from linkvault.errors import DecryptionError, InvalidCredentialsError
from linkvault.ports import Cipher

if TYPE_CHECKING:
    from linkvault.oauth.protocol import TokenResponse

__all__ = [
    "PAYLOAD_FORMAT_VERSION",
    "ApiKeyCredentials",
    "CertificateCredentials",
    "CredentialPayload",
    "CustomCredentials",
    "FileImportCredentials",
    "LinkTokenCredentials",
    "OAuth2Tokens",
    "deserialize_payload",
    "open_credentials",
    "seal_credentials",
    "serialize_payload",
]

PAYLOAD_FORMAT_VERSION = 1
_REDACTED = "<redacted>"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _text(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    # Messages name the field, never its value: the value may be a secret.
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidCredentialsError(f"{owner}.{name} must be a string")
    if not value:
        raise InvalidCredentialsError(f"{owner}.{name} must not be empty")
    if "\x00" in value:
        raise InvalidCredentialsError(f"{owner}.{name} must not contain NUL characters")


def _aware(owner: str, name: str, value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidCredentialsError(f"{owner}.{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidCredentialsError(f"{owner}.{name} must be timezone-aware")
    return value.astimezone(UTC)


class _Payload:
    __slots__ = ()
    credential_type: ClassVar[CredentialType]
    _secret: ClassVar[frozenset[str]]
    _optional: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in _names(type(self)):
            value = getattr(self, name)
            if name == "expires_at":
                object.__setattr__(self, name, _aware(owner, name, value))
            else:
                _text(owner, name, value, optional=name in self._optional)

    @property
    def expiry(self) -> datetime | None:
        """When these credentials stop working (None = never); becomes the value object's."""
        return None

    def __repr__(self) -> str:
        shown = []
        for name in _names(type(self)):
            value = getattr(self, name)
            if name in self._secret and value is not None:
                shown.append(f"{name}={_REDACTED}")
            elif isinstance(value, datetime):
                shown.append(f"{name}={value.isoformat()}")
            else:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __str__(self) -> str:
        return repr(self)

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _names(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True, repr=False)
class OAuth2Tokens(_Payload):
    """An OAuth2 grant: access token, optional refresh token, type, scope and expiry."""

    access_token: str
    refresh_token: str | None = None
    token_type: str = "Bearer"
    scope: str | None = None
    expires_at: datetime | None = None

    credential_type: ClassVar[CredentialType] = CredentialType.OAUTH2
    _secret: ClassVar[frozenset[str]] = frozenset({"access_token", "refresh_token"})
    _optional: ClassVar[frozenset[str]] = frozenset({"refresh_token", "scope"})

    @property
    def expiry(self) -> datetime | None:
        return self.expires_at

    @classmethod
    def from_response(
        cls,
        response: TokenResponse,
        *,
        expires_at: datetime | None,
        previous: OAuth2Tokens | None = None,
    ) -> OAuth2Tokens:
        """The grant a token response holds; what a refresh answer leaves out stays `previous`."""
        if previous is None:
            return cls(
                access_token=response.access_token,
                refresh_token=response.refresh_token,
                token_type=response.token_type,
                scope=response.scope,
                expires_at=expires_at,
            )
        return cls(
            access_token=response.access_token,
            # A provider that does not rotate sends no refresh token: the old one stays valid.
            refresh_token=response.refresh_token or previous.refresh_token,
            token_type=response.token_type or previous.token_type,
            scope=response.scope or previous.scope,
            expires_at=expires_at,
        )


@dataclass(frozen=True, slots=True, repr=False)
class ApiKeyCredentials(_Payload):
    """An API key and, for providers that sign requests, its secret."""

    api_key: str
    api_secret: str | None = None

    credential_type: ClassVar[CredentialType] = CredentialType.API_KEY
    _secret: ClassVar[frozenset[str]] = frozenset({"api_key", "api_secret"})
    _optional: ClassVar[frozenset[str]] = frozenset({"api_secret"})


@dataclass(frozen=True, slots=True, repr=False)
class LinkTokenCredentials(_Payload):
    """An aggregator's access token for one linked item (Plaid style), and the item's id."""

    access_token: str
    item_id: str
    expires_at: datetime | None = None

    credential_type: ClassVar[CredentialType] = CredentialType.LINK_TOKEN
    _secret: ClassVar[frozenset[str]] = frozenset({"access_token"})

    @property
    def expiry(self) -> datetime | None:
        return self.expires_at


@dataclass(frozen=True, slots=True, repr=False)
class CertificateCredentials(_Payload):
    """A client certificate (PEM) and its private key (PEM) for mutual TLS."""

    certificate_pem: str
    private_key_pem: str

    credential_type: ClassVar[CredentialType] = CredentialType.CERTIFICATE
    # The certificate is public, but a PEM in a log line is noise and invites copy-paste.
    _secret: ClassVar[frozenset[str]] = frozenset({"certificate_pem", "private_key_pem"})


@dataclass(frozen=True, slots=True, repr=False)
class FileImportCredentials(_Payload):
    """A provider fed by file uploads: a label naming the source, and an optional passphrase."""

    source: str
    passphrase: str | None = None

    credential_type: ClassVar[CredentialType] = CredentialType.FILE_IMPORT
    _secret: ClassVar[frozenset[str]] = frozenset({"passphrase"})
    _optional: ClassVar[frozenset[str]] = frozenset({"passphrase"})


@dataclass(frozen=True, slots=True, repr=False)
class CustomCredentials(_Payload):
    """Named secret strings for a provider none of the other types fits."""

    values: Mapping[str, str] = field(default_factory=dict)

    credential_type: ClassVar[CredentialType] = CredentialType.CUSTOM
    _secret: ClassVar[frozenset[str]] = frozenset({"values"})

    def __post_init__(self) -> None:
        if not isinstance(self.values, Mapping):
            raise InvalidCredentialsError("CustomCredentials.values must be a mapping")
        copied = dict(self.values)
        if not copied:
            raise InvalidCredentialsError("CustomCredentials.values must not be empty")
        for name, value in copied.items():
            if not isinstance(name, str) or not name:
                raise InvalidCredentialsError("CustomCredentials keys must be non-empty strings")
            _text("CustomCredentials", f"values[{name!r}]", value)
        object.__setattr__(self, "values", MappingProxyType(copied))

    def __repr__(self) -> str:
        names = ", ".join(f"{name!r}: {_REDACTED}" for name in self.values)
        return f"CustomCredentials(values={{{names}}})"

    def _fields(self) -> dict[str, Any]:
        return {"values": dict(self.values)}


CredentialPayload = (
    OAuth2Tokens
    | ApiKeyCredentials
    | LinkTokenCredentials
    | CertificateCredentials
    | FileImportCredentials
    | CustomCredentials
)
P = TypeVar("P", bound=CredentialPayload)

_BY_TYPE: Mapping[CredentialType, type[CredentialPayload]] = {
    cls.credential_type: cls
    for cls in (
        OAuth2Tokens,
        ApiKeyCredentials,
        LinkTokenCredentials,
        CertificateCredentials,
        FileImportCredentials,
        CustomCredentials,
    )
}
_DATETIME_FIELDS = frozenset({"expires_at"})


def serialize_payload(payload: CredentialPayload) -> bytes:
    """Compact JSON of a payload, tagged with its credential type and the format version."""
    if not isinstance(payload, _Payload):
        raise InvalidCredentialsError("not a credential payload")
    document = {"v": PAYLOAD_FORMAT_VERSION, "type": payload.credential_type.value}
    document.update(payload._fields())
    return _ENCODER.encode(document).encode("utf-8")


def deserialize_payload(data: bytes) -> CredentialPayload:
    """The payload a `serialize_payload` output holds; DecryptionError when it is malformed."""
    # `from None` throughout: the parser's own errors carry the plaintext they choked on.
    try:
        document = _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DecryptionError("the decrypted credentials are not valid JSON") from None
    if not isinstance(document, dict):
        raise DecryptionError("the decrypted credentials are not a JSON object")
    version = document.pop("v", None)
    if version != PAYLOAD_FORMAT_VERSION:
        raise DecryptionError(
            f"credential payload format {version if isinstance(version, int) else '?'} is "
            f"not one this linkvault reads (it reads {PAYLOAD_FORMAT_VERSION})"
        )
    try:
        cls = _BY_TYPE[CredentialType(document.pop("type", None))]
    except (TypeError, ValueError):
        raise DecryptionError("the decrypted credentials name no known credential type") from None
    unknown = document.keys() - _names(cls)
    if unknown:
        raise DecryptionError(
            f"the decrypted {cls.__name__} has unknown fields: {', '.join(sorted(unknown))}"
        )
    try:
        for name in _DATETIME_FIELDS & set(document):
            document[name] = datetime.fromisoformat(document[name])
        return cls(**document)
    except (TypeError, ValueError):
        raise DecryptionError(f"the decrypted {cls.__name__} is malformed") from None


def seal_credentials(
    payload: CredentialPayload, *, connection_id: UUID, cipher: Cipher
) -> ProviderCredentials:
    """Encrypt a payload for one connection; type and expiry of the result come from it."""
    blob = cipher.seal(serialize_payload(payload), connection_id=connection_id)
    return ProviderCredentials(blob, payload.credential_type, payload.expiry)


@overload
def open_credentials(
    credentials: ProviderCredentials, *, connection_id: UUID, cipher: Cipher
) -> CredentialPayload: ...


@overload
def open_credentials(
    credentials: ProviderCredentials, *, connection_id: UUID, cipher: Cipher, expect: type[P]
) -> P: ...


def open_credentials(
    credentials: ProviderCredentials,
    *,
    connection_id: UUID,
    cipher: Cipher,
    expect: type[_Payload] | None = None,
) -> CredentialPayload:
    """Decrypt a connection's credentials; DecryptionError when they do not match their type."""
    payload = deserialize_payload(
        cipher.open(credentials.encrypted_data, connection_id=connection_id)
    )
    if payload.credential_type is not credentials.credential_type:
        raise DecryptionError(
            f"connection {connection_id} says its credentials are "
            f"{credentials.credential_type.value}, but they decrypt to "
            f"{payload.credential_type.value}"
        )
    if expect is not None and not isinstance(payload, expect):
        raise InvalidCredentialsError(
            f"connection {connection_id} holds {payload.credential_type.value} credentials, "
            f"not {expect.credential_type.value}"
        )
    return payload
