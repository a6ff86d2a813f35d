from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkvault.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    AesGcmCipher,
    Key,
    KeyRing,
    blob_key_id,
    generate_key,
    key_prefix,
    keyring_from_settings,
    load_key_file,
    load_or_create_key_file,
    parse_keys,
)
from linkvault.errors import (
    ConfigurationError,
    DecryptionError,
    InvalidArgumentError,
    KeyRingError,
    UnknownKeyError,
)

CONNECTION = UUID("01890a5d-ac96-774b-bcce-b302099a8057")
OTHER_CONNECTION = UUID("01890a5d-ac96-774b-bcce-b302099a8058")


def material_of(entry: str) -> str:
    return entry.split(":", 1)[1]


def raw_material(entry: str) -> bytes:
    encoded = material_of(entry)
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


@pytest.fixture
def entry() -> str:
    return generate_key("k1")


@pytest.fixture
def cipher(entry: str) -> AesGcmCipher:
    return AesGcmCipher(parse_keys(entry))


@pytest.fixture
def blob(cipher: AesGcmCipher) -> bytes:
    return cipher.seal(b'{"access_token":"tok-123456"}', connection_id=CONNECTION)


# --- the cipher ----------------------------------------------------------------


def test_sealed_blob_opens_to_the_plaintext(cipher: AesGcmCipher) -> None:
    blob = cipher.seal(b"secret payload", connection_id=CONNECTION)

    assert cipher.open(blob, connection_id=CONNECTION) == b"secret payload"
    assert b"secret payload" not in blob


@settings(max_examples=200)
@given(plaintext=st.binary(max_size=4096), connection=st.uuids())
def test_arbitrary_plaintexts_round_trip(plaintext: bytes, connection: UUID) -> None:
    cipher = AesGcmCipher(KeyRing([Key.generate("hyp")]))

    assert cipher.open(
        cipher.seal(plaintext, connection_id=connection), connection_id=connection
    ) == (plaintext)


def test_flipping_any_single_byte_of_a_blob_fails_with_decryption_error(
    cipher: AesGcmCipher, blob: bytes
) -> None:
    for position in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(blob)
            tampered[position] ^= mask
            with pytest.raises(DecryptionError):
                cipher.open(bytes(tampered), connection_id=CONNECTION)


def test_blob_copied_to_another_connection_fails_to_decrypt(
    cipher: AesGcmCipher, blob: bytes
) -> None:
    with pytest.raises(DecryptionError) as caught:
        cipher.open(blob, connection_id=OTHER_CONNECTION)

    assert str(OTHER_CONNECTION) in str(caught.value)


def test_blob_relabelled_to_another_key_in_the_ring_fails_to_decrypt() -> None:
    first, second = Key.generate("aaaa"), Key.generate("bbbb")
    cipher = AesGcmCipher(KeyRing([first, second]))
    blob = cipher.seal(b"payload", connection_id=CONNECTION)

    relabelled = second.prefix + blob[len(first.prefix) :]

    with pytest.raises(DecryptionError):
        cipher.open(relabelled, connection_id=CONNECTION)


def test_blob_whose_key_is_not_in_the_ring_fails_naming_the_key_id_only(
    entry: str, blob: bytes
) -> None:
    other = AesGcmCipher(parse_keys(generate_key("k2")))

    with pytest.raises(UnknownKeyError) as caught:
        other.open(blob, connection_id=CONNECTION)

    message = str(caught.value)
    assert caught.value.key_id == "k1"
    assert "'k1'" in message
    assert material_of(entry) not in message
    assert raw_material(entry).hex() not in message
    assert isinstance(caught.value, DecryptionError)


def test_one_hundred_thousand_encryptions_never_repeat_a_nonce(cipher: AesGcmCipher) -> None:
    start = len(key_prefix("k1"))
    nonces = {
        cipher.seal(b"x", connection_id=CONNECTION)[start : start + NONCE_BYTES]
        for _ in range(100_000)
    }

    assert len(nonces) == 100_000


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"L",
        b"LV",
        b"LV\x01",
        b"LV\x01\x02k1",
        b"LV\x02\x02k1" + bytes(40),
        b"LV\x01\x00" + bytes(40),
        b"LV\x01\x21" + b"a" * 33 + bytes(40),
        b"LV\x01\x02k:" + bytes(40),
        b"LV\x01\x02\xff\xfe" + bytes(40),
        b"LV\x01\x02k1" + bytes(27),
        b"LV\x01\x02k1" + bytes(28),
        b"\x00" * 64,
        b"not a blob at all",
    ],
)
def test_truncated_empty_or_garbage_blobs_fail_with_decryption_error(
    cipher: AesGcmCipher, garbage: bytes
) -> None:
    with pytest.raises(DecryptionError):
        cipher.open(garbage, connection_id=CONNECTION)


