"""How a connection is doing: the refresh worker's record read beside it, and what it means.

One rule for every entry point (API, CLI, library): a connection needs the user when only a
reconnect can fix it, needs attention when only an operator can (credentials that do not open
under any configured key, a client the provider rejects), is retrying while transient
failures are on record, and is ok otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.services.refresh import Outcome
from linkvault.stores.common import USER_ACTION_STATUSES, ConnectionHealth

__all__ = ["OPERATOR_OUTCOMES", "HealthReport", "HealthStatus", "assess"]


class HealthStatus(StrEnum):
    """One word for how a connection is doing, the most urgent first."""

    NEEDS_USER_ACTION = "needs_user_action"  # only the user can fix it: reconnect
    NEEDS_ATTENTION = "needs_attention"  # only an operator can fix it: keys, client, config
    RETRYING = "retrying"  # refreshes failed and will be tried again
    OK = "ok"  # nothing anyone needs to do


# Refresh outcomes only an operator can fix (the worker logs connection.needs_attention).
OPERATOR_OUTCOMES = frozenset(
    {Outcome.DECRYPT_FAILED, Outcome.CLIENT_REJECTED, Outcome.UNREFRESHABLE, Outcome.ERROR}
)
_OPERATOR_PREFIXES = tuple(f"{o.value}:" for o in OPERATOR_OUTCOMES)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A connection's refresh record and what it calls for."""

    refresh_failures: int
    next_refresh_at: datetime | None
    last_refresh_error: str | None
    needs_user_action: bool
    needs_user_action_reason: str | None
    health: HealthStatus
    # When the provider ends the current consent by rule (its consent_lifetime); None: never.
    consent_expires_at: datetime | None = None


def assess(
    conn: ProviderConnection,
    record: ConnectionHealth | None,
    *,
    max_attempts: int,
    consent_expires_at: datetime | None = None,
) -> HealthReport:
    """What `record` (the worker's record of `conn`; None: none yet) says about `conn`."""
    record = record or ConnectionHealth(conn.id)
    failures, error = record.refresh_failures, record.last_refresh_error
    active = conn.status is ConnectionStatus.ACTIVE
    reason: str | None = None
    if conn.status in USER_ACTION_STATUSES:
        reason = conn.status_reason or f"the connection is {conn.status.value}: reconnect"
    elif active and failures >= max_attempts:
        reason = (
            f"refresh failed {failures} times in a row and is no longer tried "
            f"(last: {error or 'unknown'}): reconnect"
        )
    if reason is not None:
        health = HealthStatus.NEEDS_USER_ACTION
    elif active and failures > 0 and (error or "").startswith(_OPERATOR_PREFIXES):
        health = HealthStatus.NEEDS_ATTENTION
    elif active and (failures > 0 or error is not None):
        health = HealthStatus.RETRYING
    else:
        health = HealthStatus.OK
    return HealthReport(
        refresh_failures=failures,
        next_refresh_at=record.next_refresh_at,
        last_refresh_error=error,
        needs_user_action=reason is not None,
        needs_user_action_reason=reason,
        health=health,
        consent_expires_at=consent_expires_at if active else None,
    )
