"""The key ring and the AES-256-GCM cipher that seals credentials to their connection.

A blob is ``b"LV" + version + len(key id) + key id + 12-byte nonce + ciphertext and tag``.
Everything before the nonce depends on the key id alone (see `key_prefix`), so a store can
find the rows sealed under any key with a bytes-prefix query. The header and the connection
id are the associated data: a blob moved to another row, or relabelled to another key,
does not open.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from linkvault.errors import DecryptionError, InvalidArgumentError, KeyRingError, UnknownKeyError
from linkvault.private_files import read_private_text, write_private_file

__all__ = [
    "BLOB_FORMAT_VERSION",
    "DEFAULT_KEY_FILE",
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "AesGcmCipher",
    "Key",
    "KeyRing",
    "blob_key_id",
    "generate_key",
    "key_prefix",
    "keyring_from_settings",
    "load_key_file",
    "load_or_create_key_file",
    "parse_keys",
    "remove_key_from_file",
]

logger = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
BLOB_FORMAT_VERSION = 1
DEFAULT_KEY_FILE = Path("linkvault.keys")

_MAGIC = b"LV"
_VERSION = bytes([BLOB_FORMAT_VERSION])
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_KEY_ID_BYTES = re.compile(rb"[A-Za-z0-9_.-]{1,32}")
# Both alphabets, so keys from `openssl rand -base64 32` load as well as our own.
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_ENTRY_SPLIT = re.compile(r"[,\s]+")
_ID_RULE = "a key id is 1 to 32 characters from A-Z a-z 0-9 _ . -"
# Bound once: seal and open are called per credential and their overhead is benchmarked.
_urandom = os.urandom
_uuid_bytes = int.to_bytes


def _check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        raise KeyRingError(f"invalid key id: {_ID_RULE}")
    return key_id


def key_prefix(key_id: str) -> bytes:
    """The header bytes every blob sealed under `key_id` starts with."""
    _check_key_id(key_id)
    raw = key_id.encode("ascii")
    return _MAGIC + _VERSION + bytes([len(raw)]) + raw


def _split_blob(blob: bytes) -> tuple[str, int]:
    if not isinstance(blob, bytes):
        raise DecryptionError("an encrypted blob must be bytes")
    if len(blob) < 4 or blob[:2] != _MAGIC:
        raise DecryptionError("not a linkvault encrypted blob")
    if blob[2] != BLOB_FORMAT_VERSION:
        raise DecryptionError(f"unsupported blob format version {blob[2]}")
    id_len = blob[3]
    nonce_at = 4 + id_len
    raw_id = blob[4:nonce_at]
    if _KEY_ID_BYTES.fullmatch(raw_id) is None:
        raise DecryptionError("the blob's key id is malformed")
    if len(blob) < nonce_at + NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("the blob is truncated")
    return raw_id.decode("ascii"), nonce_at


def blob_key_id(blob: bytes) -> str:
    """The id of the key a blob was sealed with; DecryptionError when the blob is malformed."""
    return _split_blob(blob)[0]


class Key:
    """One 256-bit key and its id; its repr and str show the id only."""

    __slots__ = ("_aead", "_id", "_prefix")

    def __init__(self, key_id: str, material: bytes) -> None:
        _check_key_id(key_id)
        if not isinstance(material, bytes):
            raise KeyRingError(f"key {key_id!r} must be bytes")
        if len(material) != KEY_BYTES:
            raise KeyRingError(
                f"key {key_id!r} is {len(material)} bytes long; keys must be {KEY_BYTES} bytes"
            )
        self._id = key_id
        self._aead = AESGCM(material)
        self._prefix = key_prefix(key_id)

    @classmethod
    def generate(cls, key_id: str) -> Key:
        """A new random key."""
        return cls(key_id, secrets.token_bytes(KEY_BYTES))

    @property
    def id(self) -> str:
        return self._id

    @property
    def prefix(self) -> bytes:
        return self._prefix

    def __repr__(self) -> str:
        return f"Key(id={self._id!r})"

    __str__ = __repr__


class KeyRing:
    """Keys by id, exactly one of them active for new blobs; shows ids only."""

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Iterable[Key], *, active: str | None = None) -> None:
        by_id: dict[str, Key] = {}
        for key in keys:
            if not isinstance(key, Key):
                raise KeyRingError("a key ring holds Key objects")
            if key.id in by_id:
                raise KeyRingError(f"key id {key.id!r} appears more than once")
            by_id[key.id] = key
        if not by_id:
            raise KeyRingError("the key ring is empty: at least one key is needed")
        if active is None:
            active = next(iter(by_id))
        elif active not in by_id:
            raise KeyRingError(
                f"the active key {active!r} is not in the key ring (it holds {_ids(by_id)})"
            )
        self._keys = by_id
        self._active = by_id[active]

    @property
    def active(self) -> Key:
        return self._active

    @property
    def active_id(self) -> str:
        return self._active.id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def get(self, key_id: str) -> Key:
        """The key with this id; UnknownKeyError when the ring does not hold it."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(key_id) from None

    def with_key(self, key: Key, *, activate: bool = False) -> KeyRing:
        """A new ring with `key` added, optionally as the active key."""
        return KeyRing([*self._keys.values(), key], active=key.id if activate else self.active_id)

    def without(self, key_id: str) -> KeyRing:
        """A new ring without `key_id`; the active key cannot be removed."""
        if key_id == self.active_id:
            raise KeyRingError(f"key {key_id!r} is the active key; activate another one first")
        self.get(key_id)
        return KeyRing((k for k in self._keys.values() if k.id != key_id), active=self.active_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active_id!r}, keys={list(self._keys)!r})"

    __str__ = __repr__