def test_every_truncation_of_a_real_blob_fails_with_decryption_error(
    cipher: AesGcmCipher, blob: bytes
) -> None:
    for length in range(len(blob)):
        with pytest.raises(DecryptionError):
            cipher.open(blob[:length], connection_id=CONNECTION)


@settings(max_examples=300)
@given(garbage=st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_decryption_error(garbage: bytes) -> None:
    cipher = AesGcmCipher(KeyRing([Key.generate("k1")]))

    with pytest.raises(DecryptionError):
        cipher.open(garbage, connection_id=CONNECTION)


def test_blob_starts_with_the_prefix_of_its_key(cipher: AesGcmCipher, blob: bytes) -> None:
    assert blob.startswith(key_prefix("k1"))
    assert blob_key_id(blob) == "k1"
    assert key_prefix("k1") == key_prefix("k1")
    assert not key_prefix("k10").startswith(key_prefix("k1"))


def test_blobs_are_sealed_under_the_active_key() -> None:
    old, new = Key.generate("old"), Key.generate("new")
    ring = KeyRing([old, new], active="new")
    cipher = AesGcmCipher(ring)

    blob = cipher.seal(b"payload", connection_id=CONNECTION)

    assert blob_key_id(blob) == "new"
    assert cipher.is_current(blob)


def test_reseal_moves_a_blob_to_the_active_key_and_keeps_its_plaintext() -> None:
    old, new = Key.generate("old"), Key.generate("new")
    old_blob = AesGcmCipher(KeyRing([old])).seal(b"payload", connection_id=CONNECTION)
    cipher = AesGcmCipher(KeyRing([old, new], active="new"))

    resealed = cipher.reseal(old_blob, connection_id=CONNECTION)

    assert not cipher.is_current(old_blob)
    assert blob_key_id(resealed) == "new"
    assert cipher.open(resealed, connection_id=CONNECTION) == b"payload"


def test_blob_key_id_of_garbage_raises_decryption_error() -> None:
    with pytest.raises(DecryptionError):
        blob_key_id(b"garbage")


def test_connection_id_must_be_a_uuid(cipher: AesGcmCipher) -> None:
    with pytest.raises(InvalidArgumentError):
        cipher.seal(b"x", connection_id=str(CONNECTION))  # type: ignore[arg-type]


def test_invalid_key_ids_are_refused() -> None:
    for bad in ("", "a" * 33, "has space", "colon:id", "comma,id", "é"):
        with pytest.raises(KeyRingError):
            key_prefix(bad)


# --- keys and the ring ---------------------------------------------------------


def test_reprs_of_keys_rings_and_ciphers_show_ids_only(entry: str) -> None:
    ring = parse_keys(entry)
    cipher = AesGcmCipher(ring)
    raw = raw_material(entry)

    for text in (repr(ring.active), str(ring.active), repr(ring), str(ring), repr(cipher)):
        assert "k1" in text
        assert material_of(entry) not in text
        assert raw.hex() not in text
        assert base64.b64encode(raw).decode() not in text


def test_key_of_the_wrong_length_is_refused_with_its_length() -> None:
    with pytest.raises(KeyRingError, match="16 bytes long; keys must be 32 bytes"):
        Key("short", bytes(16))


def test_first_listed_key_is_active_unless_another_is_named() -> None:
    text = f"{generate_key('a')},{generate_key('b')}"

    assert parse_keys(text).active_id == "a"
    assert parse_keys(text, active="b").active_id == "b"
    assert parse_keys(text).ids == ("a", "b")


def test_keys_written_in_standard_base64_with_padding_load() -> None:
    material = os.urandom(KEY_BYTES)
    ring = parse_keys(f"std:{base64.b64encode(material).decode()}")

    assert ring.active_id == "std"


def test_entries_may_be_separated_by_commas_spaces_or_newlines() -> None:
    text = f" {generate_key('a')} ,\n{generate_key('b')}  {generate_key('c')},"

    assert parse_keys(text).ids == ("a", "b", "c")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("justsomebase64withoutid", "entry 1 of LINKVAULT_KEYS is not of the form id:base64key"),
        (":abc", "entry 1 of LINKVAULT_KEYS is not of the form id:base64key"),
        ("k1:", "entry 1 of LINKVAULT_KEYS is not of the form id:base64key"),
        ("bad!id:" + "A" * 43, "entry 1 of LINKVAULT_KEYS has an invalid key id"),
        ("k1:not*base64", "key 'k1' is not valid base64"),
        ("k1:abcde", "key 'k1' is not valid base64"),
        ("k1:" + base64.urlsafe_b64encode(bytes(16)).decode(), "key 'k1' is 16 bytes long"),
        ("k1:" + base64.urlsafe_b64encode(bytes(33)).decode(), "key 'k1' is 33 bytes long"),
        ("", "LINKVAULT_KEYS holds no keys"),
        (" , ", "LINKVAULT_KEYS holds no keys"),
    ],
)
def test_malformed_keys_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        parse_keys(text)


