"""One exception tree for linkvault, rooted at LinkvaultError."""

from __future__ import annotations

from uuid import UUID


class LinkvaultError(Exception):
    """Base class of every error linkvault raises on purpose."""


# --- domain -----------------------------------------------------------------


class DomainError(LinkvaultError):
    """A rule of the domain was broken; nothing was changed."""


class InvalidTransitionError(DomainError):
    """A status change the transition table does not allow."""

    def __init__(self, current: str, target: str | None, verb: str) -> None:
        if target is None:
            message = f"cannot {verb} a {current} connection"
        else:
            message = f"cannot {verb}: a connection cannot move from {current} to {target}"
        super().__init__(message)
        self.current = current
        self.target = target
        self.verb = verb


class InvalidConnectionError(DomainError, ValueError):
    """A field value the entity or a value object does not accept."""


class InvalidArgumentError(LinkvaultError, ValueError):
    """An argument outside what the operation accepts; `field` names it when one does."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidStateError(InvalidArgumentError):
    """An OAuth2 callback whose state is unknown, already used or expired."""


# --- persistence -------------------------------------------------------------


class RepositoryError(LinkvaultError):
    """A repository operation failed."""


class NotFoundError(RepositoryError, LookupError):
    """The connection does not exist."""

    def __init__(self, connection_id: UUID) -> None:
        super().__init__(f"connection {connection_id} not found")
        self.connection_id = connection_id


class WebhookNotFoundError(RepositoryError, LookupError):
    """No such webhook endpoint, or no such delivery of it."""


class StaleConnectionError(RepositoryError):
    """A save was based on an outdated copy; the stored state was left as it was."""

    def __init__(self, connection_id: UUID, expected_version: int) -> None:
        super().__init__(
            f"connection {connection_id} was changed or removed since version "
            f"{expected_version} was read; reload it and apply the change again"
        )
        self.connection_id = connection_id
        self.expected_version = expected_version


class DatabaseError(RepositoryError):
    """The database failed; the driver's error is chained as the cause."""


class ConstraintViolationError(DatabaseError):
    """A write broke a database constraint (for example a duplicate or a malformed row)."""


class DatabaseUnavailableError(DatabaseError):
    """The database could not be reached."""


class SchemaError(DatabaseError):
    """The database schema is missing or behind the code."""


# --- configuration -----------------------------------------------------------


class ConfigurationError(LinkvaultError):
    """Settings are missing or malformed."""


# --- secrets -----------------------------------------------------------------


class CryptoError(LinkvaultError):
    """Encrypting or decrypting credentials failed."""


class DecryptionError(CryptoError):
    """A blob could not be opened: malformed, tampered with, or sealed for another connection."""


class UnknownKeyError(DecryptionError):
    """A blob names a key the key ring does not hold."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"the blob was sealed with key {key_id!r}, which is not in the key ring; "
            "add that key to LINKVAULT_KEYS or the key file to open it"
        )
        self.key_id = key_id


class KeyRingError(ConfigurationError):
    """Encryption keys are missing or malformed."""


class InvalidCredentialsError(InvalidConnectionError):
    """A credential payload holds a value its type does not accept."""


# --- providers and OAuth -----------------------------------------------------


class ProviderConfigError(ConfigurationError):
    """The provider registry file, or a provider's client settings, are malformed."""


class UnknownProviderError(LinkvaultError, LookupError):
    """No provider in the registry has that slug or id."""

    def __init__(self, key: object) -> None:
        super().__init__(f"no provider {key!s} in the registry")
        self.key = key


class OAuthError(LinkvaultError):
    """A provider's token endpoint did not issue tokens.

    Messages carry the provider, the operation, the HTTP status and the OAuth
    `error` code, never a token, code, verifier or client secret.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        error: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.error = error
        self.description = description


class InvalidGrantError(OAuthError):
    """The grant (code or refresh token) is invalid, expired or already used: reconnect."""


class UnauthorizedClientError(OAuthError):
    """The provider refused the client itself (unknown id, wrong secret, not allowed)."""


class InvalidClientError(UnauthorizedClientError):
    """The provider refused linkvault's own client credentials: an operator must fix them."""


