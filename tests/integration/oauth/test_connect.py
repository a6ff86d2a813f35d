from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID, uuid4

import pytest

from linkvault.credentials import ApiKeyCredentials, OAuth2Tokens, open_credentials
from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.domain import ConnectionStatus, CredentialType, ProviderConnection
from linkvault.errors import InvalidArgumentError, InvalidStateError, InvalidTransitionError
from linkvault.oauth import HttpxTokenClient, TokenResponse, code_challenge_s256
from linkvault.providers import Provider, ProviderRegistry, load_registry
from linkvault.services.connect import AuthorizationStart, ConnectService, hash_state
from linkvault.stores import ConnectionStore
from linkvault.testing import (
    FakeClock,
    FaultKind,
    RunningSandbox,
)
from tests.sandbox_fixtures import drive_consent

REDIRECT = "http://127.0.0.1:9/callback"
KEY_PROVIDER_ID = UUID("0b9f6a7e-7d0c-4f55-9d55-3c1b1e0f5a01")
KEY_PROVIDERS_TOML = f"""
[[providers]]
slug = "keyco"
id = "{KEY_PROVIDER_ID}"
display_name = "KeyCo"
auth_style = "api_key"
"""


class RecordingTokenClient(HttpxTokenClient):
    """A real token client that remembers which codes and verifiers it sent."""

    def __init__(self, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.sent: list[str] = []
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def exchange_code(
        self, provider: Provider, *, code: str, redirect_uri: str, code_verifier: str | None
    ) -> TokenResponse:
        self.sent += [code, *([code_verifier] if code_verifier else [])]
        response = await super().exchange_code(
            provider, code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        if self.meanwhile is not None:
            await self.meanwhile()
        return response


@dataclass
class Connect:
    service: ConnectService
    store: ConnectionStore
    cipher: AesGcmCipher
    registry: ProviderRegistry
    running: RunningSandbox
    clock: FakeClock
    tokens: RecordingTokenClient
    user: UUID = field(default_factory=uuid4)

    async def start(self, **kwargs: str) -> AuthorizationStart:
        return await self.service.start_oauth(
            user_id=self.user, provider_slug="sandbox", redirect_uri=REDIRECT, **kwargs
        )

    async def connect(self, subject: str = "alice") -> ProviderConnection:
        started = await self.start()
        params = await drive_consent(started.authorize_url, subject=subject)
        result = await self.service.complete_oauth(state=params["state"], code=params["code"])
        assert result.succeeded, result.error
        return result.connection

    async def stored(self, connection_id: UUID) -> ProviderConnection:
        conn = await self.store.find_by_id(connection_id)
        assert conn is not None
        return conn

    def tokens_of(self, conn: ProviderConnection) -> OAuth2Tokens:
        assert conn.credentials is not None
        return open_credentials(
            conn.credentials, connection_id=conn.id, cipher=self.cipher, expect=OAuth2Tokens
        )

    def issued(self, grant_type: str = "authorization_code") -> int:
        count: int = self.running.sandbox.stats()["issued"].get(grant_type, 0)
        return count


@pytest.fixture
async def connect(
    store: ConnectionStore, running_sandbox: RunningSandbox, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Connect]:
    providers = tmp_path / "providers.toml"
    providers.write_text(KEY_PROVIDERS_TOML, encoding="utf-8")
    registry = load_registry(providers, env=running_sandbox.env())
    cipher = AesGcmCipher(KeyRing([Key.generate("k1")]))
    async with RecordingTokenClient(timeout=5.0) as tokens:
        service = ConnectService(store, registry, tokens, cipher, clock=clock)
        yield Connect(service, store, cipher, registry, running_sandbox, clock, tokens)


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


# --- start ----------------------------------------------------------------------------


async def test_start_saves_a_pending_connection_and_returns_a_pkce_authorize_url(
    connect: Connect,
) -> None:
    started = await connect.start(alias="main")

    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.PENDING
    assert stored.credentials is None
    assert (stored.user_id, stored.provider_slug, stored.alias) == (connect.user, "sandbox", "main")
    assert started.authorize_url.startswith(f"{connect.running.url}/oauth/authorize?")
    query = query_of(started.authorize_url)
    assert query["response_type"] == "code"
    assert query["redirect_uri"] == REDIRECT
    assert query["client_id"] == "linkvault-sandbox"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 32
    assert len(query["code_challenge"]) == 43
    assert "code_verifier" not in query


async def test_the_state_is_stored_hashed_with_a_sealed_verifier_behind_the_challenge(
    connect: Connect,
) -> None:
    started = await connect.start()
    query = query_of(started.authorize_url)

    assert await connect.store.take_state(query["state"].encode()) is None
    pending = await connect.store.take_state(hash_state(query["state"]))

    assert pending is not None
    assert pending.connection_id == started.connection.id
    assert pending.state_hash == hashlib.sha256(query["state"].encode()).digest()
    assert pending.expires_at - pending.created_at == timedelta(minutes=10)
    assert pending.created_at == connect.clock.now
    verifier = connect.cipher.open(pending.sealed_verifier, connection_id=pending.connection_id)
    assert verifier not in pending.sealed_verifier
    assert code_challenge_s256(verifier.decode()) == query["code_challenge"]
    assert verifier.decode() not in started.authorize_url
    assert query["state"] not in repr(pending)


async def test_two_starts_get_different_states_and_verifiers(connect: Connect) -> None:
    first, second = (
        query_of((await connect.start()).authorize_url),
        query_of((await connect.start()).authorize_url),
    )

    assert first["state"] != second["state"]
    assert first["code_challenge"] != second["code_challenge"]


async def test_an_oauth_start_for_an_api_key_provider_is_refused(connect: Connect) -> None:
    with pytest.raises(InvalidArgumentError, match="does not use OAuth2"):
        await connect.service.start_oauth(
            user_id=connect.user, provider_slug="keyco", redirect_uri=REDIRECT
        )


# --- callback -------------------------------------------------------------------------


async def test_consent_at_the_sandbox_makes_the_connection_active_with_the_issued_tokens(
    connect: Connect,
) -> None:
    started = await connect.start(alias="main")
    params = await drive_consent(started.authorize_url, subject="alice")

    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.succeeded
    assert result.error is None
    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.ACTIVE
    assert stored.status_reason is None
    assert stored.connected_at == connect.clock.now
    assert stored.alias == "main"
    [grant] = connect.running.sandbox.grants("alice")
    tokens = connect.tokens_of(stored)
    assert tokens.access_token == grant["access_token"]
    assert tokens.refresh_token == grant["refresh_token"]
    assert tokens.scope == "accounts:read"
    assert tokens.expires_at == connect.clock.now + timedelta(seconds=1800)
    assert stored.credentials is not None
    assert stored.credentials.credential_type is CredentialType.OAUTH2
    assert stored.credentials.expires_at == tokens.expires_at
    assert connect.issued() == 1


async def test_a_state_works_once(connect: Connect) -> None:
    started = await connect.start()
    params = await drive_consent(started.authorize_url)
    await connect.service.complete_oauth(state=params["state"], code=params["code"])

    with pytest.raises(InvalidStateError, match="start the connection again"):
        await connect.service.complete_oauth(state=params["state"], code=params["code"])
    assert connect.issued() == 1


async def test_an_unknown_or_missing_state_is_refused_before_any_exchange(
    connect: Connect,
) -> None:
    await connect.start()

    with pytest.raises(InvalidStateError):
        await connect.service.complete_oauth(state="forged", code="anything")
    with pytest.raises(InvalidStateError):
        await connect.service.complete_oauth(state="", code="anything")
    assert connect.tokens.sent == []


async def test_a_state_still_works_at_ten_minutes(connect: Connect) -> None:
    started = await connect.start()
    params = await drive_consent(started.authorize_url)
    connect.clock.advance(minutes=10)

    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.succeeded
    assert result.connection.status is ConnectionStatus.ACTIVE


async def test_a_callback_after_ten_minutes_fails_the_connection_without_an_exchange(
    connect: Connect,
) -> None:
    started = await connect.start()
    params = await drive_consent(started.authorize_url)
    connect.clock.advance(minutes=10, seconds=1)

    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert not result.succeeded
    assert result.error is not None
    assert "expired" in result.error
    assert "start again" in result.error
    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.FAILED
    assert stored.status_reason == result.error
    assert stored.credentials is None
    assert connect.tokens.sent == []
    assert connect.issued() == 0
    with pytest.raises(InvalidStateError):
        await connect.service.complete_oauth(state=params["state"], code=params["code"])


async def test_a_denied_consent_fails_the_connection_with_a_reason_the_user_can_act_on(
    connect: Connect,
) -> None:
    started = await connect.start(return_to="https://app.example/links")
    params = await drive_consent(started.authorize_url, approve=False)
    assert params["error"] == "access_denied"

    result = await connect.service.complete_oauth(state=params["state"], error=params["error"])

    assert result.error == "access was denied at the provider: start again to retry"
    assert result.return_to == "https://app.example/links"
    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.FAILED
    assert stored.status_reason == result.error
    assert connect.tokens.sent == []


async def test_a_refused_code_fails_the_connection_and_stores_no_tokens(
    connect: Connect,
) -> None:
    started = await connect.start()
    params = await drive_consent(started.authorize_url)

    result = await connect.service.complete_oauth(state=params["state"], code="not-the-code")

    assert result.error is not None
    assert "refused the code" in result.error
    assert "invalid_grant" in result.error
    assert "start again" in result.error
    assert "not-the-code" not in result.error
    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.FAILED
    assert stored.status_reason == result.error
    assert stored.credentials is None
    stats = connect.running.sandbox.stats()
    assert stats["refused"]["authorization_code"] == {"code_unknown": 1}
    assert connect.issued() == 0


async def test_a_provider_outage_during_the_exchange_fails_the_connection_without_tokens(
    connect: Connect,
) -> None:
    started = await connect.start()
    params = await drive_consent(started.authorize_url)
    connect.running.sandbox.inject_fault(
        FaultKind.SERVER_ERROR, status=503, grant_type="authorization_code"
    )

    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.error is not None
    assert "HTTP 503" in result.error
    assert "unavailable" in result.error
    assert "try again" in result.error
    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.FAILED
    assert stored.credentials is None
    assert connect.issued() == 0


async def test_a_callback_without_code_or_error_fails_the_connection(connect: Connect) -> None:
    started = await connect.start()
    state = query_of(started.authorize_url)["state"]

    result = await connect.service.complete_oauth(state=state)

    assert result.error is not None
    assert "no authorization code" in result.error
    assert (await connect.stored(started.connection.id)).status is ConnectionStatus.FAILED


async def test_a_callback_for_a_connection_disconnected_meanwhile_exchanges_nothing(
    connect: Connect,
) -> None:
    started = await connect.start()
    params = await drive_consent(started.authorize_url)
    pending = await connect.stored(started.connection.id)
    pending.mark_disconnected(now=connect.clock.now)
    await connect.store.save(pending)

    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.error is not None
    assert "disconnected" in result.error
    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.DISCONNECTED
    assert stored.credentials is None
    assert connect.tokens.sent == []
    assert connect.issued() == 0


async def test_a_disconnect_during_the_exchange_wins_and_the_new_tokens_are_dropped(
    connect: Connect,
) -> None:
    started = await connect.start()
    params = await drive_consent(started.authorize_url)

    async def disconnect() -> None:
        conn = await connect.stored(started.connection.id)
        conn.mark_disconnected(now=connect.clock.now)
        await connect.store.save(conn)

    connect.tokens.meanwhile = disconnect
    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.error is not None
    assert "disconnected" in result.error
    assert connect.issued() == 1
    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.DISCONNECTED
    assert stored.credentials is None


async def test_a_rename_during_the_exchange_is_kept_and_the_connection_becomes_active(
    connect: Connect,
) -> None:
    started = await connect.start(alias="old name")
    params = await drive_consent(started.authorize_url, subject="alice")

    async def rename() -> None:
        conn = await connect.stored(started.connection.id)
        conn.rename("new name", now=connect.clock.now)
        await connect.store.save(conn)

    connect.tokens.meanwhile = rename
    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.succeeded
    stored = await connect.stored(started.connection.id)
    assert (stored.status, stored.alias) == (ConnectionStatus.ACTIVE, "new name")
    [grant] = connect.running.sandbox.grants("alice")
    assert connect.tokens_of(stored).access_token == grant["access_token"]
    assert result.connection.version == stored.version


# --- API keys ---------------------------------------------------------------------------


async def test_an_api_key_provider_connects_in_one_call(connect: Connect) -> None:
    conn = await connect.service.connect_with_credentials(
        user_id=connect.user,
        provider_slug="keyco",
        credentials=ApiKeyCredentials("key-123", "secret-456"),
        alias="keys",
    )

    stored = await connect.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE
    assert (stored.provider_id, stored.provider_slug, stored.alias) == (
        KEY_PROVIDER_ID,
        "keyco",
        "keys",
    )
    assert stored.credentials is not None
    assert stored.credentials.credential_type is CredentialType.API_KEY
    assert stored.credentials.expires_at is None
    opened = open_credentials(
        stored.credentials, connection_id=stored.id, cipher=connect.cipher, expect=ApiKeyCredentials
    )
    assert (opened.api_key, opened.api_secret) == ("key-123", "secret-456")
    assert b"key-123" not in stored.credentials.encrypted_data


async def test_credentials_for_an_oauth_provider_are_refused(connect: Connect) -> None:
    with pytest.raises(InvalidArgumentError, match="OAuth2"):
        await connect.service.connect_with_credentials(
            user_id=connect.user,
            provider_slug="sandbox",
            credentials=ApiKeyCredentials("key-123"),
        )
    assert await connect.store.find_by_user_id(connect.user) == []


# --- reconnect --------------------------------------------------------------------------


async def broken(connect: Connect, status: ConnectionStatus) -> ProviderConnection:
    if status is ConnectionStatus.FAILED:
        started = await connect.start()
        params = await drive_consent(started.authorize_url, approve=False)
        await connect.service.complete_oauth(state=params["state"], error=params["error"])
        return await connect.stored(started.connection.id)
    conn = await connect.connect("alice")
    if status is ConnectionStatus.EXPIRED:
        conn.mark_expired("the provider refused the refresh", now=connect.clock.now)
    else:
        conn.mark_revoked("the user revoked access", now=connect.clock.now)
    await connect.store.save(conn)
    return conn


@pytest.mark.parametrize(
    "status", [ConnectionStatus.EXPIRED, ConnectionStatus.REVOKED, ConnectionStatus.FAILED]
)
async def test_reconnect_takes_a_broken_connection_through_consent_again_keeping_its_id(
    connect: Connect, status: ConnectionStatus
) -> None:
    conn = await broken(connect, status)
    assert conn.status is status
    connect.clock.advance(hours=1)

    again = await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    assert again.connection.id == conn.id
    assert query_of(again.authorize_url)["code_challenge_method"] == "S256"
    params = await drive_consent(again.authorize_url, subject="bob")
    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.succeeded
    stored = await connect.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE
    assert stored.status_reason is None
    assert stored.connected_at == connect.clock.now
    assert [c.id for c in await connect.store.find_by_user_id(connect.user)] == [conn.id]
    [grant] = connect.running.sandbox.grants("bob")
    tokens = connect.tokens_of(stored)
    assert (tokens.access_token, tokens.refresh_token) == (
        grant["access_token"],
        grant["refresh_token"],
    )


async def test_a_failed_reconnect_keeps_the_connection_in_its_earlier_status(
    connect: Connect,
) -> None:
    conn = await broken(connect, ConnectionStatus.EXPIRED)
    again = await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    params = await drive_consent(again.authorize_url, approve=False)

    result = await connect.service.complete_oauth(state=params["state"], error=params["error"])

    assert result.error is not None
    assert "denied" in result.error
    stored = await connect.stored(conn.id)
    assert stored.status is ConnectionStatus.EXPIRED
    assert stored.credentials == conn.credentials


async def test_reconnect_of_a_disconnected_connection_is_refused(connect: Connect) -> None:
    conn = await connect.connect()
    conn.mark_disconnected(now=connect.clock.now)
    await connect.store.save(conn)

    with pytest.raises(InvalidTransitionError):
        await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    assert (await connect.stored(conn.id)).status is ConnectionStatus.DISCONNECTED


async def test_an_active_connection_renews_its_consent_and_stays_active_throughout(
    connect: Connect,
) -> None:
    conn = await connect.connect("alice")
    first_consent = conn.connected_at
    connect.clock.advance(days=6)

    again = await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    waiting = await connect.stored(conn.id)
    assert (waiting.status, waiting.credentials) == (ConnectionStatus.ACTIVE, conn.credentials)
    params = await drive_consent(again.authorize_url, subject="alice")
    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.succeeded, result.error
    stored = await connect.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE
    assert stored.connected_at == connect.clock.now != first_consent
    newest = connect.running.sandbox.grants("alice")[-1]
    assert connect.tokens_of(stored).access_token == newest["access_token"]
    last = (await connect.store.connection_events(conn.id))[-1]
    assert (last.event.type.value, last.event.from_status, last.event.to_status) == (
        "connection.activated",
        "active",
        "active",
    )
    assert last.event.reason == "consent renewed"


async def test_a_renewal_the_user_abandons_leaves_the_connection_as_it_was(
    connect: Connect,
) -> None:
    conn = await connect.connect("alice")
    again = await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    params = await drive_consent(again.authorize_url, approve=False)

    result = await connect.service.complete_oauth(state=params["state"], error=params["error"])
    connect.clock.advance(minutes=11)
    await connect.service.fail_lapsed()

    assert result.error is not None
    stored = await connect.stored(conn.id)
    assert (stored.status, stored.status_reason) == (ConnectionStatus.ACTIVE, None)
    assert (stored.credentials, stored.connected_at) == (conn.credentials, conn.connected_at)


async def test_a_renewal_finished_after_the_consent_ended_reconnects_the_expired_connection(
    connect: Connect,
) -> None:
    conn = await connect.connect("alice")
    again = await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    params = await drive_consent(again.authorize_url, subject="alice")
    ended = await connect.stored(conn.id)
    ended.mark_expired("the consent ended", now=connect.clock.now)
    await connect.store.save(ended)

    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])

    assert result.succeeded, result.error
    stored = await connect.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE
    last = (await connect.store.connection_events(conn.id))[-1]
    assert (last.event.from_status, last.event.to_status) == ("expired", "active")


