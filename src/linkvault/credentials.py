"""Typed credential payloads, and sealing them into the domain's opaque ProviderCredentials.

A payload serializes to compact JSON tagged with its credential type and a format version;
that JSON is what the cipher seals. Reprs of payloads never show a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar, Union, get_type_hints, overload
from uuid import UUID

import msgspec

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
# msgspec: compact UTF-8 JSON, datetimes as RFC 3339, in a fraction of the json module's time.
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


_NAMES: dict[type, tuple[str, ...]] = {}
_TEXT_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _text_fields(cls: type[_Payload]) -> tuple[tuple[str, bool], ...]:
    """A payload class's string fields, each with whether it may be None."""
    found = _TEXT_FIELDS.get(cls)
    if found is None:
        found = _TEXT_FIELDS[cls] = tuple(
            (name, name in cls._optional) for name in _names(cls) if name != "expires_at"
        )
    return found


def _has_expiry(cls: type) -> bool:
    return "expires_at" in _names(cls)


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
        for name, optional in _text_fields(type(self)):
            value = getattr(self, name)
            # The common case in a few cheap tests; the slow path names what is wrong.
            if type(value) is str and value and "\x00" not in value:
                continue
            _text(type(self).__name__, name, value, optional=optional)
        if _has_expiry(type(self)):
            value = getattr(self, "expires_at")  # noqa: B009 - not every payload has one
            if value is not None and (type(value) is not datetime or value.tzinfo is not UTC):
                object.__setattr__(
                    self, "expires_at", _aware(type(self).__name__, "expires_at", value)
                )

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
for _cls in _BY_TYPE.values():
    _names(_cls)  # the hot paths below read _NAMES directly


def serialize_payload(payload: CredentialPayload) -> bytes:
    """Compact JSON of a payload, tagged with its credential type and the format version."""
    if not isinstance(payload, _Payload):
        raise InvalidCredentialsError("not a credential payload")
    document: dict[str, Any] = {"v": PAYLOAD_FORMAT_VERSION, "type": payload.credential_type.value}
    if type(payload) is CustomCredentials:
        document["values"] = dict(payload.values)
    else:
        for name in _NAMES[type(payload)]:
            value = getattr(payload, name)
            if value is not None:
                document[name] = value
    return _ENCODER.encode(document)


def _wire(cls: type[CredentialPayload]) -> type[msgspec.Struct]:
    """The JSON shape of a payload class, for msgspec to decode and check in one pass: the
    format version, the type tag, the class's own fields and nothing else."""
    hints = {name: _checked(hint) for name, hint in get_type_hints(cls).items()}
    shape: list[tuple[str, Any] | tuple[str, Any, Any]] = [("v", int)]
    for f in fields(cls):
        if f.default is MISSING:
            shape.append((f.name, hints[f.name]))
        else:
            shape.append((f.name, hints[f.name], f.default))
    return msgspec.defstruct(
        f"{cls.__name__}Wire",
        shape,
        tag_field="type",
        tag=cls.credential_type.value,
        kw_only=True,
        forbid_unknown_fields=True,
    )


_NONEMPTY = Annotated[str, msgspec.Meta(min_length=1)]
_AWARE = Annotated[datetime, msgspec.Meta(tz=True)]


def _checked(hint: Any) -> Any:
    """A payload field's type with the checks msgspec can make while it parses: strings
    not empty, datetimes with a zone. NUL characters are looked for after (a pattern
    constraint costs more than the whole parse)."""
    if hint is str:
        return _NONEMPTY
    if hint == str | None:
        return _NONEMPTY | None
    if hint == datetime | None:
        return _AWARE | None
    return hint


def _from_wire(cls: type[P], wire: msgspec.Struct, _set: Any = object.__setattr__) -> P:
    """The payload a checked wire value holds, without checking its fields a second time."""
    payload = object.__new__(cls)
    for name in _NAMES[cls]:
        value = getattr(wire, name)
        if type(value) is str:
            if "\x00" in value:
                _text(cls.__name__, name, value)  # raises, naming the field
        elif type(value) is datetime and value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        _set(payload, name, value)
    return payload


# CustomCredentials (a free-form mapping) takes the general path below.
_WIRES = {_wire(cls): cls for cls in _BY_TYPE.values() if cls is not CustomCredentials}
_TYPED_DECODER = msgspec.json.Decoder(Union[tuple(_WIRES)])  # noqa: UP007


def deserialize_payload(data: bytes) -> CredentialPayload:
    """The payload a `serialize_payload` output holds; DecryptionError when it is malformed."""
    try:
        wire = _TYPED_DECODER.decode(data)
    except msgspec.MsgspecError:
        pass  # not one of the usual shapes: the general path below says what is wrong
    else:
        if wire.v == PAYLOAD_FORMAT_VERSION:
            cls = _WIRES[type(wire)]
            try:
                return _from_wire(cls, wire)
            except InvalidCredentialsError:
                raise DecryptionError(f"the decrypted {cls.__name__} is malformed") from None
    return _deserialize_checked(data)


def _deserialize_checked(data: bytes) -> CredentialPayload:
    # `from None` throughout: the parser's own errors carry the plaintext they choked on.
    try:
        document = _DECODER.decode(data)
    except msgspec.DecodeError:
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
        expires_at = document.get("expires_at")
        if expires_at is not None:
            document["expires_at"] = datetime.fromisoformat(expires_at)
        return cls(**document)
    except (TypeError, ValueError):
        raise DecryptionError(f"the decrypted {cls.__name__} is malformed") from None


def seal_credentials(
    payload: CredentialPayload, *, connection_id: UUID, cipher: Cipher
) -> ProviderCredentials:
    """Encrypt a payload for one connection; type and expiry of the result come from it."""
    blob = cipher.seal(serialize_payload(payload), connection_id=connection_id)
    # A payload's expiry is already checked (aware, in UTC), and a sealed blob is bytes.
    return ProviderCredentials.trusted(blob, payload.credential_type, payload.expiry)


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
