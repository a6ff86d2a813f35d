"""Bearer API keys with scopes: generated at random, stored as SHA-256, checked in constant time.

An entry is ``name:scope+scope:sha256hex``; entries come from LINKVAULT_API_KEYS (comma or
whitespace separated) or from a key file (one per line, ``#`` comments). API keys are 256-bit
random tokens, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from linkvault.errors import ConfigurationError
from linkvault.private_files import read_private_text, write_private_file
from linkvault.settings import Settings

__all__ = [
    "DEFAULT_API_KEY_FILE",
    "KEY_PREFIX",
    "ApiKeyEntry",
    "ApiKeySet",
    "Scope",
    "access_from_settings",
    "admin_key_file",
    "generate_api_key",
    "hash_api_key",
    "load_api_key_file",
    "load_or_create_api_key_file",
    "parse_api_keys",
]

DEFAULT_API_KEY_FILE = Path("linkvault.api-keys")
KEY_PREFIX = "lvk_"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_SPLIT = re.compile(r"[,\s]+")


class Scope(StrEnum):
    """What an API key may do."""

    READ = "read"
    WRITE = "write"
    CREDENTIALS = "credentials"  # the decrypted credentials, refresh token included
    TOKEN = "token"  # a current access token, never the refresh token
    PROXY = "proxy"  # calls to the provider's API through linkvault, no token handed out


ALL_SCOPES = frozenset(Scope)
ALL_SCOPES_ORDERED = tuple(s.value for s in Scope)


def hash_api_key(plaintext: str) -> str:
    """The SHA-256 hex digest an API key is stored as."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """A configured API key: its name, its scopes and the SHA-256 of the key itself."""

    name: str
    scopes: frozenset[Scope]
    sha256: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or _NAME.fullmatch(self.name) is None:
            raise ConfigurationError("an API key name is 1 to 64 characters from A-Z a-z 0-9 _ . -")
        if not self.scopes:
            raise ConfigurationError(f"API key {self.name!r} has no scopes")
        if not isinstance(self.sha256, str) or _HEX.fullmatch(self.sha256) is None:
            raise ConfigurationError(
                f"API key {self.name!r}: the hash must be 64 lowercase hex digits (SHA-256)"
            )

    def allows(self, scope: Scope) -> bool:
        """Whether this key holds `scope`."""
        return scope in self.scopes

    @property
    def spec(self) -> str:
        """The ``name:scope+scope:sha256hex`` entry that configures this key."""
        order = [s.value for s in Scope if s in self.scopes]
        return f"{self.name}:{'+'.join(order)}:{self.sha256}"


class ApiKeySet:
    """The configured API keys; `authenticate` finds the one a bearer token is, if any."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self._entries = tuple(entries)
        names = [e.name for e in self._entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(f"duplicate API key name(s): {', '.join(duplicates)}")
        if len({e.sha256 for e in self._entries}) != len(self._entries):
            raise ConfigurationError("two API key entries have the same hash")

    def authenticate(self, token: str) -> ApiKeyEntry | None:
        """The entry whose key is `token`, or None; compares against every entry."""
        digest = hash_api_key(token).encode("ascii")
        found: ApiKeyEntry | None = None
        # No early exit: the time taken does not depend on which entry matched, if any.
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.sha256.encode("ascii")):
                found = entry
        return found

    @property
    def entries(self) -> tuple[ApiKeyEntry, ...]:
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ApiKeyEntry]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"ApiKeySet({', '.join(e.name for e in self._entries)})"


def parse_scopes(text: str, where: str) -> frozenset[Scope]:
    """Scopes from ``read+write`` (or ``all``)."""
    if text == "all":
        return ALL_SCOPES
    scopes: set[Scope] = set()
    for part in text.split("+"):
        try:
            scopes.add(Scope(part))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ConfigurationError(
                f"{where}: unknown scope {part!r} (known: {known}, or all)"
            ) from None
    return frozenset(scopes)


def _parse_entry(text: str, where: str) -> ApiKeyEntry:
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigurationError(
            f"{where}: an API key entry is name:scope+scope:sha256hex "
            "(make one with `linkvault keys create-api-key`)"
        )
    name, scopes, digest = parts
    try:
        return ApiKeyEntry(name, parse_scopes(scopes, where), digest.lower())
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _entries_of(items: Iterable[tuple[str, str]]) -> ApiKeySet:
    return ApiKeySet(_parse_entry(text, where) for where, text in items)


