"""What a sandbox is configured with: registered clients, grant settings, the fault seed."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from linkvault.providers import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TokenEndpointAuth

DEFAULT_SCOPE = "accounts:read"
DEFAULT_SUBJECT = "sandbox-user"

AUTH_METHODS = frozenset(m.value for m in TokenEndpointAuth)


@dataclass(frozen=True, slots=True, repr=False)
class SandboxClient:
    """A client registered at the sandbox; `redirect_uris=None` accepts any http(s) URI."""

    client_id: str = SANDBOX_CLIENT_ID
    client_secret: str = SANDBOX_CLIENT_SECRET
    auth_methods: frozenset[str] = AUTH_METHODS
    redirect_uris: tuple[str, ...] | None = None
    name: str = "linkvault"

    def __post_init__(self) -> None:
        unknown = set(self.auth_methods) - AUTH_METHODS
        if unknown:
            raise ValueError(f"unknown token endpoint auth method(s) {sorted(unknown)}")

    def __repr__(self) -> str:
        return f"SandboxClient(client_id={self.client_id!r}, client_secret=<hidden>)"


@dataclass(slots=True)
class SandboxSettings:
    """What the sandbox does with grants; changeable while it runs."""

    access_token_ttl: float = 1800.0
    refresh_token_ttl: float | None = None
    code_ttl: float = 60.0
    rotate_refresh_tokens: bool = True
    # A rotated-out refresh token used again revokes the whole grant (OAuth 2.0 Security BCP).
    revoke_family_on_reuse: bool = True
    # Without rotation, whether a refresh answer repeats the refresh token or omits it.
    echo_refresh_token: bool = True
    # Seconds a rotated-out refresh token may be replayed for the same answer (0: never).
    refresh_token_reuse_grace: float = 0.0
    # A capacity model of the token endpoint: at most `capacity` requests are served at once,
    # each taking `service_time` seconds; the rest wait in line, as at a saturated server.
    capacity: int | None = None
    service_time: float = 0.0

    def update(self, changes: Mapping[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}")
        for name, value in changes.items():
            _check_setting(name, value)
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_setting(name: str, value: object) -> None:
    if name in ("rotate_refresh_tokens", "revoke_family_on_reuse", "echo_refresh_token"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return
    if value is None and name in ("refresh_token_ttl", "capacity"):
        return
    if name == "capacity":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("capacity must be a positive whole number, or null for no limit")
        return
    if name in ("refresh_token_reuse_grace", "service_time"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{name} must be a number of seconds, 0 or more")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds")


@dataclass(slots=True)
class SandboxConfig:
    """Clients, token lifetimes and the fault RNG seed of one sandbox."""

    clients: Sequence[SandboxClient] = (SandboxClient(),)
    settings: SandboxSettings = field(default_factory=SandboxSettings)
    default_scope: str = DEFAULT_SCOPE
    seed: int | None = None
