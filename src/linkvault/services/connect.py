"""Connecting a user to a provider: OAuth2 authorization code with PKCE, or an API key at once."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from linkvault.credentials import (
    ApiKeyCredentials,
    CredentialPayload,
    OAuth2Tokens,
    seal_credentials,
)
from linkvault.domain import (
    Clock,
    ConnectionStatus,
    ProviderConnection,
    ProviderCredentials,
    can_transition,
    utc_now,
)
from linkvault.errors import (
    ConfigurationError,
    DecryptionError,
    InvalidArgumentError,
    InvalidCredentialsError,
    InvalidStateError,
    InvalidTransitionError,
    NotAcceptedError,
    NotFoundError,
    OAuthError,
    ProviderUnavailableError,
    RateLimitedError,
    StaleConnectionError,
    UnknownProviderError,
)
from linkvault.oauth import (
    TokenResponse,
    build_authorize_url,
    code_challenge_s256,
    generate_code_verifier,
    generate_state,
    token_expiry,
)
from linkvault.origins import ReturnOrigins
from linkvault.ports import Cipher
from linkvault.providers import AuthStyle, Provider, ProviderRegistry
from linkvault.services.connections import provider_of
from linkvault.services.retry import save_with_retry
from linkvault.stores import ConnectionStore
from linkvault.stores.common import PendingAuthorization

STATE_TTL = timedelta(minutes=10)
LAPSED_REASON = "authorization was not completed"

log = logging.getLogger("linkvault.connect")

_REAUTHORIZABLE = frozenset(
    {
        ConnectionStatus.PENDING,
        ConnectionStatus.EXPIRED,
        ConnectionStatus.REVOKED,
        ConnectionStatus.FAILED,
    }
)

_NOT_CONNECTABLE = {
    ConnectionStatus.ACTIVE: "the connection is already active",
    ConnectionStatus.DISCONNECTED: "the connection was disconnected: connect the provider anew",
}


class CodeExchanger(Protocol):
    """The part of the token client the connect flow needs."""

    async def exchange_code(
        self, provider: Provider, *, code: str, redirect_uri: str, code_verifier: str | None
    ) -> TokenResponse: ...


@dataclass(frozen=True, slots=True, repr=False)
class AuthorizationStart:
    """Where to send the user, for which connection, until when."""

    connection: ProviderConnection
    authorize_url: str

    def __repr__(self) -> str:
        return f"AuthorizationStart(connection_id={self.connection.id})"


@dataclass(frozen=True, slots=True)
class CallbackResult:
    """How a callback ended: the connection, where to send the user, and what went wrong."""

    connection: ProviderConnection
    return_to: str | None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


# RFC 6749 4.1.2.1: the only error text of a callback that is stored. Anything else came
# from whoever holds the state, and may be markup, escape sequences or a lie.
_CALLBACK_ERRORS = {
    "access_denied": "access was denied at the provider",
    "invalid_request": "the provider found the authorization request invalid",
    "unauthorized_client": "the provider does not allow this client to connect",
    "unsupported_response_type": "the provider does not support this authorization flow",
    "invalid_scope": "the provider refused the requested scopes",
    "server_error": "the provider failed while asking for consent",
    "temporarily_unavailable": "the provider was temporarily unavailable",
}


def callback_error_reason(error: str) -> str:
    """The stored reason for a callback's `error`: a known code's meaning, never its text."""
    return _CALLBACK_ERRORS.get(error, "the provider answered with an unknown error")


def connection_with_credentials(
    provider: Provider,
    *,
    user_id: UUID,
    credentials: CredentialPayload,
    cipher: Cipher,
    alias: str | None = None,
    now: datetime | None = None,
) -> ProviderConnection:
    """A new ACTIVE connection holding `credentials`, sealed to it; save it to keep it."""
    at = now or utc_now()
    conn = ProviderConnection(
        user_id=user_id,
        provider_id=provider.id,
        provider_slug=provider.slug,
        alias=alias,
        created_at=at,
        updated_at=at,
    )
    conn.mark_connected(seal_credentials(credentials, connection_id=conn.id, cipher=cipher), now=at)
    return conn


def hash_state(state: str) -> bytes:
    """States are stored hashed: a database read does not yield a usable callback."""
    return hashlib.sha256(state.encode("utf-8")).digest()


class ConnectService:
    """Starts and completes connections; every change goes through the domain's verbs."""

    def __init__(
        self,
        store: ConnectionStore,
        registry: ProviderRegistry,
        tokens: CodeExchanger,
        cipher: Cipher,
        *,
        clock: Clock = utc_now,
        state_ttl: timedelta = STATE_TTL,
        return_origins: ReturnOrigins | None = None,
    ) -> None:
        """`return_origins`: where `return_to` may point; None leaves `return_to` to the caller."""
        self.store = store
        self.registry = registry
        self.tokens = tokens
        self.cipher = cipher
        self.clock = clock
        self.state_ttl = state_ttl
        self.return_origins = return_origins

    async def start_oauth(
        self,
        *,
        user_id: UUID,
        provider_slug: str,
        redirect_uri: str,
        alias: str | None = None,
        scopes: Sequence[str] | None = None,
        return_to: str | None = None,
    ) -> AuthorizationStart:
        """Create a PENDING connection and the URL that asks the user for consent."""
        provider = self._oauth_provider(provider_slug)
        now = self.clock()
        conn = ProviderConnection(
            user_id=user_id,
            provider_id=provider.id,
            provider_slug=provider.slug,
            alias=alias,
            created_at=now,
            updated_at=now,
        )
        return await self._authorize(conn, provider, redirect_uri, scopes, return_to)

    async def reconnect(
        self,
        connection_id: UUID,
        *,
        redirect_uri: str,
        scopes: Sequence[str] | None = None,
        return_to: str | None = None,
    ) -> AuthorizationStart:
        """Send the user through consent again: for an expired, revoked or failed connection,
        or to renew the consent of an ACTIVE one before its provider ends it (it stays ACTIVE
        on its current grant until the new one arrives)."""
        conn = await self._load(connection_id)
        renews = conn.status is ConnectionStatus.ACTIVE
        if conn.status not in _REAUTHORIZABLE and not renews:
            raise InvalidTransitionError(conn.status.value, None, "reconnect")
        provider = self._oauth_provider(conn.provider_slug)
        return await self._authorize(conn, provider, redirect_uri, scopes, return_to, renews=renews)

    async def complete_oauth(
        self,
        *,
        state: str,
        code: str | None = None,
        error: str | None = None,
    ) -> CallbackResult:
        """Finish a connect from the provider's callback; the state works once."""
        if not state:
            raise InvalidStateError("the callback carries no state")
        pending = await self.store.take_state(hash_state(state))
        if pending is None:
            raise InvalidStateError("unknown or already used state: start the connection again")
        conn = await self.store.find_by_id(pending.connection_id)
        if conn is None:
            raise InvalidStateError("the connection of this authorization no longer exists")
        now = self.clock()
        if not _takes_grant(conn, pending):
            # Checked before the exchange: no tokens are issued for a connection that cannot
            # take them (disconnected meanwhile, or already completed through another state).
            return CallbackResult(conn, self._return_to(pending), _NOT_CONNECTABLE[conn.status])
        if now > pending.expires_at:
            return await self._fail(conn, pending, "the authorization expired: start again")
        if error:
            reason = f"{callback_error_reason(error)}: start again to retry"
            return await self._fail(conn, pending, reason)
        if not code:
            return await self._fail(conn, pending, "the provider sent no authorization code")
        try:
            provider = self.registry.by_id(conn.provider_id)
            verifier = self.cipher.open(pending.sealed_verifier, connection_id=conn.id).decode()
            response = await self.tokens.exchange_code(
                provider,
                code=code,
                redirect_uri=pending.redirect_uri,
                code_verifier=verifier if provider.pkce else None,
            )
        except (ProviderUnavailableError, RateLimitedError) as exc:
            reason = f"the provider was unavailable ({exc}): try again in a few minutes"
            return await self._fail(conn, pending, reason)
        except OAuthError as exc:
            reason = f"the provider refused the code ({exc}): start again to retry"
            return await self._fail(conn, pending, reason)
        except (DecryptionError, ConfigurationError) as exc:
            return await self._fail(conn, pending, f"linkvault could not finish: {exc}")
        tokens = OAuth2Tokens.from_response(
            response, expires_at=token_expiry(response, provider, now)
        )
        sealed = seal_credentials(tokens, connection_id=conn.id, cipher=self.cipher)
        # Changed during the exchange: a rename is harmless, a disconnect wins and the new
        # tokens are dropped rather than bringing the connection back.
        result = await save_with_retry(
            self.store,
            conn,
            lambda c: _connect(c, sealed, now),
            still_applies=lambda fresh: _takes_grant(fresh, pending),
            attempts=2,
        )
        if not result.saved:
            fresh = result.connection
            status = fresh.status if fresh else ConnectionStatus.DISCONNECTED
            return CallbackResult(fresh or conn, self._return_to(pending), _NOT_CONNECTABLE[status])
        assert result.connection is not None
        conn = result.connection
        return CallbackResult(conn, self._return_to(pending))

    async def reconnect_with_credentials(
        self, connection_id: UUID, credentials: CredentialPayload
    ) -> ProviderConnection:
        """Reconnect an expired, revoked or failed key-based connection with new credentials."""
        conn = await self._load(connection_id)
        provider = self.registry.get(conn.provider_slug)
        if provider.auth_style is AuthStyle.OAUTH2:
            raise InvalidArgumentError(
                f"provider {provider.slug!r} reconnects through OAuth2, not with a key"
            )
        return await self._connect_with(conn, credentials)

    async def connect_with_credentials(
        self,
        *,
        user_id: UUID,
        provider_slug: str,
        credentials: CredentialPayload,
        alias: str | None = None,
    ) -> ProviderConnection:
        """Connect at once with credentials the user handed over (an API key, say)."""
        provider = self.registry.get(provider_slug)
        if provider.auth_style is AuthStyle.OAUTH2:
            raise InvalidArgumentError(
                f"provider {provider.slug!r} connects through OAuth2, not with a key"
            )
        if provider.auth_style is AuthStyle.API_KEY and not isinstance(
            credentials, ApiKeyCredentials
        ):
            raise InvalidArgumentError(f"provider {provider.slug!r} needs an API key")
        conn = connection_with_credentials(
            provider,
            user_id=user_id,
            credentials=credentials,
            cipher=self.cipher,
            alias=alias,
            now=self.clock(),
        )
        await self.store.save(conn)
        return conn

    async def start(
        self,
        *,
        user_id: UUID,
        provider_slug: str,
        redirect_uri: str,
        alias: str | None = None,
        scopes: Sequence[str] | None = None,
        return_to: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
    ) -> AuthorizationStart | ProviderConnection:
        """Connect by the provider's style: a consent URL for OAuth2, at once for an API key.

        Inputs that do not apply to the provider's style are refused (NotAcceptedError).
        """
        try:
            provider = self.registry.get(provider_slug)
        except UnknownProviderError:
            raise NotAcceptedError(
                f"no provider {provider_slug!r}",
                field="provider",
                reason="unknown provider",
                kind="unknown_provider",
            ) from None
        if provider.auth_style is AuthStyle.OAUTH2:
            _refuse_key(provider, api_key, api_secret)
            return await self.start_oauth(
                user_id=user_id,
                provider_slug=provider.slug,
                redirect_uri=redirect_uri,
                alias=alias,
                scopes=scopes,
                return_to=return_to,
            )
        if provider.auth_style is not AuthStyle.API_KEY:
            raise NotAcceptedError(
                f"provider {provider.slug!r} ({provider.auth_style.value}) cannot be connected "
                "through the API yet",
                field="provider",
                reason="unsupported auth style",
            )
        _refuse_oauth_fields(provider, scopes=scopes, return_to=return_to)
        return await self.connect_with_credentials(
            user_id=user_id,
            provider_slug=provider.slug,
            credentials=_api_key_credentials(api_key, api_secret),
            alias=alias,
        )

    async def start_again(
        self,
        connection_id: UUID,
        *,
        redirect_uri: str,
        scopes: Sequence[str] | None = None,
        return_to: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
    ) -> AuthorizationStart | ProviderConnection:
        """Reconnect by the provider's style: consent again for OAuth2, a new API key at once."""
        conn = await self._load(connection_id)
        provider = provider_of(self.registry, conn)
        renews = conn.status is ConnectionStatus.ACTIVE and provider.auth_style is AuthStyle.OAUTH2
        if conn.status not in _REAUTHORIZABLE and not renews:
            raise InvalidTransitionError(conn.status.value, None, "reconnect")
        if provider.auth_style is AuthStyle.OAUTH2:
            _refuse_key(provider, api_key, api_secret)
            return await self._authorize(
                conn, provider, redirect_uri, scopes, return_to, renews=renews
            )
        _refuse_oauth_fields(provider, scopes=scopes, return_to=return_to)
        if provider.auth_style is not AuthStyle.API_KEY:
            raise NotAcceptedError(
                f"provider {provider.slug!r} cannot be reconnected through the API yet",
                field="connection_id",
                reason="unsupported auth style",
            )
        return await self._connect_with(conn, _api_key_credentials(api_key, api_secret))

    # --- internals -----------------------------------------------------------

    async def _load(self, connection_id: UUID) -> ProviderConnection:
        conn = await self.store.find_by_id(connection_id)
        if conn is None:
            raise NotFoundError(connection_id)
        return conn

    async def _connect_with(
        self, conn: ProviderConnection, credentials: CredentialPayload
    ) -> ProviderConnection:
        sealed = seal_credentials(credentials, connection_id=conn.id, cipher=self.cipher)
        conn.mark_connected(sealed, now=self.clock())
        await self.store.save(conn)
        return conn

    def _oauth_provider(self, slug: str) -> Provider:
        provider = self.registry.get(slug)
        if provider.auth_style is not AuthStyle.OAUTH2:
            raise InvalidArgumentError(
                f"provider {provider.slug!r} does not use OAuth2: connect it with its credentials"
            )
        return provider

    async def _authorize(
        self,
        conn: ProviderConnection,
        provider: Provider,
        redirect_uri: str,
        scopes: Sequence[str] | None,
        return_to: str | None,
        *,
        renews: bool = False,
    ) -> AuthorizationStart:
        if self.return_origins is not None:
            self.return_origins.check(return_to)
        state, verifier = generate_state(), generate_code_verifier()
        url = build_authorize_url(
            provider,
            redirect_uri=redirect_uri,
            state=state,
            code_challenge=code_challenge_s256(verifier) if provider.pkce else None,
            scopes=scopes,
        )
        now = self.clock()
        pending = PendingAuthorization(
            state_hash=hash_state(state),
            connection_id=conn.id,
            sealed_verifier=self.cipher.seal(verifier.encode(), connection_id=conn.id),
            redirect_uri=redirect_uri,
            return_to=return_to,
            created_at=now,
            expires_at=now + self.state_ttl,
            renews=renews,
        )
        async with self.store.transaction() as repo:
            if conn.version == 0:
                await repo.save(conn)
            await repo.put_state(pending)
        return AuthorizationStart(conn, url)

    def _return_to(self, pending: PendingAuthorization) -> str | None:
        # Checked again on the way back: an origin dropped from the list since the start
        # no longer receives the user.
        url = pending.return_to
        if url is None or self.return_origins is None or self.return_origins.allows(url):
            return url
        return None

    async def fail_lapsed(self, *, limit: int = 100) -> int:
        """Mark FAILED the PENDING connections whose every authorization expired unanswered
        (connection.failed, "authorization was not completed"); how many were."""
        failed = 0
        for connection_id in await self.store.lapsed_authorizations(limit=limit):
            conn = await self.store.find_by_id(connection_id)
            if conn is None or conn.status is not ConnectionStatus.PENDING:
                continue
            conn.mark_failed(LAPSED_REASON, now=self.clock())
            try:
                await self.store.save(conn)
            except StaleConnectionError:
                continue  # its callback (or a reconnect) got there first: that change wins
            failed += 1
        if failed:
            log.info("%d connection(s) failed: their authorization was not completed", failed)
        return failed

    async def _fail(
        self, conn: ProviderConnection, pending: PendingAuthorization, reason: str
    ) -> CallbackResult:
        # Only a first connect can fail in the table; a reconnect keeps its earlier status.
        if conn.status is ConnectionStatus.PENDING:
            conn.mark_failed(reason, now=self.clock())
            await self.store.save(conn)
        return CallbackResult(conn, self._return_to(pending), reason)


