"""How the sandbox misbehaves on purpose: injected faults, and a capacity model of its token
endpoint that queues requests as a saturated server does."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from linkvault.testing.sandbox.config import SandboxSettings

_T = TypeVar("_T")


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


class Capacity:
    """At most `settings.capacity` token requests served at once, each taking
    `settings.service_time` seconds; the rest wait in line. Settings are read live."""

    def __init__(self, settings: SandboxSettings) -> None:
        self._settings = settings
        self._gate: asyncio.Condition | None = None
        self.waiting = 0
        self.serving = 0
        self.peak_waiting = 0

    async def serve(self, handle: Callable[[], Awaitable[_T]]) -> _T:
        """Wait for a place in line, take the service time, then run `handle`."""
        if self._gate is None:
            # Made on first use: the condition belongs to the server's event loop.
            self._gate = asyncio.Condition()
        gate = self._gate
        async with gate:
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
            try:
                await gate.wait_for(lambda: self.serving < (self._settings.capacity or 1 << 30))
            finally:
                self.waiting -= 1
            self.serving += 1
        try:
            if self._settings.service_time > 0:
                await asyncio.sleep(self._settings.service_time)
            return await handle()
        finally:
            async with gate:
                self.serving -= 1
                gate.notify_all()
