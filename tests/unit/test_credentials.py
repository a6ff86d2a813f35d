from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkvault.credentials import (
    ApiKeyCredentials,
    CertificateCredentials,
    CredentialPayload,
    CustomCredentials,
    FileImportCredentials,
    LinkTokenCredentials,
    OAuth2Tokens,
    deserialize_payload,
    open_credentials,
    seal_credentials,
    serialize_payload,
)
from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.domain import CredentialType, ProviderCredentials
from linkvault.errors import DecryptionError, InvalidConnectionError, InvalidCredentialsError
from linkvault.oauth import TokenResponse

CONNECTION = UUID("01890a5d-ac96-774b-bcce-b302099a8057")
OTHER_CONNECTION = UUID("01890a5d-ac96-774b-bcce-b302099a8058")
EXPIRY = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)

# Made fresh each run: no secret-looking literal is committed, and a leak cannot match by luck.
_RUN = "sekrit-" + secrets.token_hex(6)
_PEM_KEY_HEADER = "-----BEGIN " + "PRIVATE KEY-----"
SECRETS = (
    f"AT-{_RUN}-access",
    f"RT-{_RUN}-refresh",
    f"AK-{_RUN}-apikey",
    f"AS-{_RUN}-apisecret",
    f"LT-{_RUN}-link",
    f"-----BEGIN CERTIFICATE-----{_RUN}-cert",
    f"{_PEM_KEY_HEADER}{_RUN}-pkey",
    f"PP-{_RUN}-passphrase",
    f"CV-{_RUN}-custom",
)

PAYLOADS: list[CredentialPayload] = [
    OAuth2Tokens(
        access_token=SECRETS[0],
        refresh_token=SECRETS[1],
        token_type="Bearer",
        scope="accounts:read",
        expires_at=EXPIRY,
    ),
    OAuth2Tokens(access_token=SECRETS[0]),
    ApiKeyCredentials(api_key=SECRETS[2], api_secret=SECRETS[3]),
    ApiKeyCredentials(api_key=SECRETS[2]),
    LinkTokenCredentials(access_token=SECRETS[4], item_id="item-42", expires_at=EXPIRY),
    CertificateCredentials(certificate_pem=SECRETS[5], private_key_pem=SECRETS[6]),
    FileImportCredentials(source="broker-export.csv", passphrase=SECRETS[7]),
    FileImportCredentials(source="broker-export.csv"),
    CustomCredentials(values={"session": SECRETS[8], "pin": SECRETS[8] + "x"}),
]


def wrong(value: object) -> Any:
    return value


@pytest.fixture
def cipher() -> AesGcmCipher:
    return AesGcmCipher(KeyRing([Key.generate("k1")]))


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_every_payload_type_round_trips_through_seal_and_open(
    payload: CredentialPayload, cipher: AesGcmCipher
) -> None:
    sealed = seal_credentials(payload, connection_id=CONNECTION, cipher=cipher)

    assert sealed.credential_type is payload.credential_type
    assert open_credentials(sealed, connection_id=CONNECTION, cipher=cipher) == payload


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_reprs_of_payloads_and_sealed_credentials_contain_no_secret(
    payload: CredentialPayload, cipher: AesGcmCipher
) -> None:
    sealed = seal_credentials(payload, connection_id=CONNECTION, cipher=cipher)

    for text in (repr(payload), str(payload), f"{payload}", repr(sealed), str(sealed)):
        for secret in SECRETS:
            assert secret not in text
            assert "sekrit" not in text


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_sealed_bytes_contain_no_secret(payload: CredentialPayload, cipher: AesGcmCipher) -> None:
    sealed = seal_credentials(payload, connection_id=CONNECTION, cipher=cipher)

    assert b"sekrit" not in sealed.encrypted_data


def test_repr_shows_the_fields_that_are_not_secret() -> None:
    text = repr(PAYLOADS[0])

    assert "token_type='Bearer'" in text
    assert "scope='accounts:read'" in text
    assert "expires_at=2026-03-01T13:00:00+00:00" in text
    assert "access_token=<redacted>" in text


def test_expiry_of_the_sealed_credentials_comes_from_the_payload(cipher: AesGcmCipher) -> None:
    oauth = seal_credentials(PAYLOADS[0], connection_id=CONNECTION, cipher=cipher)
    link = seal_credentials(PAYLOADS[4], connection_id=CONNECTION, cipher=cipher)
    api = seal_credentials(PAYLOADS[2], connection_id=CONNECTION, cipher=cipher)

    assert oauth.expires_at == EXPIRY
    assert link.expires_at == EXPIRY
    assert api.expires_at is None