def _ids(keys: Iterable[str]) -> str:
    return ", ".join(repr(k) for k in keys)


class AesGcmCipher:
    """AES-256-GCM sealing bound to the connection id, under the ring's active key."""

    __slots__ = (
        "_active_aead",
        "_active_body_at",
        "_active_min_size",
        "_active_nonce_at",
        "_active_prefix",
        "_keyring",
    )

    def __init__(self, keyring: KeyRing) -> None:
        if not isinstance(keyring, KeyRing):
            raise InvalidArgumentError("AesGcmCipher needs a KeyRing")
        self._keyring = keyring
        # The ring is immutable: look the active key up once, off the hot path.
        self._active_aead = keyring.active._aead
        self._active_prefix = keyring.active.prefix
        self._active_nonce_at = len(self._active_prefix)
        self._active_body_at = self._active_nonce_at + NONCE_BYTES
        self._active_min_size = self._active_body_at + TAG_BYTES

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    def seal(self, plaintext: bytes, *, connection_id: UUID) -> bytes:
        """Encrypt under the active key; the blob names its key."""
        if not isinstance(connection_id, UUID):
            raise InvalidArgumentError("connection_id must be a UUID")
        header = self._active_prefix
        nonce = _urandom(NONCE_BYTES)
        # _uuid_bytes(int) is UUID.bytes without the property call: this is the hot path.
        aad = header + _uuid_bytes(connection_id.int, 16, "big")
        return header + nonce + self._active_aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, *, connection_id: UUID) -> bytes:
        """Decrypt a blob sealed for this connection; raises DecryptionError."""
        if not isinstance(connection_id, UUID):
            raise InvalidArgumentError("connection_id must be a UUID")
        header = self._active_prefix
        if (
            isinstance(blob, bytes)
            and blob.startswith(header)
            and len(blob) >= self._active_min_size
        ):
            aead = self._active_aead
            nonce_at = self._active_nonce_at
            body_at = self._active_body_at
        else:
            key_id, nonce_at = _split_blob(blob)
            aead = self._keyring.get(key_id)._aead
            header = blob[:nonce_at]
            body_at = nonce_at + NONCE_BYTES
        try:
            return aead.decrypt(
                blob[nonce_at:body_at],
                blob[body_at:],
                header + _uuid_bytes(connection_id.int, 16, "big"),
            )
        except InvalidTag:
            raise DecryptionError(
                f"the blob does not authenticate under key {blob_key_id(blob)!r} for "
                f"connection {connection_id}: it was altered, truncated, or sealed for another "
                "connection"
            ) from None

    def is_current(self, blob: bytes) -> bool:
        """Whether a blob is sealed under the active key (rotation leaves it alone)."""
        return blob.startswith(self._active_prefix)

    def reseal(self, blob: bytes, *, connection_id: UUID) -> bytes:
        """The same plaintext sealed anew under the active key."""
        return self.seal(self.open(blob, connection_id=connection_id), connection_id=connection_id)

    def __repr__(self) -> str:
        return f"AesGcmCipher({self._keyring!r})"

    __str__ = __repr__


# --- loading keys -------------------------------------------------------------


def generate_key(key_id: str | None = None) -> str:
    """A new key entry, ``id:base64url``, for LINKVAULT_KEYS or a key file."""
    if key_id is None:
        key_id = f"{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"
    _check_key_id(key_id)
    material = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=")
    return f"{key_id}:{material.decode('ascii')}"


def _decode_material(encoded: str, where: str, key_id: str) -> bytes:
    if _BASE64.fullmatch(encoded) is None:
        raise KeyRingError(f"{where}: key {key_id!r} is not valid base64")
    unpadded = encoded.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{where}: key {key_id!r} is not valid base64") from None


def _parse_entry(entry: str, where: str) -> Key:
    # Never quote the entry itself: a mistyped line may be nothing but key material.
    key_id, sep, encoded = entry.partition(":")
    if not sep or not key_id or not encoded:
        raise KeyRingError(f"{where} is not of the form id:base64key")
    if _KEY_ID.fullmatch(key_id) is None:
        raise KeyRingError(f"{where} has an invalid key id: {_ID_RULE}")
    material = _decode_material(encoded, where, key_id)
    if len(material) != KEY_BYTES:
        raise KeyRingError(
            f"{where}: key {key_id!r} is {len(material)} bytes long; keys must be {KEY_BYTES} "
            "bytes (generate one with `linkvault keys generate`)"
        )
    return Key(key_id, material)


