from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from linkvault.access import (
    KEY_PREFIX,
    ApiKeyEntry,
    ApiKeySet,
    Scope,
    access_from_settings,
    generate_api_key,
    load_api_key_file,
    load_or_create_api_key_file,
    parse_api_keys,
)
from linkvault.errors import ConfigurationError
from linkvault.settings import Settings


def test_a_generated_key_authenticates_as_its_entry_and_is_stored_only_hashed() -> None:
    plaintext, entry = generate_api_key("ci", {Scope.READ, Scope.WRITE})
    assert plaintext.startswith(KEY_PREFIX)
    assert len(plaintext) > 40
    assert entry.sha256 == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in entry.spec
    assert plaintext not in repr(entry)
    other, other_entry = generate_api_key("other", {Scope.CREDENTIALS})
    keys = ApiKeySet([entry, other_entry])
    assert keys.authenticate(plaintext) == entry
    assert keys.authenticate(other) == other_entry
    assert keys.authenticate(plaintext + "x") is None
    assert keys.authenticate("") is None
    assert entry.allows(Scope.WRITE)
    assert not entry.allows(Scope.CREDENTIALS)


def test_entries_parse_from_the_setting_and_round_trip_through_spec() -> None:
    _, a = generate_api_key("reader", {Scope.READ})
    _, b = generate_api_key("admin", set(Scope))
    keys = parse_api_keys(f" {a.spec}, {b.spec}\n")
    assert [e.name for e in keys] == ["reader", "admin"]
    assert keys.entries[1].scopes == frozenset(Scope)
    assert parse_api_keys(f"x:all:{b.sha256}").entries[0].scopes == frozenset(Scope)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reader:read", "name:scope+scope:sha256hex"),
        ("reader:read:abc", "64 lowercase hex"),
        (f"reader:admin:{'a' * 64}", "unknown scope 'admin'"),
        (f"bad!name:read:{'a' * 64}", "API key name"),
        (f"a:read:{'a' * 64},a:write:{'b' * 64}", "duplicate API key name"),
        (f"a:read:{'a' * 64},b:write:{'a' * 64}", "same hash"),
        ("lvk_pasted-plaintext", "plaintext API key"),
    ],
)
def test_a_malformed_entry_is_a_configuration_error_naming_the_problem(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        parse_api_keys(text)


def test_an_embedded_deployment_creates_a_private_key_file_and_hands_the_key_over_once(
    tmp_path: Path,
) -> None:
    shown: list[str] = []
    path = tmp_path / "conf" / "api-keys"
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", api_key_file=path)
    keys = access_from_settings(settings, announce=shown.append)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(shown) == 1
    handed_over = tmp_path / "conf" / "linkvault.admin-key"
    assert str(handed_over) in shown[0]
    assert stat.S_IMODE(handed_over.stat().st_mode) == 0o600
    plaintext = handed_over.read_text().strip()
    assert plaintext.startswith(KEY_PREFIX)
    assert KEY_PREFIX not in shown[0]
    assert plaintext not in path.read_text()
    admin = keys.authenticate(plaintext)
    assert admin is not None
    assert admin.scopes == frozenset(Scope)
    again = access_from_settings(settings, announce=shown.append)
    assert len(shown) == 1
    assert again.authenticate(plaintext) == admin


def test_the_default_key_file_is_used_when_nothing_is_configured(tmp_path: Path) -> None:
    shown: list[str] = []
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    default = tmp_path / "linkvault.api-keys"
    keys = access_from_settings(settings, default_file=default, announce=shown.append)
    assert default.exists()
    assert len(keys) == 1
    assert len(shown) == 1


def test_a_postgres_deployment_without_keys_refuses_and_says_what_to_set(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1/x")
    with pytest.raises(ConfigurationError, match="LINKVAULT_API_KEYS"):
        access_from_settings(settings, default_file=tmp_path / "never", announce=print)
    assert not (tmp_path / "never").exists()


def test_a_postgres_deployment_reads_keys_from_the_setting(tmp_path: Path) -> None:
    plaintext, entry = generate_api_key("svc", {Scope.READ})
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1/x", api_keys=SecretStr(entry.spec)
    )
    assert access_from_settings(settings).authenticate(plaintext) == entry


def test_setting_both_the_keys_and_a_file_is_refused(tmp_path: Path) -> None:
    _, entry = generate_api_key("svc", {Scope.READ})
    settings = Settings(api_keys=SecretStr(entry.spec), api_key_file=tmp_path / "f")
    with pytest.raises(ConfigurationError, match="not both"):
        access_from_settings(settings)


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    load_or_create_api_key_file(path, announce=lambda _: None)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_api_key_file(path)


def test_an_entry_rejects_an_empty_scope_set() -> None:
    with pytest.raises(ConfigurationError, match="no scopes"):
        ApiKeyEntry("x", frozenset(), "a" * 64)
