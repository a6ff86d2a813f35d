"""The records the sandbox keeps: grants, authorization codes, pending consents, refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from linkvault.testing.sandbox.config import SandboxClient


@dataclass(slots=True)
class Grant:
    id: int
    subject: str
    client_id: str
    scope: str
    refresh_token: str
    refresh_expires_at: float | None
    access_token: str
    access_expires_at: float
    revoked: bool = False
    refreshes: int = 0
    previous_refresh_token: str | None = None
    rotated_at: float | None = None
    grace_replays: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "client_id": self.client_id,
            "scope": self.scope,
            "refresh_token": self.refresh_token,
            "access_token": self.access_token,
            "revoked": self.revoked,
            "refreshes": self.refreshes,
            "grace_replays": self.grace_replays,
        }


@dataclass(slots=True)
class Code:
    client_id: str
    redirect_uri: str
    challenge: str
    subject: str
    scope: str
    expires_at: float
    used: bool = False
    grant_id: int | None = None


@dataclass(slots=True)
class AuthRequest:
    client: SandboxClient
    redirect_uri: str
    state: str | None
    challenge: str
    scope: str
    expires_at: float


@dataclass(slots=True)
class Refusal:
    status: int
    error: str
    description: str
    reason: str


def invalid_grant(description: str, reason: str) -> Refusal:
    return Refusal(400, "invalid_grant", description, reason)


Tokens = dict[str, Any]
