"""/v1/connections: list, read, start, reconnect, rename, refresh, disconnect, delete, reveal."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated
from uuid import UUID

from fastapi import Body, Header, Query, Response

from linkvault.api.paths import CALLBACK_PATH
from linkvault.api.problems import invalid
from linkvault.api.routes.common import (
    COMMON,
    E400,
    E404,
    E409,
    E412,
    ConnectionId,
    CurrentRuntime,
    decode_cursor,
    encode_cursor,
    etag,
    make_router,
    one_version,
    parse_if_match,
    precondition_failed,
)
from linkvault.api.schemas import (
    CURSOR_PATTERN,
    IF_MATCH_PATTERN,
    MAX_PAGE_SIZE,
    ConnectionPage,
    ConnectionRef,
    ConnectionView,
    Event,
    EventPage,
    IssuedAccessToken,
    Problem,
    ReconnectConnection,
    RefreshResult,
    RevealedCredentials,
    StartConnection,
    StartedConnection,
    TokenRequest,
    UpdateConnection,
    payload_out,
    shown,
)
from linkvault.api.security import CredentialsKey, ReadKey, TokenKey, WriteKey
from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.errors import StaleConnectionError, UnknownProviderError
from linkvault.providers import ProviderRegistry
from linkvault.services.connect import AuthorizationStart
from linkvault.stores.common import MAX_BIGINT as MAX_SEQUENCE
from linkvault.stores.common import MAX_MINUTES

audit = logging.getLogger("linkvault.api.audit")

router = make_router("/v1/connections")


@router.get(
    "",
    tags=["connections"],
    response_model=ConnectionPage,
    summary="List connections",
    description="Scope `read`. Connections in id order, filtered, one page at a time.",
    responses=COMMON,
)
async def list_connections(
    runtime: CurrentRuntime,
    _key: ReadKey,
    user_id: UUID | None = None,
    provider: Annotated[
        str | None, Query(max_length=100, description="a provider slug or id")
    ] = None,
    status: ConnectionStatus | None = None,
    expiring_within: Annotated[
        int | None,
        Query(ge=0, le=MAX_MINUTES, description="only active ones expiring within N minutes"),
    ] = None,
    needs_user_action: Annotated[
        bool | None,
        Query(
            description="true: only the connections only their user can fix (see the "
            "Connection's needs_user_action); false: only the others"
        ),
    ] = None,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="a next_cursor from a page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> ConnectionPage:
    page = await runtime.connections.list(
        user_id=user_id,
        provider_id=_provider_id(runtime.registry, provider),
        status=status,
        expiring_within=expiring_within,
        needs_user_action=needs_user_action,
        after=_after(cursor),
        limit=limit,
    )
    following = None if page.next_after is None else encode_cursor(page.next_after)
    items = [ConnectionView.of(c, page.health[c.id]) for c in page.items]
    return ConnectionPage(items=items, next_cursor=following)


def _provider_id(registry: ProviderRegistry, provider: str | None) -> UUID | None:
    if provider is None:
        return None
    try:
        return UUID(provider)
    except ValueError:
        pass
    try:
        return registry.get(provider).id
    except UnknownProviderError:
        raise invalid(
            f"no provider {provider!r}",
            ["query", "provider"],
            "unknown provider",
            "unknown_provider",
        ) from None


def _after(cursor: str | None) -> UUID | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError:
        raise invalid(
            "the cursor is not one this API issued", ["query", "cursor"], "malformed cursor"
        ) from None


@router.get(
    "/{connection_id}/events",
    tags=["events"],
    response_model=EventPage,
    summary="Read a connection's events",
    description=(
        "Scope `read`. The connection's events in the order they happened (by `sequence`), "
        "one page at a time: pass `next_cursor` as `after`. A deleted connection's events "
        "are still here; 404 only when there is no such connection and it has no events."
    ),
    responses={**COMMON, 404: E404},
)
async def connection_events(
    runtime: CurrentRuntime,
    connection_id: ConnectionId,
    _key: ReadKey,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQUENCE, description="only events after this sequence")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> EventPage:
    page = await runtime.events.connection_events(connection_id, after=after, limit=limit)
    following = None if page.next_after is None else str(page.next_after)
    return EventPage(data=[Event.of(e) for e in page.events], next_cursor=following)


@router.get(
    "/{connection_id}",
    tags=["connections"],
    response_model=ConnectionView,
    summary="Get a connection",
    description="Scope `read`. The ETag header holds the version, for If-Match.",
    responses={**COMMON, 404: E404},
)
async def get_connection(
    runtime: CurrentRuntime, connection_id: ConnectionId, response: Response, _key: ReadKey
) -> ConnectionView:
    conn = await runtime.connections.get(connection_id)
    response.headers.update(etag(conn))
    return ConnectionView.of(conn, await runtime.connections.health(conn))


@router.post(
    "",
    tags=["connections"],
    response_model=StartedConnection,
    status_code=201,
    summary="Start a connection",
    description=(
        "Scope `write`. For an OAuth2 provider: a pending connection and the URL to send "
        "the user to. For an API-key provider: an active connection at once."
    ),
    responses={**COMMON, 400: E400, 409: E409},
)
async def start_connection(
    runtime: CurrentRuntime,
    body: Annotated[StartConnection, Body()],
    response: Response,
    key: WriteKey,
) -> StartedConnection:
    started = await runtime.connect.start(
        user_id=body.user_id,
        provider_slug=body.provider,
        redirect_uri=runtime.settings.base_url + CALLBACK_PATH,
        alias=body.alias,
        scopes=body.scopes,
        return_to=body.return_to,
        api_key=body.api_key.get_secret_value() if body.api_key else None,
        api_secret=body.api_secret.get_secret_value() if body.api_secret else None,
    )
    conn, url = _started(started)
    response.headers["Location"] = f"/v1/connections/{conn.id}"
    response.headers.update(etag(conn))
    return StartedConnection(
        connection=await shown(conn, key, runtime.connections), authorize_url=url
    )


def _started(
    started: AuthorizationStart | ProviderConnection,
) -> tuple[ProviderConnection, str | None]:
    if isinstance(started, AuthorizationStart):
        return started.connection, started.authorize_url
    return started, None


@router.post(
    "/{connection_id}/reconnect",
    tags=["connections"],
    response_model=StartedConnection,
    summary="Reconnect a connection",
    description=(
        "Scope `write`. A pending, expired, revoked or failed OAuth2 connection gets a new "
        "authorize URL; so does an active one, to renew its consent before the provider ends "
        "it (it stays active on its current grant until the user consents). An expired, "
        "revoked or failed API-key connection takes a new key and is active at once."
    ),
    responses={**COMMON, 400: E400, 404: E404, 409: E409},
)
async def reconnect(
    runtime: CurrentRuntime,
    connection_id: ConnectionId,
    key: WriteKey,
    body: Annotated[ReconnectConnection | None, Body()] = None,
) -> StartedConnection:
    body = body or ReconnectConnection()
    started = await runtime.connect.start_again(
        connection_id,
        redirect_uri=runtime.settings.base_url + CALLBACK_PATH,
        scopes=body.scopes,
        return_to=body.return_to,
        api_key=body.api_key.get_secret_value() if body.api_key else None,
        api_secret=body.api_secret.get_secret_value() if body.api_secret else None,
    )
    conn, url = _started(started)
    return StartedConnection(
        connection=await shown(conn, key, runtime.connections), authorize_url=url
    )


@router.patch(
    "/{connection_id}",
    tags=["connections"],
    response_model=ConnectionView | ConnectionRef,
    summary="Rename a connection",
    description=(
        "Scope `write`. Sets or clears (null) the alias. Without a version the rename "
        "applies to whatever version is current. With an If-Match header, a connection "
        "changed since that version is left alone (412); with `version` in the body, "
        "likewise (409); both at once must agree (422). A key without `read` gets only "
        "the id and the version back."
    ),
    responses={**COMMON, 400: E400, 404: E404, 409: E409, 412: E412},
)
async def update_connection(
    runtime: CurrentRuntime,
    connection_id: ConnectionId,
    body: Annotated[UpdateConnection, Body()],
    response: Response,
    key: WriteKey,
    if_match: Annotated[
        str | None, Header(alias="If-Match", pattern=IF_MATCH_PATTERN, max_length=24)
    ] = None,
) -> ConnectionView | ConnectionRef:
    header_version = parse_if_match(if_match)
    expected = one_version(body.version, header_version)
    try:
        conn = await runtime.connections.rename(
            connection_id, body.alias, expected_version=expected
        )
    except StaleConnectionError as exc:
        if header_version is None:
            raise
        raise precondition_failed(exc) from None
    response.headers.update(etag(conn))
    return await shown(conn, key, runtime.connections)


@router.post(
    "/{connection_id}/refresh",
    tags=["connections"],
    response_model=RefreshResult,
    summary="Refresh a connection now",
    description=(
        "Scope `write`. Refreshes an active OAuth2 connection at once; `outcome` says how "
        "it went (a refused grant leaves the connection expired or revoked). 409 when the "
        "connection is not active, cannot refresh, or a refresh is already running."
    ),
    responses={**COMMON, 404: E404, 409: E409},
)
async def refresh(
    runtime: CurrentRuntime, connection_id: ConnectionId, key: WriteKey
) -> RefreshResult:
    refreshed = await runtime.connections.refresh_now(connection_id)
    return RefreshResult(
        outcome=refreshed.outcome,
        connection=await shown(refreshed.connection, key, runtime.connections),
    )


@router.post(
    "/{connection_id}/disconnect",
    tags=["connections"],
    response_model=ConnectionView | ConnectionRef,
    summary="Disconnect a connection",
    description="Scope `write`. Soft delete: the record stays, the credentials are dropped.",
    responses={**COMMON, 404: E404, 409: E409},
)
async def disconnect(
    runtime: CurrentRuntime, connection_id: ConnectionId, response: Response, key: WriteKey
) -> ConnectionView | ConnectionRef:
    conn = await runtime.connections.disconnect(connection_id)
    response.headers.update(etag(conn))
    return await shown(conn, key, runtime.connections)


@router.delete(
    "/{connection_id}",
    tags=["connections"],
    status_code=204,
    response_class=Response,
    summary="Delete a connection",
    description="Scope `write`. Hard delete, for good.",
    responses={**COMMON, 404: E404},
)
async def delete(runtime: CurrentRuntime, connection_id: ConnectionId, _key: WriteKey) -> Response:
    await runtime.connections.delete(connection_id)
    return Response(status_code=204)


@router.get(
    "/{connection_id}/credentials",
    response_model=RevealedCredentials,
    tags=["credentials"],
    summary="Read a connection's decrypted credentials",
    description=(
        "Scope `credentials`. The only response that holds a secret; every read is logged "
        "with the connection id and the API key's name, and written to the event log as "
        "`credentials.revealed` (naming the key, never a secret) before the answer. 409 when "
        "it holds none."
    ),
    responses={**COMMON, 404: E404, 409: E409},
)
async def read_credentials(
    runtime: CurrentRuntime, connection_id: ConnectionId, response: Response, key: CredentialsKey
) -> RevealedCredentials:
    conn, payload = await runtime.connections.reveal_credentials(
        connection_id, revealed_to=key.name
    )
    assert conn.credentials is not None
    _audit_read(conn, key.name)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return RevealedCredentials(
        connection_id=conn.id,
        credential_type=conn.credentials.credential_type,
        expires_at=conn.credentials.expires_at,
        payload=payload_out(payload),  # type: ignore[arg-type]
    )


@router.post(
    "/{connection_id}/access-token",
    response_model=IssuedAccessToken,
    tags=["credentials"],
    summary="Get a current access token",
    description=(
        "Scope `token`. An access token good for at least `min_valid_seconds` (default 60), "
        "refreshed first when the stored one is not. However many callers ask at once, in "
        "however many processes, the provider sees one refresh and every caller gets its "
        "token. Never the refresh token: that takes scope `credentials`. 409 with "
        "`needs_user_action: true` when only a reconnect can help; 503 with Retry-After when "
        "the provider is failing."
    ),
    responses={
        **COMMON,
        400: E400,
        404: E404,
        409: {"model": Problem, "description": "needs its user, or holds no OAuth2 grant"},
        503: {"model": Problem, "description": "the provider is failing, or the database"},
    },
)
async def access_token(
    runtime: CurrentRuntime,
    connection_id: ConnectionId,
    response: Response,
    _key: TokenKey,
    body: Annotated[TokenRequest | None, Body()] = None,
) -> IssuedAccessToken:
    wanted = timedelta(seconds=(body or TokenRequest()).min_valid_seconds)
    token = await runtime.access_tokens.access_token(connection_id, min_valid=wanted)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return IssuedAccessToken(
        access_token=token.token, token_type=token.token_type, expires_at=token.expires_at
    )


def _audit_read(conn: ProviderConnection, key_name: str) -> None:
    assert conn.credentials is not None
    credential_type = conn.credentials.credential_type.value
    audit.info(
        "credentials read connection_id=%s api_key=%s credential_type=%s",
        conn.id,
        key_name,
        credential_type,
        extra={
            "connection_id": str(conn.id),
            "api_key": key_name,
            "credential_type": credential_type,
        },
    )