def parse_api_keys(text: str, *, source: str = "LINKVAULT_API_KEYS") -> ApiKeySet:
    """Keys from ``name:scopes:sha256hex`` entries separated by commas or whitespace."""
    entries = [e for e in _SPLIT.split(text.strip()) if e]
    if entries and any(e.startswith(KEY_PREFIX) for e in entries):
        # A plaintext key pasted where its hash belongs would otherwise sit in the environment.
        raise ConfigurationError(
            f"{source} holds a plaintext API key: configure its SHA-256 hash instead"
        )
    return _entries_of((f"entry {n} of {source}", e) for n, e in enumerate(entries, 1))


def generate_api_key(
    name: str, scopes: Iterable[Scope | str] = ALL_SCOPES
) -> tuple[str, ApiKeyEntry]:
    """A new random key and its entry; the plaintext exists only in the returned value."""
    chosen = frozenset(Scope(s) for s in scopes)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return plaintext, ApiKeyEntry(name, chosen, hash_api_key(plaintext))


def load_api_key_file(path: Path) -> ApiKeySet:
    """Keys from a file of entry lines and ``#`` comments, readable by its owner only."""
    path = Path(path)
    try:
        text = read_private_text(path, "API key file", ConfigurationError)
    except FileNotFoundError:
        raise ConfigurationError(f"API key file {path} does not exist") from None
    lines = (
        (f"line {n} of API key file {path}", line.split("#", 1)[0].strip())
        for n, line in enumerate(text.splitlines(), 1)
    )
    keys = _entries_of((where, entry) for where, entry in lines if entry)
    if not keys:
        raise ConfigurationError(f"API key file {path} holds no keys")
    return keys


def _announce(message: str) -> None:
    # stderr, not a logger: the plaintext must not travel on to log shippers.
    print(message, file=sys.stderr, flush=True)


def load_or_create_api_key_file(
    path: Path = DEFAULT_API_KEY_FILE,
    *,
    announce: Callable[[str], None] = _announce,
) -> ApiKeySet:
    """Load the key file, or create it (mode 0600) with one admin key shown once via `announce`."""
    path = Path(path)
    if path.exists():
        return load_api_key_file(path)
    plaintext, entry = generate_api_key("admin", ALL_SCOPES)
    content = (
        "# linkvault API keys: name:scope+scope:sha256hex, one per line.\n"
        "# Only hashes are kept here; a lost key cannot be recovered, only replaced.\n"
        f"{entry.spec}\n"
    ).encode("ascii")
    try:
        created = write_private_file(path, content, replace=False)
    except OSError as exc:
        raise ConfigurationError(f"cannot create API key file {path}: {exc.strerror}") from None
    if not created:
        # Another process created it first: its key is the one handed out.
        return load_api_key_file(path)
    # The plaintext goes to a file of its own, never to stderr, where logs are captured.
    plaintext_file = admin_key_file(path)
    try:
        write_private_file(plaintext_file, f"{plaintext}\n".encode("ascii"), replace=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create admin key file {plaintext_file}: {exc.strerror}"
        ) from None
    announce(
        f"linkvault: created API key file {path.resolve()} with one key, 'admin' "
        f"(scopes: {', '.join(ALL_SCOPES_ORDERED)}); "
        f"the key itself is in {plaintext_file.resolve()} "
        "(mode 0600): take it from there, then delete that file"
    )
    return load_api_key_file(path)


def admin_key_file(api_key_file: Path) -> Path:
    """Where the first start leaves the admin key's plaintext: beside the API key file."""
    return api_key_file.with_name("linkvault.admin-key")


def access_from_settings(
    settings: Settings,
    *,
    default_file: Path = DEFAULT_API_KEY_FILE,
    announce: Callable[[str], None] = _announce,
) -> ApiKeySet:
    """The API keys the settings describe; only an embedded deployment creates a key file."""
    keys = settings.api_keys.get_secret_value() if settings.api_keys else None
    if keys and settings.api_key_file is not None:
        raise ConfigurationError("set LINKVAULT_API_KEYS or LINKVAULT_API_KEY_FILE, not both")
    if keys:
        parsed = parse_api_keys(keys)
        if not parsed:
            raise ConfigurationError("LINKVAULT_API_KEYS holds no entries")
        return parsed
    path = settings.api_key_file
    if path is not None and not settings.is_embedded:
        return load_api_key_file(path)
    if settings.is_embedded:
        return load_or_create_api_key_file(path or default_file, announce=announce)
    raise ConfigurationError(
        "no API keys are configured, and a PostgreSQL deployment never creates one on its "
        "own: set LINKVAULT_API_KEYS to name:scope+scope:sha256hex entries or "
        "LINKVAULT_API_KEY_FILE to a file of them (make one with "
        "`linkvault keys create-api-key NAME`)"
    )
