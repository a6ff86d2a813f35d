"""The API's request and response models: what goes over the wire, checked at the edge.

Connection responses describe credentials (type, expiry) and never carry them; the one
model that holds a secret is RevealedCredentials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from linkvault.access import ApiKeyEntry
from linkvault.access import Scope as KeyScope
from linkvault.credentials import (
    ApiKeyCredentials,
    CertificateCredentials,
    CredentialPayload,
    CustomCredentials,
    FileImportCredentials,
    LinkTokenCredentials,
    OAuth2Tokens,
)
from linkvault.domain import MAX_ALIAS_LENGTH, ConnectionStatus, CredentialType, ProviderConnection
from linkvault.events import EventType, StoredEvent
from linkvault.origins import MAX_RETURN_URL_LENGTH
from linkvault.providers import AuthStyle, Provider, Rate
from linkvault.services.connections import ConnectionService
from linkvault.services.health import HealthReport, HealthStatus
from linkvault.services.refresh import Outcome
from linkvault.webhooks import Delivery, DeliveryAttempt, DeliveryStatus, WebhookEndpoint

MAX_PAGE_SIZE = 500
_SLUG_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
# RFC 6749 section 3.3 scope-token characters.
_SCOPE_PATTERN = r"^[\x21\x23-\x5B\x5D-\x7E]{1,128}$"
# The If-Match values this API reads: *, "3", W/"3" or 3 (the OpenAPI schema says the same).
IF_MATCH_PATTERN = r'^\s*(?:\*|(?:W/)?"[0-9]{1,18}"|[0-9]{1,18})\s*$'
# encode_cursor's output: 16 bytes in unpadded base64url, whose last character holds 2 bits.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{21}[AQgw]$"
# An events cursor: a transaction and a position (stores/common.py parse_cursor).
EVENTS_CURSOR_PATTERN = r"^[0-9]{1,20}\.[0-9]{1,19}$"


def _plain_text(value: str) -> str:
    # PostgreSQL text holds no NUL, and no database stores a lone surrogate.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _return_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http or https URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in value):
        raise ValueError("must not contain whitespace, control characters or backslashes")
    if "@" in parts.netloc:
        raise ValueError("must not contain a user name or password")
    return value


def _secret_text(value: SecretStr) -> SecretStr:
    _plain_text(value.get_secret_value())
    return value


Alias = Annotated[
    str, Field(max_length=MAX_ALIAS_LENGTH, description="a name the user gave this connection")
]
ScopeToken = Annotated[str, Field(pattern=_SCOPE_PATTERN)]
ReturnTo = Annotated[
    str,
    Field(
        max_length=MAX_RETURN_URL_LENGTH,
        description="where the user's browser goes after consent: on an allowed return origin",
    ),
    AfterValidator(_return_url),
]
SecretText = Annotated[
    SecretStr, Field(min_length=1, max_length=4096), AfterValidator(_secret_text)
]


class ConnectionView(BaseModel):
    """A connection as the API shows it: credentials are described, never included."""

    # Published as "Connection": the document's name, not the entity's or the database's.
    __qualname__ = "Connection"
    model_config = ConfigDict(title="Connection")

    id: UUID
    user_id: UUID
    provider_id: UUID
    provider_slug: str
    alias: str | None
    status: ConnectionStatus
    status_reason: str | None
    credential_type: CredentialType | None
    expires_at: datetime | None = Field(description="when the credentials expire; null = never")
    connected_at: datetime | None
    last_sync_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int = Field(ge=0, description="optimistic-concurrency version; also the ETag")
    health: HealthStatus = Field(
        description=(
            "how the connection is doing, the most urgent that applies: `needs_user_action` "
            "(only the user can fix it: reconnect; see needs_user_action_reason), "
            "`needs_attention` (only an operator can: the credentials do not open under any "
            "configured key, the provider rejects linkvault's client, or the provider cannot "
            "refresh; see last_refresh_error), `retrying` (refreshes failed and will be "
            "tried again at next_refresh_at), `ok` (nothing to do; also pending and "
            "disconnected connections)"
        )
    )
    needs_user_action: bool = Field(
        description=(
            "true when only the user can fix the connection by reconnecting: it is expired, "
            "revoked or failed, or its refreshes failed so many times in a row that the "
            "worker stopped trying"
        )
    )
    needs_user_action_reason: str | None = Field(
        description="why the user must act (the status reason, or the refresh failures); "
        "null when needs_user_action is false"
    )
    refresh_failures: int = Field(
        ge=0, description="refresh failures in a row since the last success or new credentials"
    )
    next_refresh_at: datetime | None = Field(
        description="when the worker tries again after a failure (or next refreshes); "
        "null = when the credentials come due"
    )
    consent_expires_at: datetime | None = Field(
        default=None,
        description=(
            "when the provider ends the current consent by rule, whatever is refreshed "
            "(Schwab: 7 days after the user consented); a connection.consent_expiring event "
            "comes ahead of it, and reconnecting renews it; null = no such rule"
        ),
    )
    last_refresh_error: str | None = Field(
        description=(
            "the last failed refresh, as `outcome: reason` (e.g. `decrypt_failed: ...`, "
            "`unavailable: ...`), written by linkvault and free of secrets; null after a "
            "success or new credentials"
        )
    )

    @classmethod
    def of(cls, c: ProviderConnection, h: HealthReport) -> ConnectionView:
        creds = c.credentials
        return cls(
            id=c.id,
            user_id=c.user_id,
            provider_id=c.provider_id,
            provider_slug=c.provider_slug,
            alias=c.alias,
            status=c.status,
            status_reason=c.status_reason,
            credential_type=creds.credential_type if creds else None,
            expires_at=creds.expires_at if creds else None,
            connected_at=c.connected_at,
            last_sync_at=c.last_sync_at,
            created_at=c.created_at,
            updated_at=c.updated_at,
            version=c.version,
            health=h.health,
            needs_user_action=h.needs_user_action,
            needs_user_action_reason=h.needs_user_action_reason,
            refresh_failures=h.refresh_failures,
            next_refresh_at=h.next_refresh_at,
            last_refresh_error=h.last_refresh_error,
            consent_expires_at=h.consent_expires_at,
        )


class ConnectionRef(BaseModel):
    """What a write answers to a key without the `read` scope: which connection, which version."""

    id: UUID
    version: int = Field(ge=0, description="optimistic-concurrency version; also the ETag")


async def shown(
    conn: ProviderConnection, key: ApiKeyEntry, connections: ConnectionService
) -> ConnectionView | ConnectionRef:
    """A write's answer carries no more than the key could read."""
    if key.allows(KeyScope.READ):
        return ConnectionView.of(conn, await connections.health(conn))
    return ConnectionRef(id=conn.id, version=conn.version)


