"""A real OAuth2 authorization server for tests, benchmarks and demos: loopback only.

Authorization-code grant with PKCE S256 behind a consent page, refresh-token grant with
rotation and reuse detection, injectable faults, and counters of every grant issued and
refused, over HTTP (`/admin/...`) and in Python. State lives in memory in one process:
run it with one uvicorn worker.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import html
import json
import random
import re
import secrets
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from linkvault.providers import (
    ClientCredentials,
    Provider,
    TokenEndpointAuth,
    builtin_providers_text,
    parse_providers,
)
from linkvault.serving import Server, bind_loopback, socket_url

DEFAULT_CLIENT_ID = "linkvault-sandbox"
DEFAULT_CLIENT_SECRET = "sandbox-secret"  # a test fixture, not a credential
DEFAULT_SCOPE = "accounts:read"
DEFAULT_SUBJECT = "sandbox-user"
READY_PREFIX = "LINKVAULT_SANDBOX_URL="

_AUTH_METHODS = frozenset(m.value for m in TokenEndpointAuth)
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PENDING_TTL = 600.0
_MAX_SEED = 100_000


# --- configuration -----------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class SandboxClient:
    """A client registered at the sandbox; `redirect_uris=None` accepts any http(s) URI."""

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    auth_methods: frozenset[str] = _AUTH_METHODS
    redirect_uris: tuple[str, ...] | None = None
    name: str = "linkvault"

    def __post_init__(self) -> None:
        unknown = set(self.auth_methods) - _AUTH_METHODS
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


# --- faults ------------------------------------------------------------------


class FaultKind(StrEnum):
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    SLOW = "slow"
    INVALID_GRANT = "invalid_grant"
    REVOKED = "revoked"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    MALFORMED = "malformed"


@dataclass(slots=True)
class Fault:
    """A failure the token endpoint injects: `count` times (None: until cleared), at `rate`."""

    kind: FaultKind
    count: int | None = 1
    rate: float = 1.0
    status: int | None = None
    retry_after: int = 1
    delay: float = 1.0
    grant_type: str | None = None
    id: int = 0

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        if self.count is not None and (not isinstance(self.count, int) or self.count < 1):
            raise ValueError("count must be a positive integer or null")
        if not 0.0 < float(self.rate) <= 1.0:
            raise ValueError("rate must be in (0, 1]")
        if self.kind is FaultKind.SERVER_ERROR:
            self.status = self.status or 500
            if not 500 <= self.status <= 599:
                raise ValueError("a server_error fault needs a 5xx status")
        if self.retry_after < 0 or self.delay < 0:
            raise ValueError("retry_after and delay must not be negative")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        allowed = {f.name for f in dataclasses.fields(cls)} - {"id"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault field(s) {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault needs a kind")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- state -------------------------------------------------------------------


@dataclass(slots=True)
class _Grant:
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
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    subject: str
    scope: str
    expires_at: float
    used: bool = False
    grant_id: int | None = None


@dataclass(slots=True)
class _AuthRequest:
    client: SandboxClient
    redirect_uri: str
    state: str | None
    challenge: str
    scope: str
    expires_at: float


@dataclass(slots=True)
class _Refusal:
    status: int
    error: str
    description: str
    reason: str


_Tokens = dict[str, Any]


class Sandbox:
    """The sandbox authorization server: its ASGI `app` and a thread-safe Python API."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        config = config or SandboxConfig()
        self._clients = {c.client_id: c for c in config.clients}
        self.settings = dataclasses.replace(config.settings)
        self.default_scope = config.default_scope
        self._lock = threading.Lock()
        self._random = random.Random(config.seed)  # noqa: S311 - fault sampling, not security
        self._clock_offset = 0.0
        self._grants: dict[int, _Grant] = {}
        self._refresh_index: dict[str, int] = {}
        self._access_index: dict[str, tuple[int, float]] = {}
        self._codes: dict[str, _Code] = {}
        self._pending: dict[str, _AuthRequest] = {}
        self._faults: list[Fault] = []
        self._gate: asyncio.Condition | None = None
        self._waiting = 0
        self._serving = 0
        self._next_id = 0
        self._reset_counters()
        self.app = _build_app(self)

    # --- clock -----------------------------------------------------------------

    def now(self) -> float:
        """Sandbox time in epoch seconds (wall clock plus any advance)."""
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move sandbox time forward, so tokens and codes expire without waiting."""
        with self._lock:
            self._clock_offset += seconds

    # --- counters --------------------------------------------------------------

    def _reset_counters(self) -> None:
        self._issued: Counter[str] = Counter()
        self._refused: dict[str, Counter[str]] = {}
        self._fault_hits: Counter[str] = Counter()
        self._authorizations: Counter[str] = Counter()
        self._seeded = 0
        self._revocations = 0
        self._grace_replays = 0
        self._latencies: list[float] = []
        self._peak_waiting = 0

    def _refuse(self, grant_type: str, reason: str) -> None:
        self._refused.setdefault(grant_type, Counter())[reason] += 1

    def _count_refusal(self, grant_type: str, reason: str) -> None:
        with self._lock:
            self._refuse(grant_type, reason)

    def stats(self) -> dict[str, Any]:
        """Counters: grants issued and refused (by grant type and reason), faults, seeds."""
        with self._lock:
            refused = {gt: dict(reasons) for gt, reasons in self._refused.items()}
            return {
                "issued": dict(self._issued),
                "issued_total": sum(self._issued.values()),
                "refused": refused,
                "refused_total": sum(sum(r.values()) for r in self._refused.values()),
                "faults": dict(self._fault_hits),
                "authorizations": dict(self._authorizations),
                "seeded": self._seeded,
                "revocations": self._revocations,
                "live_grants": sum(1 for g in self._grants.values() if not g.revoked),
                "grace_replays": self._grace_replays,
                "token_latency": _latency_summary(self._latencies),
                "queue": {
                    "waiting": self._waiting,
                    "serving": self._serving,
                    "peak_waiting": self._peak_waiting,
                },
            }

    def reset(self, *, counters: bool = True, faults: bool = True, grants: bool = False) -> None:
        """Zero the counters, drop the faults, and optionally forget every grant."""
        with self._lock:
            if counters:
                self._reset_counters()
            if faults:
                self._faults.clear()
            if grants:
                self._grants.clear()
                self._refresh_index.clear()
                self._access_index.clear()
                self._codes.clear()
                self._pending.clear()

    # --- faults ----------------------------------------------------------------

    def inject_fault(
        self,
        kind: FaultKind | str,
        *,
        count: int | None = 1,
        rate: float = 1.0,
        status: int | None = None,
        retry_after: int = 1,
        delay: float = 1.0,
        grant_type: str | None = None,
    ) -> Fault:
        """Make the next `count` matching token requests fail with `kind` (None: until cleared)."""
        fault = Fault(FaultKind(kind), count, rate, status, retry_after, delay, grant_type)
        return self.add_fault(fault)

    def add_fault(self, fault: Fault) -> Fault:
        """Queue a fault; the first matching one in the queue fires."""
        with self._lock:
            self._next_id += 1
            fault.id = self._next_id
            self._faults.append(fault)
            return dataclasses.replace(fault)

    def faults(self) -> list[Fault]:
        """The faults still queued."""
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, grant_type: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.grant_type not in (None, grant_type):
                    continue
                if fault.rate < 1.0 and self._random.random() >= fault.rate:
                    continue
                fired = dataclasses.replace(fault)
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                self._fault_hits[fault.kind.value] += 1
                if fault.kind is not FaultKind.SLOW:
                    self._refuse(grant_type, f"fault:{fault.kind.value}")
                return fired
            return None

    # --- grants ----------------------------------------------------------------

    def seed_grants(
        self,
        subjects: Iterable[str],
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        scope: str | None = None,
    ) -> list[dict[str, Any]]:
        """Issue a grant per subject without the browser dance (counted as seeded, not issued)."""
        if client_id not in self._clients:
            raise ValueError(f"unknown client {client_id!r}")
        with self._lock:
            out = []
            for subject in subjects:
                grant = self._new_grant(subject, client_id, scope or self.default_scope)
                self._seeded += 1
                out.append(self._token_body(grant, include_refresh=True) | {"subject": subject})
            return out

    def grants(self, subject: str | None = None) -> list[dict[str, Any]]:
        """Every grant (or a subject's) with its current tokens, for assertions."""
        with self._lock:
            return [
                g.public() for g in self._grants.values() if subject is None or g.subject == subject
            ]

    def revoke_subject(self, subject: str) -> int:
        """Revoke all of a subject's grants, as if the user withdrew consent; returns how many."""
        with self._lock:
            hit = [g for g in self._grants.values() if g.subject == subject and not g.revoked]
            for grant in hit:
                grant.revoked = True
            self._revocations += len(hit)
            return len(hit)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _new_grant(self, subject: str, client_id: str, scope: str) -> _Grant:
        now = self.now()
        grant = _Grant(
            id=self._new_id(),
            subject=subject,
            client_id=client_id,
            scope=scope,
            refresh_token=secrets.token_urlsafe(32),
            refresh_expires_at=self._refresh_expiry(now),
            access_token=secrets.token_urlsafe(32),
            access_expires_at=now + self.settings.access_token_ttl,
        )
        self._grants[grant.id] = grant
        self._refresh_index[grant.refresh_token] = grant.id
        self._access_index[grant.access_token] = (grant.id, grant.access_expires_at)
        return grant

    def _refresh_expiry(self, now: float) -> float | None:
        ttl = self.settings.refresh_token_ttl
        return None if ttl is None else now + ttl

    def _token_body(self, grant: _Grant, *, include_refresh: bool) -> _Tokens:
        body: _Tokens = {
            "access_token": grant.access_token,
            "token_type": "Bearer",
            "expires_in": int(self.settings.access_token_ttl),
            "scope": grant.scope,
        }
        if include_refresh:
            body["refresh_token"] = grant.refresh_token
            if grant.refresh_expires_at is not None:
                body["refresh_token_expires_in"] = round(grant.refresh_expires_at - self.now())
        return body

    # --- the authorization endpoint -----------------------------------------------

    def _start_authorization(self, params: Mapping[str, str]) -> tuple[str, _AuthRequest] | str:
        """A pending request id and request, or a page-level error (no redirect possible)."""
        client = self._clients.get(params.get("client_id", ""))
        if client is None:
            return "unknown client_id"
        redirect_uri = params.get("redirect_uri", "")
        if not _acceptable_redirect(client, redirect_uri):
            return "redirect_uri is missing or not registered for this client"
        request = _AuthRequest(
            client=client,
            redirect_uri=redirect_uri,
            state=params.get("state"),
            challenge=params.get("code_challenge", ""),
            scope=params.get("scope") or self.default_scope,
            expires_at=self.now() + _PENDING_TTL,
        )
        request_id = secrets.token_urlsafe(16)
        with self._lock:
            self._prune_pending()
            self._pending[request_id] = request
        return request_id, request

    def _prune_pending(self) -> None:
        now = self.now()
        for key in [k for k, r in self._pending.items() if r.expires_at < now]:
            del self._pending[key]

    def _decide(self, request_id: str, approve: bool) -> _AuthRequest | None:
        with self._lock:
            request = self._pending.pop(request_id, None)
            if request is None or request.expires_at < self.now():
                self._authorizations["invalid_request"] += 1
                return None
            self._authorizations["approved" if approve else "denied"] += 1
            return request

    def _issue_code(self, request: _AuthRequest, subject: str) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = _Code(
                client_id=request.client.client_id,
                redirect_uri=request.redirect_uri,
                challenge=request.challenge,
                subject=subject,
                scope=request.scope,
                expires_at=self.now() + self.settings.code_ttl,
            )
        return code

    # --- the token endpoint -------------------------------------------------------

    def _authenticate(
        self, authorization: str | None, form: Mapping[str, str]
    ) -> SandboxClient | _Refusal:
        in_body = "client_secret" in form
        if authorization and in_body:
            return _Refusal(400, "invalid_request", "use one client authentication method", "")
        if authorization:
            credentials = _parse_basic(authorization)
            if credentials is None:
                return _Refusal(401, "invalid_client", "malformed Basic credentials", "")
            client_id, secret = credentials
            method = TokenEndpointAuth.CLIENT_SECRET_BASIC.value
        elif in_body:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
            method = TokenEndpointAuth.CLIENT_SECRET_POST.value
        else:
            return _Refusal(401, "invalid_client", "client authentication required", "")
        client = self._clients.get(client_id)
        if client is None or not hmac.compare_digest(
            client.client_secret.encode(), secret.encode()
        ):
            return _Refusal(401, "invalid_client", "client authentication failed", "")
        if method not in client.auth_methods:
            return _Refusal(401, "invalid_client", f"{method} is not allowed for this client", "")
        return client

    def _token_grant(
        self, grant_type: str, client: SandboxClient, form: Mapping[str, str]
    ) -> _Tokens | _Refusal:
        with self._lock:
            if grant_type == "authorization_code":
                outcome = self._redeem_code(client, form)
            else:
                outcome = self._refresh(client, form)
            if isinstance(outcome, _Refusal):
                self._refuse(grant_type, outcome.reason)
            else:
                self._issued[grant_type] += 1
            return outcome

    def _redeem_code(self, client: SandboxClient, form: Mapping[str, str]) -> _Tokens | _Refusal:
        code = self._codes.get(form.get("code", ""))
        if code is None:
            return _invalid_grant("unknown authorization code", "code_unknown")
        if code.used:
            # RFC 6749 4.1.2: a reused code revokes what it already issued.
            if code.grant_id is not None and code.grant_id in self._grants:
                self._grants[code.grant_id].revoked = True
            return _invalid_grant("authorization code already used", "code_reused")
        code.used = True
        if code.expires_at < self.now():
            return _invalid_grant("authorization code expired", "code_expired")
        if code.client_id != client.client_id:
            return _invalid_grant("code was issued to another client", "client_mismatch")
        if form.get("redirect_uri") != code.redirect_uri:
            return _invalid_grant("redirect_uri does not match", "redirect_uri_mismatch")
        if not _pkce_matches(form.get("code_verifier"), code.challenge):
            return _invalid_grant("PKCE verification failed", "pkce_mismatch")
        grant = self._new_grant(code.subject, client.client_id, code.scope)
        code.grant_id = grant.id
        return self._token_body(grant, include_refresh=True)

    def _refresh(self, client: SandboxClient, form: Mapping[str, str]) -> _Tokens | _Refusal:
        token = form.get("refresh_token", "")
        if not token:
            return _Refusal(400, "invalid_request", "refresh_token is required", "missing_token")
        grant_id = self._refresh_index.get(token)
        grant = self._grants.get(grant_id) if grant_id is not None else None
        if grant is None:
            return _invalid_grant("unknown refresh token", "refresh_token_unknown")
        if grant.client_id != client.client_id:
            return _invalid_grant("refresh token was issued to another client", "client_mismatch")
        if grant.revoked:
            return _invalid_grant("the grant was revoked", "revoked")
        now = self.now()
        if token != grant.refresh_token:
            if self._in_grace(grant, token, now):
                # The answer to the rotation was lost: the same answer again, nothing rotates.
                grant.grace_replays += 1
                self._grace_replays += 1
                return self._token_body(grant, include_refresh=True)
            if self.settings.revoke_family_on_reuse:
                grant.revoked = True
            return _invalid_grant("refresh token already used", "refresh_token_reused")
        if grant.refresh_expires_at is not None and grant.refresh_expires_at < now:
            return _invalid_grant("refresh token expired", "refresh_token_expired")
        requested = form.get("scope")
        if requested and not set(requested.split()) <= set(grant.scope.split()):
            return _Refusal(400, "invalid_scope", "scope exceeds the grant", "scope_exceeded")
        rotate = self.settings.rotate_refresh_tokens
        if rotate:
            grant.previous_refresh_token, grant.rotated_at = grant.refresh_token, now
            grant.refresh_token = secrets.token_urlsafe(32)
            grant.refresh_expires_at = self._refresh_expiry(now)
            self._refresh_index[grant.refresh_token] = grant.id
        grant.access_token = secrets.token_urlsafe(32)
        grant.access_expires_at = now + self.settings.access_token_ttl
        self._access_index[grant.access_token] = (grant.id, grant.access_expires_at)
        grant.refreshes += 1
        body = self._token_body(grant, include_refresh=rotate or self.settings.echo_refresh_token)
        if requested:
            body["scope"] = requested
        return body

    async def _serve_token_request(self, handle: Callable[[], Awaitable[Response]]) -> Response:
        """Run a token request through the capacity model, recording its latency."""
        started = time.monotonic()
        if self._gate is None:
            self._gate = asyncio.Condition()
        gate = self._gate
        async with gate:
            self._waiting += 1
            self._peak_waiting = max(self._peak_waiting, self._waiting)
            try:
                await gate.wait_for(lambda: self._serving < (self.settings.capacity or 1 << 30))
            finally:
                self._waiting -= 1
            self._serving += 1
        try:
            if self.settings.service_time > 0:
                await asyncio.sleep(self.settings.service_time)
            return await handle()
        finally:
            async with gate:
                self._serving -= 1
                gate.notify_all()
            with self._lock:
                self._latencies.append(time.monotonic() - started)

    def _in_grace(self, grant: _Grant, token: str, now: float) -> bool:
        grace = self.settings.refresh_token_reuse_grace
        return (
            grace > 0
            and token == grant.previous_refresh_token
            and grant.rotated_at is not None
            and now - grant.rotated_at <= grace
        )

    def _revoke_token(self, client: SandboxClient, token: str) -> None:
        with self._lock:
            grant_id = self._refresh_index.get(token)
            if grant_id is None and token in self._access_index:
                grant_id = self._access_index[token][0]
            grant = self._grants.get(grant_id) if grant_id is not None else None
            if grant is not None and grant.client_id == client.client_id and not grant.revoked:
                grant.revoked = True
                self._revocations += 1

    def _introspect(self, access_token: str) -> _Grant | None:
        with self._lock:
            grant_id, expires_at = self._access_index.get(access_token, (None, 0.0))
            grant = self._grants.get(grant_id) if grant_id is not None else None
            if grant is None or grant.revoked or expires_at < self.now():
                return None
            return dataclasses.replace(grant)


def _latency_summary(latencies: Sequence[float]) -> dict[str, float | int]:
    ordered = sorted(latencies)
    if not ordered:
        return {"count": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"count": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 4)}