async def test_a_second_callback_for_a_connection_already_reconnected_exchanges_nothing(
    connect: Connect,
) -> None:
    conn = await broken(connect, ConnectionStatus.EXPIRED)
    first = await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    second = await connect.service.reconnect(conn.id, redirect_uri=REDIRECT)
    first_params = await drive_consent(first.authorize_url, subject="bob")
    second_params = await drive_consent(second.authorize_url, subject="carol")
    assert (await connect.service.complete_oauth(**first_params)).succeeded
    sent = len(connect.tokens.sent)

    result = await connect.service.complete_oauth(**second_params)

    assert result.error is not None
    assert "already active" in result.error
    assert len(connect.tokens.sent) == sent
    stored = await connect.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE
    [grant] = connect.running.sandbox.grants("bob")
    assert connect.tokens_of(stored).access_token == grant["access_token"]


# --- secrets ----------------------------------------------------------------------------


def texts_of(records: Iterable[logging.LogRecord]) -> list[str]:
    out = []
    for record in records:
        out.append(record.getMessage())
        out.append(repr(record.args))
        out.extend(repr(value) for value in vars(record).values())
    return out


async def consent_unlogged(
    caplog: pytest.LogCaptureFixture, url: str, subject: str = "sandbox-user"
) -> dict[str, str]:
    # The test's browser logs the redirect carrying the code; that is not linkvault's doing.
    before = len(caplog.records)
    params = await drive_consent(url, subject=subject)
    del caplog.records[before:]
    return params