class ConnectionPage(BaseModel):
    """One page of connections; pass `next_cursor` as `cursor` for the next one."""

    items: list[ConnectionView]
    next_cursor: str | None


class EventData(BaseModel):
    """What an event is about; some types add fields (attempt, next_attempt_at, outcome...)."""

    model_config = ConfigDict(extra="allow")

    connection_id: UUID
    user_id: UUID
    provider: str = Field(description="the provider's slug")
    sequence: int = Field(ge=1, description="the event's place in its connection's history")
    from_status: str | None
    to_status: str | None
    reason: str | None = Field(description="why, in words safe to show anyone")


class Event(BaseModel):
    """One event, as webhooks deliver it (Standard Webhooks' id, type, timestamp and data)."""

    id: UUID
    type: EventType
    timestamp: str = Field(description="when it happened (ISO 8601, UTC)")
    data: EventData

    @classmethod
    def of(cls, e: StoredEvent) -> Event:
        return cls.model_validate(e.payload())


class EventPage(BaseModel):
    """One page of a connection's events; pass `next_cursor` as `after` for the next one."""

    data: list[Event]
    next_cursor: str | None = Field(
        description="the last sequence of this page while there are more; null on the last page"
    )


class EventFeed(BaseModel):
    """Events of the whole log; poll again with `after` = `next_cursor`."""

    data: list[Event]
    next_cursor: str = Field(
        description="where to continue: the last event's cursor, or the given one when "
        "there was no new event"
    )


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartConnection(_Input):
    """Start a connection: OAuth2 providers get an authorize URL, API-key providers the key."""

    user_id: UUID
    provider: Annotated[str, Field(pattern=_SLUG_PATTERN, description="the provider's slug")]
    alias: Annotated[Alias | None, AfterValidator(lambda v: v and _plain_text(v))] = None
    scopes: list[ScopeToken] | None = Field(default=None, max_length=50)
    return_to: ReturnTo | None = None
    api_key: SecretText | None = None
    api_secret: SecretText | None = None