def _takes_grant(conn: ProviderConnection, pending: PendingAuthorization) -> bool:
    """Whether this authorization's grant may go to the connection as it is now."""
    if conn.status is ConnectionStatus.ACTIVE:
        return pending.renews  # a renewal; any other was completed through another state
    return can_transition(conn.status, ConnectionStatus.ACTIVE)


def _connect(conn: ProviderConnection, sealed: ProviderCredentials, now: datetime) -> None:
    if conn.status is ConnectionStatus.ACTIVE:
        conn.renew(sealed, now=now)
    else:
        conn.mark_connected(sealed, now=now)


def _refuse_key(provider: Provider, api_key: str | None, api_secret: str | None) -> None:
    if api_key is not None or api_secret is not None:
        raise NotAcceptedError(
            f"provider {provider.slug!r} connects through OAuth2: do not send an API key",
            field="api_key",
            reason="not accepted for an OAuth2 provider",
        )


def _refuse_oauth_fields(
    provider: Provider, *, scopes: Sequence[str] | None, return_to: str | None
) -> None:
    for name, value in (("scopes", scopes), ("return_to", return_to)):
        if value is not None:
            raise NotAcceptedError(
                f"provider {provider.slug!r} does not use OAuth2: {name} does not apply",
                field=name,
                reason="only for OAuth2 providers",
            )


def _api_key_credentials(api_key: str | None, api_secret: str | None) -> ApiKeyCredentials:
    if api_key is None:
        raise NotAcceptedError(
            "this provider connects with an API key: send api_key",
            field="api_key",
            reason="Field required",
            kind="missing",
        )
    try:
        return ApiKeyCredentials(api_key, api_secret)
    except InvalidCredentialsError as exc:
        # The message names the field, never its value.
        raise NotAcceptedError(str(exc), field="api_key", reason="invalid credentials") from None