def test_duplicate_key_id_is_refused_naming_it() -> None:
    text = f"{generate_key('a')},{generate_key('a')}"

    with pytest.raises(KeyRingError, match="entry 2 of LINKVAULT_KEYS: key id 'a' appears"):
        parse_keys(text)


def test_unknown_active_key_is_refused_naming_it() -> None:
    with pytest.raises(KeyRingError, match="the active key 'zz' is not among"):
        parse_keys(generate_key("a"), active="zz")


def test_empty_ring_is_refused() -> None:
    with pytest.raises(KeyRingError, match="empty"):
        KeyRing([])


def test_key_ring_errors_never_quote_key_material() -> None:
    material = base64.urlsafe_b64encode(os.urandom(20)).decode()
    for text in (f"k1:{material}", material, f"k 1:{material}", f"k1:{material}*"):
        with pytest.raises(KeyRingError) as caught:
            parse_keys(text)
        assert material not in str(caught.value)
        assert material[:12] not in str(caught.value)


def test_key_ring_errors_are_configuration_errors() -> None:
    assert issubclass(KeyRingError, ConfigurationError)


def test_generated_entries_parse_into_distinct_32_byte_keys() -> None:
    first, second = generate_key(), generate_key()

    assert len(raw_material(first)) == KEY_BYTES
    assert raw_material(first) != raw_material(second)
    assert first.split(":")[0] != second.split(":")[0]
    assert parse_keys(f"{first},{second}").ids == (first.split(":")[0], second.split(":")[0])


def test_ring_can_gain_a_key_switch_active_and_drop_an_old_one() -> None:
    ring = KeyRing([Key.generate("old")])

    grown = ring.with_key(Key.generate("new"), activate=True)
    shrunk = grown.without("old")

    assert grown.active_id == "new"
    assert "old" in grown
    assert shrunk.ids == ("new",)
    assert ring.ids == ("old",)
    with pytest.raises(KeyRingError, match="active"):
        grown.without("new")
    with pytest.raises(UnknownKeyError):
        grown.without("never")


# --- key files -----------------------------------------------------------------


def test_key_file_is_created_with_mode_0600_and_announced_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys" / "linkvault.keys"
    caplog.set_level(logging.DEBUG)

    created = load_or_create_key_file(path)
    loaded = load_or_create_key_file(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert loaded.ids == created.ids
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    material = material_of(next(ln for ln in path.read_text().splitlines() if ":" in ln))
    assert material not in caplog.text


def test_key_file_is_created_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_or_create_key_file(tmp_path / "k.keys")
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "k.keys").stat().st_mode) == 0o600


def test_group_or_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.keys"
    path.write_text(generate_key("a") + "\n")
    path.chmod(0o644)

    with pytest.raises(KeyRingError, match=r"mode 0644.*chmod 600"):
        load_key_file(path)
    with pytest.raises(KeyRingError):
        load_or_create_key_file(path)


def test_key_file_with_comments_and_blank_lines_loads(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    path.write_text(
        f"# rotated 2026-03\n\n{generate_key('new')}  # active\n{generate_key('old')}\n"
    )
    path.chmod(0o600)

    ring = load_key_file(path)

    assert ring.ids == ("new", "old")
    assert ring.active_id == "new"


def test_key_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "k.keys"
    path.write_text(f"# header\n{generate_key('a')}\nb:tooshort\n")
    path.chmod(0o600)

    with pytest.raises(KeyRingError) as caught:
        load_key_file(path)

    assert f"line 3 of key file {path}: key 'b' is 6 bytes long" in str(caught.value)


def test_missing_key_file_error_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="linkvault keys generate"):
        load_key_file(tmp_path / "absent.keys")


# --- settings ------------------------------------------------------------------


def test_postgres_deployment_without_keys_is_refused_saying_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        keyring_from_settings(None, None, embedded=False, default_key_file=tmp_path / "k")

    assert "LINKVAULT_KEYS" in str(caught.value)
    assert "LINKVAULT_KEY_FILE" in str(caught.value)
    assert not (tmp_path / "k").exists()


def test_embedded_deployment_without_keys_creates_the_default_key_file(tmp_path: Path) -> None:
    ring = keyring_from_settings(None, None, embedded=True, default_key_file=tmp_path / "k")

    assert (tmp_path / "k").exists()
    assert load_key_file(tmp_path / "k").ids == ring.ids


def test_configured_keys_win_and_never_touch_the_default_file(tmp_path: Path) -> None:
    ring = keyring_from_settings(
        generate_key("env"), None, embedded=True, default_key_file=tmp_path / "k"
    )

    assert ring.active_id == "env"
    assert not (tmp_path / "k").exists()


def test_postgres_deployment_refuses_a_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist"):
        keyring_from_settings(None, tmp_path / "absent", embedded=False)

    assert not (tmp_path / "absent").exists()


def test_setting_both_keys_and_a_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="not both"):
        keyring_from_settings(generate_key("a"), tmp_path / "k", embedded=False)