class ReconnectConnection(_Input):
    """Reconnect: OAuth2 connections go through consent again; API-key ones take a new key."""

    scopes: list[ScopeToken] | None = Field(default=None, max_length=50)
    return_to: ReturnTo | None = None
    api_key: SecretText | None = None
    api_secret: SecretText | None = None


class UpdateConnection(_Input):
    """Set (or, with null, clear) the alias; `version` or If-Match makes the change conditional."""

    alias: Annotated[Alias | None, AfterValidator(lambda v: v and _plain_text(v))]
    version: int | None = Field(default=None, ge=1, le=2**62)


class StartedConnection(BaseModel):
    """A started connection; `authorize_url` is where to send the user (OAuth2 only)."""

    connection: ConnectionView | ConnectionRef
    authorize_url: str | None


class TokenRequest(_Input):
    """How long the access token must still be good for."""

    min_valid_seconds: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description="the token handed out is good for at least this long; refreshed if not",
    )


class IssuedAccessToken(BaseModel):
    """A current access token: send it as `Authorization: <token_type> <access_token>`."""

    access_token: str
    token_type: str
    expires_at: datetime | None = Field(description="when it expires; null: never")


class RefreshResult(BaseModel):
    """How an immediate refresh ended, and the connection afterwards."""

    outcome: Outcome
    connection: ConnectionView | ConnectionRef


class CreateWebhook(_Input):
    """A webhook endpoint to add: an https URL and the event types it wants (empty: all)."""

    url: str = Field(
        max_length=2000,
        description="https URL (http only on loopback, when the deployment allows it)",
    )
    events: list[EventType] = Field(
        default_factory=list, max_length=64, description="event types; empty or absent: all"
    )


class WebhookView(BaseModel):
    """A webhook endpoint; its signing secret is shown once, when it is created."""

    __qualname__ = "Webhook"
    model_config = ConfigDict(title="Webhook")

    id: UUID
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, e: WebhookEndpoint) -> WebhookView:
        return cls(
            id=e.id,
            url=e.url,
            events=sorted(e.event_types),
            enabled=e.enabled,
            disabled_reason=e.disabled_reason,
            created_at=e.created_at,
            updated_at=e.updated_at,
        )


class CreatedWebhook(WebhookView):
    """A new webhook endpoint with its signing secret: the only response that shows it."""

    model_config = ConfigDict(title="CreatedWebhook")

    secret: str = Field(description="whsec_… secret to verify signatures with; shown only here")


class WebhookList(BaseModel):
    items: list[WebhookView]


class DeliveryAttemptView(BaseModel):
    """One POST of a delivery: when, and the status code or the error."""

    __qualname__ = "DeliveryAttempt"
    model_config = ConfigDict(title="DeliveryAttempt")

    attempted_at: datetime
    status_code: int | None
    error: str | None


class DeliveryView(BaseModel):
    """One event for one endpoint; every attempt carries the event id as webhook-id."""

    __qualname__ = "Delivery"
    model_config = ConfigDict(title="Delivery")

    id: UUID
    event_id: UUID
    event_type: str
    connection_id: UUID
    sequence: int
    status: DeliveryStatus
    failed_attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempts: list[DeliveryAttemptView]

    @classmethod
    def of(cls, d: Delivery, attempts: Sequence[DeliveryAttempt] = ()) -> DeliveryView:
        return cls(
            id=d.id,
            event_id=d.event_id,
            event_type=d.event_type,
            connection_id=d.connection_id,
            sequence=d.sequence,
            status=d.status,
            failed_attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            attempts=[
                DeliveryAttemptView(
                    attempted_at=a.attempted_at, status_code=a.status_code, error=a.error
                )
                for a in attempts
            ],
        )