async def test_codes_verifiers_states_and_tokens_never_reach_logs_or_reprs(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    started = await connect.start()
    state = query_of(started.authorize_url)["state"]
    params = await consent_unlogged(caplog, started.authorize_url, subject="alice")
    result = await connect.service.complete_oauth(state=params["state"], code=params["code"])
    bad = await connect.start()
    bad_params = await consent_unlogged(caplog, bad.authorize_url)
    failed = await connect.service.complete_oauth(state=bad_params["state"], code="wrong-code-1")

    [grant] = connect.running.sandbox.grants("alice")
    stored = await connect.stored(started.connection.id)
    secrets = [
        params["code"],
        bad_params["code"],
        "wrong-code-1",
        state,
        *connect.tokens.sent,
        grant["access_token"],
        grant["refresh_token"],
    ]
    assert len(connect.tokens.sent) == 4  # two codes, two verifiers
    seen = [
        *texts_of(caplog.records),
        repr(started),
        str(started),
        repr(result),
        repr(failed),
        repr(stored),
        repr(stored.credentials),
        repr(connect.tokens_of(stored)),
        repr(connect.service),
        failed.error or "",
    ]
    assert caplog.records, "the flow logged nothing at DEBUG: the scan would prove nothing"
    for secret in secrets:
        assert all(secret not in text for text in seen), "a secret leaked"


async def test_an_authorization_nobody_completes_fails_its_connection_with_an_event(
    connect: Connect,
) -> None:
    started = await connect.start()
    late = await drive_consent(started.authorize_url)  # its callback never comes in time
    answered = await connect.start()
    params = await drive_consent(answered.authorize_url, subject="bob")
    assert (
        await connect.service.complete_oauth(state=params["state"], code=params["code"])
    ).succeeded
    connect.clock.advance(minutes=10)
    assert await connect.service.fail_lapsed() == 0  # still valid at ten minutes
    connect.clock.advance(seconds=1)

    assert await connect.service.fail_lapsed() == 1
    assert await connect.service.fail_lapsed() == 0

    stored = await connect.stored(started.connection.id)
    assert stored.status is ConnectionStatus.FAILED
    assert stored.status_reason == "authorization was not completed"
    assert (await connect.stored(answered.connection.id)).status is ConnectionStatus.ACTIVE
    last = (await connect.store.connection_events(stored.id))[-1]
    assert (last.event.type.value, last.event.from_status, last.event.to_status) == (
        "connection.failed",
        "pending",
        "failed",
    )
    assert last.event.reason == "authorization was not completed"
    # A callback that comes after all is refused with a reason, and changes nothing.
    result = await connect.service.complete_oauth(state=late["state"], code=late["code"])
    assert not result.succeeded
    assert result.error
    assert (await connect.stored(stored.id)).status_reason == "authorization was not completed"
    assert late["code"] not in connect.tokens.sent