def test_expiry_in_another_zone_is_kept_as_the_same_instant_in_utc(cipher: AesGcmCipher) -> None:
    paris = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=1)))
    tokens = OAuth2Tokens(access_token="a", expires_at=paris)

    opened = open_credentials(
        seal_credentials(tokens, connection_id=CONNECTION, cipher=cipher),
        connection_id=CONNECTION,
        cipher=cipher,
    )

    assert isinstance(opened, OAuth2Tokens)
    assert opened.expires_at == EXPIRY
    assert opened.expires_at is not None
    assert opened.expires_at.tzinfo is UTC


def test_tokens_from_a_code_exchange_answer_are_what_the_provider_said() -> None:
    response = TokenResponse("access-1", "Bearer", "refresh-1", 1800, "accounts:read")

    tokens = OAuth2Tokens.from_response(response, expires_at=EXPIRY)

    assert tokens == OAuth2Tokens("access-1", "refresh-1", "Bearer", "accounts:read", EXPIRY)


def test_tokens_from_a_refresh_answer_keep_what_it_left_out() -> None:
    previous = OAuth2Tokens("access-0", "refresh-0", "mac", "accounts:read", EXPIRY)

    kept = OAuth2Tokens.from_response(TokenResponse("access-1"), expires_at=None, previous=previous)
    rotated = OAuth2Tokens.from_response(
        TokenResponse("access-2", "Bearer", "refresh-2", None, "accounts:write"),
        expires_at=EXPIRY,
        previous=previous,
    )

    assert kept == OAuth2Tokens("access-1", "refresh-0", "Bearer", "accounts:read", None)
    assert rotated == OAuth2Tokens("access-2", "refresh-2", "Bearer", "accounts:write", EXPIRY)


def test_credentials_sealed_for_one_connection_do_not_open_for_another(
    cipher: AesGcmCipher,
) -> None:
    sealed = seal_credentials(PAYLOADS[0], connection_id=CONNECTION, cipher=cipher)

    with pytest.raises(DecryptionError):
        open_credentials(sealed, connection_id=OTHER_CONNECTION, cipher=cipher)


def test_credentials_whose_type_column_was_changed_fail_to_open(cipher: AesGcmCipher) -> None:
    sealed = seal_credentials(PAYLOADS[2], connection_id=CONNECTION, cipher=cipher)
    relabelled = ProviderCredentials(sealed.encrypted_data, CredentialType.OAUTH2)

    with pytest.raises(DecryptionError, match="api_key"):
        open_credentials(relabelled, connection_id=CONNECTION, cipher=cipher)


def test_open_with_an_expected_type_narrows_or_refuses(cipher: AesGcmCipher) -> None:
    sealed = seal_credentials(PAYLOADS[0], connection_id=CONNECTION, cipher=cipher)

    tokens = open_credentials(sealed, connection_id=CONNECTION, cipher=cipher, expect=OAuth2Tokens)
    assert tokens.refresh_token == SECRETS[1]
    with pytest.raises(InvalidCredentialsError, match="not api_key"):
        open_credentials(sealed, connection_id=CONNECTION, cipher=cipher, expect=ApiKeyCredentials)


def test_serialized_payload_is_compact_json_tagged_with_type_and_version() -> None:
    data = serialize_payload(ApiKeyCredentials(api_key="k"))

    assert data == b'{"v":1,"type":"api_key","api_key":"k"}'
    assert json.loads(data) == {"v": 1, "type": "api_key", "api_key": "k"}


@given(
    access=st.text(min_size=1).filter(lambda s: "\x00" not in s),
    refresh=st.none() | st.text(min_size=1).filter(lambda s: "\x00" not in s),
    scope=st.none() | st.text(min_size=1).filter(lambda s: "\x00" not in s),
    expires=st.none() | st.datetimes(timezones=st.just(UTC)),
)
def test_arbitrary_oauth2_tokens_serialize_and_parse_back(
    access: str, refresh: str | None, scope: str | None, expires: datetime | None
) -> None:
    tokens = OAuth2Tokens(
        access_token=access, refresh_token=refresh, scope=scope, expires_at=expires
    )

    assert deserialize_payload(serialize_payload(tokens)) == tokens


