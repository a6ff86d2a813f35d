"""Moving existing OAuth2 grants into linkvault: one JSON object per line, one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from linkvault.credentials import OAuth2Tokens
from linkvault.domain import Clock, ProviderConnection, utc_now
from linkvault.errors import (
    InvalidArgumentError,
    InvalidConnectionError,
    InvalidCredentialsError,
    UnknownProviderError,
)
from linkvault.ports import Cipher
from linkvault.providers import AuthStyle, Provider, ProviderRegistry
from linkvault.services.connect import connection_with_credentials
from linkvault.stores import ConnectionStore

__all__ = ["GRANT_FIELDS", "Grant", "import_grants", "parse_grants"]

GRANT_FIELDS = (
    "user_id",
    "provider",
    "alias",
    "access_token",
    "refresh_token",
    "token_type",
    "scope",
    "expires_at",
)
_REQUIRED = ("user_id", "provider", "access_token")


@dataclass(frozen=True, slots=True)
class Grant:
    """An OAuth2 grant obtained outside linkvault, for one user at one provider."""

    user_id: UUID
    provider: str
    tokens: OAuth2Tokens
    alias: str | None = None
    line: int = 0


def parse_grants(lines: Iterable[str]) -> list[Grant]:
    """Grants from JSON lines (blank lines skipped); errors name line and field, never a value."""
    grants = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            grants.append(_grant(line, number))
    return grants


async def import_grants(
    store: ConnectionStore,
    registry: ProviderRegistry,
    cipher: Cipher,
    grants: Sequence[Grant],
    *,
    clock: Clock = utc_now,
) -> list[ProviderConnection]:
    """One ACTIVE connection per grant, all saved in one transaction or none."""
    now = clock()
    connections = []
    for grant in grants:
        provider = _oauth2_provider(registry, grant)
        try:
            conn = connection_with_credentials(
                provider,
                user_id=grant.user_id,
                credentials=grant.tokens,
                cipher=cipher,
                alias=grant.alias,
                now=now,
            )
        except InvalidConnectionError as exc:
            raise InvalidArgumentError(f"line {grant.line}: {exc}") from None
        connections.append(conn)
    async with store.transaction() as repo:
        for conn in connections:
            await repo.save(conn)
    return connections


def _oauth2_provider(registry: ProviderRegistry, grant: Grant) -> Provider:
    try:
        provider = registry.get(grant.provider)
    except UnknownProviderError:
        known = ", ".join(registry.slugs)
        raise InvalidArgumentError(
            f"line {grant.line}: unknown provider {grant.provider!r} (known: {known})"
        ) from None
    if provider.auth_style is not AuthStyle.OAUTH2:
        raise InvalidArgumentError(
            f"line {grant.line}: provider {provider.slug!r} does not use OAuth2 grants"
        )
    return provider


def _grant(line: str, number: int) -> Grant:
    where = f"line {number}"
    try:
        document = json.loads(line)
    except ValueError:
        # The decoder's message quotes the text around the fault: it may be a token.
        raise InvalidArgumentError(f"{where}: not a JSON object") from None
    if not isinstance(document, dict):
        raise InvalidArgumentError(f"{where}: not a JSON object")
    unknown = sorted(set(document) - set(GRANT_FIELDS))
    if unknown:
        raise InvalidArgumentError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
            f"(expected: {', '.join(GRANT_FIELDS)})"
        )
    for name in _REQUIRED:
        if not isinstance(document.get(name), str) or not document[name]:
            raise InvalidArgumentError(f"{where}: {name} must be a non-empty string")
    try:
        user_id = UUID(document["user_id"])
    except ValueError:
        raise InvalidArgumentError(f"{where}: user_id is not a UUID") from None
    try:
        tokens = OAuth2Tokens(
            access_token=document["access_token"],
            refresh_token=document.get("refresh_token"),
            token_type=document.get("token_type") or "Bearer",
            scope=document.get("scope"),
            expires_at=_expiry(document.get("expires_at"), where),
        )
        alias = document.get("alias")
        if alias is not None and not isinstance(alias, str):
            raise InvalidArgumentError(f"{where}: alias must be a string")
        return Grant(user_id, document["provider"], tokens, alias, number)
    except (InvalidCredentialsError, InvalidConnectionError) as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from None


def _expiry(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidArgumentError(
            f"{where}: expires_at must be an ISO 8601 time with a UTC offset, "
            "such as 2026-05-01T12:00:00+00:00"
        )
    return parsed
