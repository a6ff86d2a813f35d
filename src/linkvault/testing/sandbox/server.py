"""The sandbox's state and rules: grants, codes, pending consents, faults and counters.

State lives in memory in one process, behind a lock: serve it with one uvicorn worker.
"""

from __future__ import annotations

import dataclasses
import hmac
import random
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from linkvault.oauth.protocol import parse_basic_authorization, verify_code_challenge
from linkvault.providers import SANDBOX_CLIENT_ID, TokenEndpointAuth
from linkvault.testing.sandbox.app import build_app
from linkvault.testing.sandbox.config import SandboxClient, SandboxConfig
from linkvault.testing.sandbox.faults import Capacity, Fault, FaultKind
from linkvault.testing.sandbox.grants import (
    AuthRequest,
    Code,
    Grant,
    Refusal,
    Tokens,
    invalid_grant,
)

_PENDING_TTL = 600.0
# How many requests to its protected API the sandbox remembers, for assertions.
_API_LOG = 200


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
        self._grants: dict[int, Grant] = {}
        self._refresh_index: dict[str, int] = {}
        self._access_index: dict[str, tuple[int, float]] = {}
        self._codes: dict[str, Code] = {}
        self._pending: dict[str, AuthRequest] = {}
        self._faults: list[Fault] = []
        self._capacity = Capacity(self.settings)
        self._next_id = 0
        self._reset_counters()
        self.app = build_app(self)

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
        self._capacity.peak_waiting = 0
        self._api_log: deque[dict[str, Any]] = deque(maxlen=_API_LOG)
        self._api_requests = 0
        self._api_refused = 0

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
                "api_requests": self._api_requests,
                "api_refused": self._api_refused,
                "queue": {
                    "waiting": self._capacity.waiting,
                    "serving": self._capacity.serving,
                    "peak_waiting": self._capacity.peak_waiting,
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

    def _take_fault(self, grant_type: str, *, only_named: bool = False) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.grant_type not in (None, grant_type):
                    continue
                if only_named and fault.grant_type is None:
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
        client_id: str = SANDBOX_CLIENT_ID,
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

    def expire_access_tokens(self, subject: str | None = None) -> int:
        """End the current access tokens now (a subject's, or all), as if their time ran out.

        The grants stay alive: a refresh issues a new access token. Returns how many ended.
        """
        with self._lock:
            now = self.now()
            ended = 0
            for grant in self._grants.values():
                if subject is not None and grant.subject != subject:
                    continue
                grant.access_expires_at = now - 1
                self._access_index[grant.access_token] = (grant.id, now - 1)
                ended += 1
            return ended

    def api_requests(self) -> list[dict[str, Any]]:
        """The latest requests to the protected API, oldest first: method, path, query, headers."""
        with self._lock:
            return [dict(r) for r in self._api_log]

    def _record_api_request(self, request: Request) -> None:
        entry = {
            "method": request.method,
            "path": request.url.path,
            "query": request.scope.get("query_string", b"").decode("latin-1"),
            # By lower-case name (the last of a repeated one), and every one as it came.
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw},
            "raw_headers": [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw
            ],
        }
        with self._lock:
            self._api_requests += 1
            self._api_log.append(entry)

    def _count_api_refusal(self) -> None:
        with self._lock:
            self._api_refused += 1

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _new_grant(self, subject: str, client_id: str, scope: str) -> Grant:
        now = self.now()
        grant = Grant(
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

    def _token_body(self, grant: Grant, *, include_refresh: bool) -> Tokens:
        body: Tokens = {
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

    def _start_authorization(self, params: Mapping[str, str]) -> tuple[str, AuthRequest] | str:
        """A pending request id and request, or a page-level error (no redirect possible)."""
        client = self._clients.get(params.get("client_id", ""))
        if client is None:
            return "unknown client_id"
        redirect_uri = params.get("redirect_uri", "")
        if not _acceptable_redirect(client, redirect_uri):
            return "redirect_uri is missing or not registered for this client"
        request = AuthRequest(
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

    def _decide(self, request_id: str, approve: bool) -> AuthRequest | None:
        with self._lock:
            request = self._pending.pop(request_id, None)
            if request is None or request.expires_at < self.now():
                self._authorizations["invalid_request"] += 1
                return None
            self._authorizations["approved" if approve else "denied"] += 1
            return request

    def _issue_code(self, request: AuthRequest, subject: str) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = Code(
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
    ) -> SandboxClient | Refusal:
        in_body = "client_secret" in form
        if authorization and in_body:
            return Refusal(400, "invalid_request", "use one client authentication method", "")
        if authorization:
            credentials = parse_basic_authorization(authorization)
            if credentials is None:
                return Refusal(401, "invalid_client", "malformed Basic credentials", "")
            client_id, secret = credentials
            method = TokenEndpointAuth.CLIENT_SECRET_BASIC.value
        elif in_body:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
            method = TokenEndpointAuth.CLIENT_SECRET_POST.value
        else:
            return Refusal(401, "invalid_client", "client authentication required", "")
        client = self._clients.get(client_id)
        if client is None or not hmac.compare_digest(
            client.client_secret.encode(), secret.encode()
        ):
            return Refusal(401, "invalid_client", "client authentication failed", "")
        if method not in client.auth_methods:
            return Refusal(401, "invalid_client", f"{method} is not allowed for this client", "")
        return client

    def _token_grant(
        self, grant_type: str, client: SandboxClient, form: Mapping[str, str]
    ) -> Tokens | Refusal:
        with self._lock:
            if grant_type == "authorization_code":
                outcome = self._redeem_code(client, form)
            else:
                outcome = self._refresh(client, form)
            if isinstance(outcome, Refusal):
                self._refuse(grant_type, outcome.reason)
            else:
                self._issued[grant_type] += 1
            return outcome

    def _redeem_code(self, client: SandboxClient, form: Mapping[str, str]) -> Tokens | Refusal:
        code = self._codes.get(form.get("code", ""))
        if code is None:
            return invalid_grant("unknown authorization code", "code_unknown")
        if code.used:
            # RFC 6749 4.1.2: a reused code revokes what it already issued.
            if code.grant_id is not None and code.grant_id in self._grants:
                self._grants[code.grant_id].revoked = True
            return invalid_grant("authorization code already used", "code_reused")
        code.used = True
        if code.expires_at < self.now():
            return invalid_grant("authorization code expired", "code_expired")
        if code.client_id != client.client_id:
            return invalid_grant("code was issued to another client", "client_mismatch")
        if form.get("redirect_uri") != code.redirect_uri:
            return invalid_grant("redirect_uri does not match", "redirect_uri_mismatch")
        if not verify_code_challenge(form.get("code_verifier"), code.challenge):
            return invalid_grant("PKCE verification failed", "pkce_mismatch")
        grant = self._new_grant(code.subject, client.client_id, code.scope)
        code.grant_id = grant.id
        return self._token_body(grant, include_refresh=True)

    def _refresh(self, client: SandboxClient, form: Mapping[str, str]) -> Tokens | Refusal:
        token = form.get("refresh_token", "")
        if not token:
            return Refusal(400, "invalid_request", "refresh_token is required", "missing_token")
        grant_id = self._refresh_index.get(token)
        grant = self._grants.get(grant_id) if grant_id is not None else None
        if grant is None:
            return invalid_grant("unknown refresh token", "refresh_token_unknown")
        if grant.client_id != client.client_id:
            return invalid_grant("refresh token was issued to another client", "client_mismatch")
        if grant.revoked:
            return invalid_grant("the grant was revoked", "revoked")
        now = self.now()
        if token != grant.refresh_token:
            if self._in_grace(grant, token, now):
                # The answer to the rotation was lost: the same answer again, nothing rotates.
                grant.grace_replays += 1
                self._grace_replays += 1
                return self._token_body(grant, include_refresh=True)
            if self.settings.revoke_family_on_reuse:
                grant.revoked = True
            return invalid_grant("refresh token already used", "refresh_token_reused")
        if grant.refresh_expires_at is not None and grant.refresh_expires_at < now:
            return invalid_grant("refresh token expired", "refresh_token_expired")
        requested = form.get("scope")
        if requested and not set(requested.split()) <= set(grant.scope.split()):
            return Refusal(400, "invalid_scope", "scope exceeds the grant", "scope_exceeded")
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
        try:
            return await self._capacity.serve(handle)
        finally:
            with self._lock:
                self._latencies.append(time.monotonic() - started)

    def _in_grace(self, grant: Grant, token: str, now: float) -> bool:
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

    def _introspect(self, access_token: str) -> Grant | None:
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


def _acceptable_redirect(client: SandboxClient, uri: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        return False
    return client.redirect_uris is None or uri in client.redirect_uris