class DeliveryList(BaseModel):
    """An endpoint's deliveries, newest first."""

    items: list[DeliveryView]


class OAuth2TokensPayload(BaseModel):
    type: Literal["oauth2"] = "oauth2"
    access_token: str
    refresh_token: str | None
    token_type: str
    scope: str | None
    expires_at: datetime | None


class ApiKeyPayload(BaseModel):
    type: Literal["api_key"] = "api_key"
    api_key: str
    api_secret: str | None


class LinkTokenPayload(BaseModel):
    type: Literal["link_token"] = "link_token"
    access_token: str
    item_id: str
    expires_at: datetime | None


class CertificatePayload(BaseModel):
    type: Literal["certificate"] = "certificate"
    certificate_pem: str
    private_key_pem: str


class FileImportPayload(BaseModel):
    type: Literal["file_import"] = "file_import"
    source: str
    passphrase: str | None


class CustomPayload(BaseModel):
    type: Literal["custom"] = "custom"
    values: dict[str, str]


RevealedPayload = Annotated[
    OAuth2TokensPayload
    | ApiKeyPayload
    | LinkTokenPayload
    | CertificatePayload
    | FileImportPayload
    | CustomPayload,
    Field(discriminator="type"),
]
_PAYLOAD_MODELS: Mapping[type[CredentialPayload], type[BaseModel]] = {
    OAuth2Tokens: OAuth2TokensPayload,
    ApiKeyCredentials: ApiKeyPayload,
    LinkTokenCredentials: LinkTokenPayload,
    CertificateCredentials: CertificatePayload,
    FileImportCredentials: FileImportPayload,
    CustomCredentials: CustomPayload,
}


class RevealedCredentials(BaseModel):
    """A connection's decrypted credentials: the one response that holds a secret."""

    connection_id: UUID
    credential_type: CredentialType
    expires_at: datetime | None
    payload: RevealedPayload


class ApiRateLimitInfo(BaseModel):
    """Proxied calls linkvault lets through, as requests per period ("10/s", "120/m")."""

    per_connection: str | None = None
    per_provider: str | None = None


class ProviderInfo(BaseModel):
    """A provider linkvault can connect to."""

    id: UUID
    slug: str
    display_name: str
    auth_style: AuthStyle
    scopes: list[str]
    refreshes: bool
    configured: bool = Field(description="whether linkvault holds client credentials for it")
    api_base_url: str | None = Field(
        default=None,
        description="the provider's data API, which /v1/connections/{id}/proxy/... reaches "
        "(null: no proxy for this provider)",
    )
    api_rate_limit: ApiRateLimitInfo = Field(
        default_factory=ApiRateLimitInfo,
        description="the rate limits linkvault keeps for proxied calls",
    )


class ProviderList(BaseModel):
    items: list[ProviderInfo]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    schema_: Literal["current"] = Field(alias="schema")


class Problem(BaseModel):
    """An RFC 9457 problem detail."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URI reference naming the kind of problem")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(default=None, description="the request path")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    """A 422 problem listing the offending fields (the first few, when there are many)."""

    errors: list[FieldError]
    errors_omitted: int | None = Field(
        default=None, ge=1, description="how many more fields were invalid than are listed"
    )


def payload_out(payload: CredentialPayload) -> BaseModel:
    """The response model of a decrypted credential payload."""
    values = {f.name: getattr(payload, f.name) for f in dataclasses.fields(payload)}
    if isinstance(payload, CustomCredentials):
        values = {"values": dict(payload.values)}
    return _PAYLOAD_MODELS[type(payload)].model_validate(values)


def provider_info(p: Provider) -> ProviderInfo:
    return ProviderInfo(
        id=p.id,
        slug=p.slug,
        display_name=p.display_name,
        auth_style=p.auth_style,
        scopes=list(p.scopes),
        refreshes=p.refreshes,
        configured=p.configured,
        api_base_url=p.api_base_url,
        api_rate_limit=ApiRateLimitInfo(
            per_connection=_rate(p.api_rate_limit.per_connection),
            per_provider=_rate(p.api_rate_limit.per_provider),
        ),
    )


def _rate(rate: Rate | None) -> str | None:
    return None if rate is None else str(rate)