def _invalid_grant(description: str, reason: str) -> _Refusal:
    return _Refusal(400, "invalid_grant", description, reason)


def _pkce_matches(verifier: str | None, challenge: str) -> bool:
    if not verifier or not _VERIFIER.match(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed, challenge)


def _parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def _acceptable_redirect(client: SandboxClient, uri: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        return False
    return client.redirect_uris is None or uri in client.redirect_uris


def _with_query(uri: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- HTTP --------------------------------------------------------------------


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


def _oauth_error(refusal: _Refusal, *, basic: bool = False) -> Response:
    headers = (
        {"WWW-Authenticate": 'Basic realm="sandbox"'} if refusal.status == 401 and basic else {}
    )
    body = {"error": refusal.error, "error_description": refusal.description}
    return _json(refusal.status, body, headers)


async def _read_form(request: Request) -> dict[str, str] | None:
    body = await request.body()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    form = dict(pairs)
    return form if len(form) == len(pairs) else None


async def _read_json(request: Request) -> Any:
    body = await request.body()
    return json.loads(body) if body.strip() else {}


_Endpoint = Callable[[Request], Awaitable[Response]]


def _admin(endpoint: _Endpoint) -> _Endpoint:
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json(400, {"error": "bad_request", "error_description": str(exc)})

    return guarded


def _fault_response(fault: Fault) -> Response:
    if fault.kind is FaultKind.SERVER_ERROR:
        return Response(
            "<html><body>upstream error</body></html>", fault.status or 500, media_type="text/html"
        )
    if fault.kind is FaultKind.RATE_LIMITED:
        return _json(
            429,
            {"error": "rate_limited", "error_description": "slow down"},
            {"Retry-After": str(fault.retry_after)},
        )
    if fault.kind is FaultKind.MALFORMED:
        return Response('{"access_token": "trunc', 200, media_type="application/json")
    errors = {
        FaultKind.INVALID_GRANT: ("invalid_grant", "injected invalid_grant"),
        FaultKind.REVOKED: ("access_denied", "the user revoked access"),
        FaultKind.UNAUTHORIZED_CLIENT: ("unauthorized_client", "client not allowed"),
    }
    error, description = errors[fault.kind]
    return _json(400, {"error": error, "error_description": description})


def _build_app(sandbox: Sandbox) -> Starlette:
    async def token(request: Request) -> Response:
        return await sandbox._serve_token_request(lambda: token_request(request))

    async def token_request(request: Request) -> Response:
        form = await _read_form(request)
        if form is None:
            sandbox._count_refusal("unknown", "invalid_request")
            return _oauth_error(
                _Refusal(400, "invalid_request", "malformed or repeated parameters", "")
            )
        grant_type = form.get("grant_type", "")
        label = (
            grant_type if grant_type in ("authorization_code", "refresh_token") else "unsupported"
        )
        fault = sandbox._take_fault(label)
        if fault is not None:
            if fault.kind is not FaultKind.SLOW:
                return _fault_response(fault)
            await asyncio.sleep(fault.delay)
        authorization = request.headers.get("authorization")
        client = sandbox._authenticate(authorization, form)
        if isinstance(client, _Refusal):
            sandbox._count_refusal(label, client.error)
            return _oauth_error(client, basic=authorization is not None)
        if label == "unsupported":
            sandbox._count_refusal(label, "unsupported_grant_type")
            return _oauth_error(
                _Refusal(400, "unsupported_grant_type", "unsupported grant_type", "")
            )
        outcome = sandbox._token_grant(grant_type, client, form)
        if isinstance(outcome, _Refusal):
            return _oauth_error(outcome)
        return _json(200, outcome)

    async def authorize(request: Request) -> Response:
        if request.method == "POST":
            return await _consent_submitted(sandbox, request)
        params = dict(request.query_params)
        started = sandbox._start_authorization(params)
        if isinstance(started, str):
            with sandbox._lock:
                sandbox._authorizations["invalid_request"] += 1
            return HTMLResponse(_error_page(started), status_code=400)
        request_id, pending = started
        problem = _authorize_problem(params)
        if problem is not None:
            with sandbox._lock:
                sandbox._pending.pop(request_id, None)
                sandbox._authorizations[problem[0]] += 1
            error, description = problem
            target = _with_query(
                pending.redirect_uri,
                {
                    "error": error,
                    "error_description": description,
                    "state": pending.state,
                },
            )
            return RedirectResponse(target, status_code=302)
        hint = params.get("login_hint") or DEFAULT_SUBJECT
        return HTMLResponse(_consent_page(request_id, pending, hint), headers=_NO_STORE)

    async def revoke(request: Request) -> Response:
        form = await _read_form(request)
        if form is None or not form.get("token"):
            return _oauth_error(_Refusal(400, "invalid_request", "token is required", ""))
        authorization = request.headers.get("authorization")
        client = sandbox._authenticate(authorization, form)
        if isinstance(client, _Refusal):
            return _oauth_error(client, basic=authorization is not None)
        sandbox._revoke_token(client, form["token"])
        return Response(status_code=200, headers=_NO_STORE)

    async def me(request: Request) -> Response:
        scheme, _, access_token = request.headers.get("authorization", "").partition(" ")
        grant = sandbox._introspect(access_token) if scheme.lower() == "bearer" else None
        if grant is None:
            return _json(401, {"error": "invalid_token"}, {"WWW-Authenticate": "Bearer"})
        return _json(200, {"subject": grant.subject, "scope": grant.scope})

    async def admin_stats(request: Request) -> Response:
        return _json(200, sandbox.stats())

    async def admin_reset(request: Request) -> Response:
        body = await _read_json(request)
        sandbox.reset(
            counters=bool(body.get("counters", True)),
            faults=bool(body.get("faults", True)),
            grants=bool(body.get("grants", False)),
        )
        return _json(200, sandbox.stats())

    async def admin_faults(request: Request) -> Response:
        if request.method == "POST":
            fault = sandbox.add_fault(Fault.from_json(await _read_json(request)))
            return _json(201, fault.as_dict())
        if request.method == "DELETE":
            sandbox.clear_faults()
        return _json(200, [f.as_dict() for f in sandbox.faults()])

    async def admin_settings(request: Request) -> Response:
        if request.method == "PATCH":
            changes = await _read_json(request)
            with sandbox._lock:
                sandbox.settings.update(changes)
        with sandbox._lock:
            return _json(200, sandbox.settings.as_dict())

    async def admin_clock(request: Request) -> Response:
        body = await _read_json(request)
        sandbox.advance_clock(float(body.get("advance", 0)))
        return _json(200, {"now": sandbox.now()})

    async def admin_grants(request: Request) -> Response:
        if request.method == "GET":
            return _json(200, sandbox.grants(request.query_params.get("subject")))
        body = await _read_json(request)
        subjects = body.get("subjects")
        if subjects is None:
            count = int(body.get("count", 1))
            if not 0 < count <= _MAX_SEED:
                raise ValueError(f"count must be 1 to {_MAX_SEED}")
            prefix = str(body.get("subject_prefix", "user-"))
            subjects = [f"{prefix}{n}" for n in range(count)]
        if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
            raise ValueError("subjects must be a list of strings")
        seeded = sandbox.seed_grants(
            subjects,
            client_id=str(body.get("client_id", DEFAULT_CLIENT_ID)),
            scope=body.get("scope"),
        )
        return _json(201, seeded)

    async def admin_revoke(request: Request) -> Response:
        body = await _read_json(request)
        return _json(200, {"revoked": sandbox.revoke_subject(str(body["subject"]))})

    async def health(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    return Starlette(
        routes=[
            Route("/oauth/authorize", authorize, methods=["GET", "POST"]),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/oauth/revoke", revoke, methods=["POST"]),
            Route("/api/me", me, methods=["GET"]),
            Route("/admin/stats", _admin(admin_stats), methods=["GET"]),
            Route("/admin/reset", _admin(admin_reset), methods=["POST"]),
            Route("/admin/faults", _admin(admin_faults), methods=["GET", "POST", "DELETE"]),
            Route("/admin/settings", _admin(admin_settings), methods=["GET", "PATCH"]),
            Route("/admin/clock", _admin(admin_clock), methods=["POST"]),
            Route("/admin/grants", _admin(admin_grants), methods=["GET", "POST"]),
            Route("/admin/revoke", _admin(admin_revoke), methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ],
    )


def _authorize_problem(params: Mapping[str, str]) -> tuple[str, str] | None:
    if params.get("response_type") != "code":
        return "unsupported_response_type", "only response_type=code is supported"
    if not params.get("code_challenge"):
        return "invalid_request", "PKCE is required: send code_challenge"
    if params.get("code_challenge_method") != "S256":
        return "invalid_request", "code_challenge_method must be S256"
    return None


async def _consent_submitted(sandbox: Sandbox, request: Request) -> Response:
    form = await _read_form(request) or {}
    approve = form.get("decision") == "approve"
    subject = (form.get("subject") or DEFAULT_SUBJECT).strip()[:200] or DEFAULT_SUBJECT
    pending = sandbox._decide(form.get("request_id", ""), approve)
    if pending is None:
        return HTMLResponse(_error_page("this authorization request expired"), status_code=400)
    if not approve:
        params = {"error": "access_denied", "error_description": "the user denied access"}
        target = _with_query(pending.redirect_uri, {**params, "state": pending.state})
        return RedirectResponse(target, status_code=303)
    code = sandbox._issue_code(pending, subject)
    target = _with_query(pending.redirect_uri, {"code": code, "state": pending.state})
    return RedirectResponse(target, status_code=303)


def _consent_page(request_id: str, pending: _AuthRequest, subject: str) -> str:
    e = html.escape
    scopes = "".join(f"<li>{e(s)}</li>" for s in pending.scope.split())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sandbox provider: authorize</title></head>
<body>
<h1>Authorize {e(pending.client.name)}</h1>
<p>{e(pending.client.name)} asks to access your sandbox account:</p>
<ul id="scopes">{scopes}</ul>
<form method="post" action="/oauth/authorize" id="consent">
<input type="hidden" name="request_id" value="{e(request_id)}">
<label for="subject">Signed in as</label>
<input type="text" id="subject" name="subject" value="{e(subject)}">
<button type="submit" id="approve" name="decision" value="approve">Approve</button>
<button type="submit" id="deny" name="decision" value="deny">Deny</button>
</form>
</body></html>
"""


def _error_page(message: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Sandbox provider: error</title></head>"
        f'<body><h1>Authorization error</h1><p id="error">{html.escape(message)}</p></body></html>'
    )


# --- providers pointing at a sandbox ------------------------------------------


def sandbox_provider(
    base_url: str,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str | None = DEFAULT_CLIENT_SECRET,
    token_endpoint_auth: TokenEndpointAuth = TokenEndpointAuth.CLIENT_SECRET_BASIC,
) -> Provider:
    """The built-in `sandbox` provider, pointed at `base_url` with these client credentials."""
    builtin = next(p for p in parse_providers(builtin_providers_text()) if p.slug == "sandbox")
    return dataclasses.replace(
        builtin,
        base_url=base_url,
        token_endpoint_auth=token_endpoint_auth,
        client=ClientCredentials(client_id, client_secret),
    )


# --- admin over HTTP (for other processes) -------------------------------------


class SandboxAdmin:
    """The sandbox's admin endpoints over HTTP, for code outside the sandbox's process."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def stats(self) -> dict[str, Any]:
        """The sandbox's counters."""
        result: dict[str, Any] = self._call("GET", "/admin/stats")
        return result

    def reset(self, *, counters: bool = True, faults: bool = True, grants: bool = False) -> None:
        """Zero counters, drop faults, optionally forget every grant."""
        self._call(
            "POST", "/admin/reset", json={"counters": counters, "faults": faults, "grants": grants}
        )

    def inject_fault(self, kind: FaultKind | str, **options: Any) -> dict[str, Any]:
        """Queue a fault (same options as Sandbox.inject_fault)."""
        result: dict[str, Any] = self._call(
            "POST", "/admin/faults", json={"kind": str(kind), **options}
        )
        return result

    def faults(self) -> list[dict[str, Any]]:
        """The faults still queued."""
        result: list[dict[str, Any]] = self._call("GET", "/admin/faults")
        return result

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._call("DELETE", "/admin/faults")

    def update_settings(self, **changes: Any) -> dict[str, Any]:
        """Change token lifetimes or rotation while the sandbox runs."""
        result: dict[str, Any] = self._call("PATCH", "/admin/settings", json=changes)
        return result

    def advance_clock(self, seconds: float) -> None:
        """Move sandbox time forward."""
        self._call("POST", "/admin/clock", json={"advance": seconds})

    def seed_grants(
        self,
        subjects: Sequence[str] | None = None,
        *,
        count: int | None = None,
        subject_prefix: str = "user-",
        client_id: str = DEFAULT_CLIENT_ID,
        scope: str | None = None,
    ) -> list[dict[str, Any]]:
        """Issue grants without the browser dance; each item holds subject and tokens."""
        body: dict[str, Any] = {"client_id": client_id, "scope": scope}
        if subjects is not None:
            body["subjects"] = list(subjects)
        else:
            body.update(count=count or 1, subject_prefix=subject_prefix)
        result: list[dict[str, Any]] = self._call("POST", "/admin/grants", json=body)
        return result

    def grants(self, subject: str | None = None) -> list[dict[str, Any]]:
        """Grants with their current tokens."""
        params = {"subject": subject} if subject is not None else None
        result: list[dict[str, Any]] = self._call("GET", "/admin/grants", params=params)
        return result

    def revoke_subject(self, subject: str) -> int:
        """Revoke all of a subject's grants."""
        result: dict[str, int] = self._call("POST", "/admin/revoke", json={"subject": subject})
        return result["revoked"]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SandboxAdmin({self.url!r})"


# --- running it ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningSandbox:
    """A sandbox serving on `url`, with its in-process `sandbox` for direct control."""

    url: str
    sandbox: Sandbox

    def provider(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = DEFAULT_CLIENT_SECRET,
        token_endpoint_auth: TokenEndpointAuth = TokenEndpointAuth.CLIENT_SECRET_BASIC,
    ) -> Provider:
        """The `sandbox` provider pointed at this server."""
        return sandbox_provider(
            self.url,
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth=token_endpoint_auth,
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point the registry's `sandbox` provider here."""
        return {
            "LINKVAULT_PROVIDER_SANDBOX_BASE_URL": self.url,
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_ID": DEFAULT_CLIENT_ID,
            "LINKVAULT_PROVIDER_SANDBOX_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        }


def _server(
    sandbox: Sandbox, log_level: str, access_log: bool, on_started: Callable[[], None]
) -> Server:
    config = uvicorn.Config(
        sandbox.app,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=5,
        backlog=2048,
    )
    return Server(config, on_started)


def serve_sandbox(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    config: SandboxConfig | None = None,
    sandbox: Sandbox | None = None,
    log_level: str = "warning",
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the sandbox until SIGINT/SIGTERM; `on_ready` gets the base URL once it listens.

    One process, one event loop: the sandbox keeps its state in memory.
    """
    sandbox = sandbox or Sandbox(config)
    sock = bind_loopback(host, port)
    url = socket_url(sock)
    server = _server(sandbox, log_level, access_log, lambda: on_ready(url) if on_ready else None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def sandbox_in_thread(
    config: SandboxConfig | None = None,
    *,
    sandbox: Sandbox | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
) -> Iterator[RunningSandbox]:
    """Serve a sandbox on a free loopback port in a background thread; stopped on exit."""
    sandbox = sandbox or Sandbox(config)
    sock = bind_loopback(host, 0)
    started = threading.Event()
    server = _server(sandbox, "warning", False, started.set)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="linkvault-sandbox", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not started.wait(0.05):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
        yield RunningSandbox(socket_url(sock), sandbox)
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()


@contextmanager
def sandbox_in_subprocess(*args: str, startup_timeout: float = 20.0) -> Iterator[SandboxAdmin]:
    """Serve a sandbox in its own Python process on a free loopback port; stopped on exit.

    `args` are `python -m linkvault.sandbox` options (for example `--no-rotation`).
    """
    command = [sys.executable, "-m", "linkvault.sandbox", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        url = _read_ready_line(process, startup_timeout)
        with SandboxAdmin(url) as admin:
            yield admin
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _read_ready_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line.startswith(READY_PREFIX):
        raise RuntimeError(f"the sandbox process did not start (exit code {process.poll()})")
    return line.removeprefix(READY_PREFIX).strip()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m linkvault.sandbox`: serve a sandbox, printing its URL once it listens."""
    parser = argparse.ArgumentParser(prog="python -m linkvault.sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--access-token-ttl", type=float, default=1800.0)
    parser.add_argument("--refresh-token-ttl", type=float, default=None)
    parser.add_argument("--no-rotation", action="store_true")
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    parser.add_argument("--access-log", action="store_true")
    options = parser.parse_args(argv)
    settings = SandboxSettings(
        access_token_ttl=options.access_token_ttl,
        refresh_token_ttl=options.refresh_token_ttl,
        rotate_refresh_tokens=not options.no_rotation,
    )
    config = SandboxConfig(
        clients=(SandboxClient(options.client_id, options.client_secret),), settings=settings
    )

    def announce(url: str) -> None:
        print(f"{READY_PREFIX}{url}", flush=True)

    serve_sandbox(
        options.host,
        options.port,
        config=config,
        access_log=options.access_log,
        on_ready=announce,
    )


if __name__ == "__main__":
    main()