class RevokedError(OAuthError):
    """The user or the provider revoked the grant."""


class RateLimitedError(OAuthError):
    """The provider asked to slow down; `retry_after` is in seconds when it said how long."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        provider: str | None = None,
        status_code: int | None = None,
        error: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            status_code=status_code,
            error=error,
            description=description,
        )
        self.retry_after = retry_after


class ProviderUnavailableError(OAuthError):
    """The provider could not answer: 5xx, timeout or network failure; try again later."""

    retryable = True


class AnswerLostError(ProviderUnavailableError):
    """The request reached the provider, or may have, and its answer never came back.

    The provider may have acted on it (spent a refresh token), so it is not an ordinary
    transient failure: `how` says how the answer was lost ("read timeout", "connection
    reset"...).
    """

    def __init__(self, message: str, *, how: str, provider: str | None = None) -> None:
        super().__init__(message, provider=provider)
        self.how = how


class MalformedResponseError(OAuthError):
    """The provider answered success with a body that is not a usable token response."""

    retryable = True


class KeyInUseError(CryptoError):
    """A key cannot leave the ring while connections are still sealed under it."""

    def __init__(self, key_id: str, rows: int, *, what: str = "connection") -> None:
        noun = f"{what} is" if rows == 1 else f"{what}s are"
        if what in ("connection", "webhook signing secret"):
            advice = "run `linkvault keys rotate` first"
        else:
            advice = "they lapse within 10 minutes of their start: retire it after that"
        super().__init__(
            f"key {key_id!r} cannot be retired: {rows} {noun} still sealed under it; {advice}"
        )
        self.key_id = key_id
        self.rows = rows


class NotAcceptedError(InvalidArgumentError):
    """An input the operation does not take in this case; `reason` is the short why."""

    def __init__(self, message: str, *, field: str, reason: str, kind: str = "value_error") -> None:
        super().__init__(message, field=field)
        self.field: str = field
        self.reason = reason
        self.kind = kind


class ConnectionStateError(LinkvaultError):
    """The connection as it stands does not allow the operation; `kind` names the conflict."""

    kind = "conflict"


class ProviderGoneError(ConnectionStateError):
    """The provider a connection was made with is no longer configured."""

    kind = "unknown-provider"

    def __init__(self, provider_slug: str) -> None:
        super().__init__(f"provider {provider_slug!r} of this connection is no longer configured")
        self.provider_slug = provider_slug


class NotRefreshableError(ConnectionStateError):
    """The connection's credentials cannot be refreshed."""

    kind = "not-refreshable"

    def __init__(self, provider_slug: str) -> None:
        super().__init__(f"the credentials of provider {provider_slug!r} do not refresh")
        self.provider_slug = provider_slug


class RefreshInProgressError(ConnectionStateError):
    """Another refresh of the connection holds its lease."""

    kind = "refresh-in-progress"

    def __init__(self) -> None:
        super().__init__("a refresh of this connection is already running")


class NoCredentialsError(ConnectionStateError):
    """The connection holds no credentials to hand out."""

    kind = "no-credentials"

    def __init__(self, status: str) -> None:
        super().__init__(f"a {status} connection holds no credentials")
        self.status = status


class NeedsUserActionError(ConnectionStateError):
    """Only the user can make the connection work again: they must reconnect.

    `status` is the connection's status, `reason` the text linkvault recorded for it.
    """

    kind = "needs-user-action"

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"the connection needs its user to reconnect: {reason}")
        self.status = status
        self.reason = reason


class TokenUnavailableError(LinkvaultError):
    """No current access token right now, for a reason that passes: the provider failing,
    its circuit open, or another refresh still running. `retry_after` is in seconds."""

    def __init__(self, reason: str, *, retry_after: float) -> None:
        super().__init__(f"no current access token for now: {reason}")
        self.reason = reason
        self.retry_after = retry_after


class NoAccessTokenError(ConnectionStateError):
    """The connection holds no OAuth2 grant, so there is no access token to hand out."""

    kind = "no-access-token"

    def __init__(self, credential_type: str) -> None:
        super().__init__(
            f"a connection holding {credential_type} credentials has no OAuth2 access token"
        )
        self.credential_type = credential_type