@given(values=st.dictionaries(st.text(min_size=1), st.text(min_size=1), min_size=1))
def test_arbitrary_custom_values_serialize_and_parse_back(values: dict[str, str]) -> None:
    values = {k: v for k, v in values.items() if "\x00" not in v}
    if not values:
        return
    custom = CustomCredentials(values=values)

    assert deserialize_payload(serialize_payload(custom)) == custom


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"type":"oauth2","access_token":"a"}',
        b'{"v":2,"type":"oauth2","access_token":"a"}',
        b'{"v":1,"type":"telepathy","access_token":"a"}',
        b'{"v":1,"type":["oauth2"],"access_token":"a"}',
        b'{"v":1,"type":"oauth2"}',
        b'{"v":1,"type":"oauth2","access_token":"a","extra":"b"}',
        b'{"v":1,"type":"oauth2","access_token":5}',
        b'{"v":1,"type":"oauth2","access_token":"a","expires_at":"yesterday"}',
        b'{"v":1,"type":"oauth2","access_token":"a","expires_at":5}',
        b'{"v":1,"type":"oauth2","access_token":"a","expires_at":"2026-03-01T12:00:00"}',
        b'{"v":1,"type":"custom","values":"x"}',
        b'{"v":1,"type":"oauth2","access_token":""}',
        b'{"v":1,"type":"oauth2","access_token":"a\\u0000b"}',
        b'{"v":1,"type":"oauth2","access_token":"a","refresh_token":""}',
        b'{"v":1,"type":"oauth2","access_token":"a","token_type":null}',
        b'{"v":1,"type":"api_key","api_key":"k","api_secret":""}',
        b'{"v":1,"type":"link_token","access_token":"a","item_id":"i","extra":1}',
        b'{"v":"1","type":"oauth2","access_token":"a"}',
    ],
)
def test_malformed_payloads_fail_with_decryption_error(data: bytes) -> None:
    with pytest.raises(DecryptionError):
        deserialize_payload(data)


def test_an_expiry_with_an_offset_is_read_back_in_utc() -> None:
    data = b'{"v":1,"type":"oauth2","access_token":"a","expires_at":"2026-03-01T14:00:00+02:00"}'

    tokens = deserialize_payload(data)

    assert isinstance(tokens, OAuth2Tokens)
    assert tokens.expires_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert tokens.expires_at is not None
    assert tokens.expires_at.tzinfo is UTC


def test_payloads_written_by_the_json_module_still_open() -> None:
    # What linkvault wrote before msgspec: isoformat "+00:00" expiries, ensure_ascii off.
    data = (
        '{"v":1,"type":"oauth2","access_token":"ä-tok","refresh_token":"r","token_type":'
        '"Bearer","scope":"s","expires_at":"2026-03-01T12:00:00.123456+00:00"}'
    ).encode()

    assert deserialize_payload(data) == OAuth2Tokens(
        access_token="ä-tok",
        refresh_token="r",
        scope="s",
        expires_at=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    )


def test_malformed_payload_errors_never_echo_the_plaintext() -> None:
    data = b'{"v":1,"type":"oauth2","access_token":"AT-sekrit","bogus":"RT-sekrit"'

    with pytest.raises(DecryptionError) as caught:
        deserialize_payload(data)

    assert "sekrit" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    "build",
    [
        lambda: OAuth2Tokens(access_token=""),
        lambda: OAuth2Tokens(access_token=wrong(123)),
        lambda: OAuth2Tokens(access_token="a", refresh_token=""),
        lambda: OAuth2Tokens(access_token="a\x00b"),
        lambda: OAuth2Tokens(access_token="a", token_type=""),
        lambda: OAuth2Tokens(access_token="a", expires_at=datetime(2026, 3, 1)),
        lambda: OAuth2Tokens(access_token="a", expires_at=wrong("2026-03-01")),
        lambda: ApiKeyCredentials(api_key=wrong(None)),
        lambda: LinkTokenCredentials(access_token="a", item_id=""),
        lambda: CertificateCredentials(certificate_pem="c", private_key_pem=wrong(b"k")),
        lambda: FileImportCredentials(source=""),
        lambda: CustomCredentials(values={}),
        lambda: CustomCredentials(values=wrong({"a": 1})),
        lambda: CustomCredentials(values={"": "x"}),
        lambda: CustomCredentials(values=wrong("a=b")),
    ],
)
def test_invalid_payload_fields_raise_a_typed_error(build: object) -> None:
    assert callable(build)
    with pytest.raises(InvalidCredentialsError):
        build()


def test_validation_errors_never_echo_the_secret_value() -> None:
    with pytest.raises(InvalidCredentialsError) as caught:
        OAuth2Tokens(access_token="AT-sekrit\x00tail")

    assert "sekrit" not in str(caught.value)
    assert "OAuth2Tokens.access_token" in str(caught.value)
    assert isinstance(caught.value, InvalidConnectionError)


def test_custom_values_are_copied_and_read_only() -> None:
    source = {"session": "s1"}
    custom = CustomCredentials(values=source)
    source["session"] = "changed"

    assert custom.values["session"] == "s1"
    with pytest.raises(TypeError):
        custom.values["session"] = "x"  # type: ignore[index]


def test_payloads_are_frozen() -> None:
    tokens = OAuth2Tokens(access_token="a")

    with pytest.raises(AttributeError):
        tokens.access_token = "b"  # type: ignore[misc]
