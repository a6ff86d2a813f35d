"""The sandbox's admin endpoints over HTTP, for tests whose sandbox runs in another process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from linkvault.providers import SANDBOX_CLIENT_ID
from linkvault.testing.sandbox.faults import FaultKind


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
        client_id: str = SANDBOX_CLIENT_ID,
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

    def expire_access_tokens(self, subject: str | None = None) -> int:
        """End current access tokens now (a subject's, or all); their grants stay alive."""
        result: dict[str, int] = self._call("POST", "/admin/expire", json={"subject": subject})
        return result["expired"]

    def api_requests(self) -> list[dict[str, Any]]:
        """The latest requests to the protected API: method, path, query and headers."""
        result: list[dict[str, Any]] = self._call("GET", "/admin/api-requests")
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SandboxAdmin({self.url!r})"