def _ring(entries: Iterable[tuple[str, str]], active: str | None, source: str) -> KeyRing:
    keys: list[Key] = []
    seen: set[str] = set()
    for where, entry in entries:
        key = _parse_entry(entry, where)
        if key.id in seen:
            raise KeyRingError(f"{where}: key id {key.id!r} appears more than once in {source}")
        seen.add(key.id)
        keys.append(key)
    if not keys:
        raise KeyRingError(f"{source} holds no keys")
    if active is not None and active not in seen:
        raise KeyRingError(
            f"the active key {active!r} is not among the keys in {source} ({_ids(seen)})"
        )
    return KeyRing(keys, active=active)


def parse_keys(text: str, *, active: str | None = None, source: str = "LINKVAULT_KEYS") -> KeyRing:
    """A ring from ``id1:base64,id2:base64``; the first key is active unless `active` says."""
    entries = [e for e in _ENTRY_SPLIT.split(text.strip()) if e]
    return _ring(((f"entry {n} of {source}", e) for n, e in enumerate(entries, 1)), active, source)


def _file_entries(text: str, path: Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            yield f"line {number} of key file {path}", entry


def load_key_file(path: Path, *, active: str | None = None) -> KeyRing:
    """A ring from a file of ``id:base64`` lines and ``#`` comments, readable by its owner only."""
    path = Path(path)
    try:
        text = read_private_text(path, "key file", KeyRingError)
    except FileNotFoundError:
        raise KeyRingError(
            f"key file {path} does not exist; write one with `linkvault keys generate > {path}` "
            f"and `chmod 600 {path}`"
        ) from None
    return _ring(_file_entries(text, path), active, f"key file {path}")


def load_or_create_key_file(path: Path = DEFAULT_KEY_FILE, *, active: str | None = None) -> KeyRing:
    """Load the key file, creating it (mode 0600, one new key) when it does not exist yet."""
    path = Path(path)
    content = (
        "# linkvault encryption keys: id:base64url, one per line, the first is active.\n"
        "# Without this file the stored credentials cannot be decrypted: back it up.\n"
        f"{generate_key()}\n"
    ).encode("ascii")
    if path.exists():
        return load_key_file(path, active=active)
    try:
        created = write_private_file(path, content, replace=False)
    except OSError as exc:
        raise KeyRingError(f"cannot create key file {path}: {exc.strerror}") from None
    if created:
        logger.warning(
            "created a new encryption key file at %s (mode 0600); back it up, "
            "the stored credentials cannot be decrypted without it",
            path.resolve(),
        )
    return load_key_file(path, active=active)


def remove_key_from_file(path: Path, key_id: str, *, active: str | None = None) -> KeyRing:
    """Drop `key_id`'s line from a key file, atomically and mode 0600; the ring that is left."""
    path = Path(path)
    _check_key_id(key_id)
    before = load_key_file(path, active=active)
    if key_id not in before:
        raise KeyRingError(f"key {key_id!r} is not in key file {path}")
    if key_id == before.active_id:
        raise KeyRingError(f"key {key_id!r} is the active key of key file {path}")
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise KeyRingError(f"cannot read key file {path}: {exc.strerror}") from None
    kept = "".join(
        line
        for line in text.splitlines(keepends=True)
        if line.split("#", 1)[0].strip().partition(":")[0] != key_id
    )
    # Checked before anything is written: a rewrite must never leave an unloadable file.
    after = _ring(_file_entries(kept, path), before.active_id, f"key file {path}")
    try:
        write_private_file(path, kept.encode("ascii"), replace=True)
    except OSError as exc:
        raise KeyRingError(f"cannot rewrite key file {path}: {exc.strerror}") from None
    logger.info("removed key %r from key file %s", key_id, path)
    return after


def keyring_from_settings(
    keys: str | None,
    key_file: Path | None,
    *,
    embedded: bool,
    active: str | None = None,
    default_key_file: Path = DEFAULT_KEY_FILE,
) -> KeyRing:
    """The key ring the settings describe; only an embedded deployment may create a key file."""
    if keys and key_file is not None:
        raise KeyRingError("set LINKVAULT_KEYS or LINKVAULT_KEY_FILE, not both")
    if keys:
        return parse_keys(keys, active=active)
    if key_file is not None:
        if embedded:
            return load_or_create_key_file(key_file, active=active)
        return load_key_file(key_file, active=active)
    if embedded:
        return load_or_create_key_file(default_key_file, active=active)
    raise KeyRingError(
        "no encryption keys are configured, and a PostgreSQL deployment never creates one "
        "on its own: set LINKVAULT_KEYS to id:base64key entries (make one with "
        "`linkvault keys generate`) or LINKVAULT_KEY_FILE to the path of a file of them"
    )
