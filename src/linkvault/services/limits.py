"""Per-provider adaptive concurrency and the provider circuit the refresh worker uses.

The limit grows while the provider answers about as fast as it ever has, and shrinks when its
latency climbs or it fails, so requests never pile up in a slow provider's queue (the same
idea as TCP congestion control; see Netflix's concurrency-limits for the family).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class AdaptiveLimit:
    """How many refreshes one worker keeps in flight at one provider."""

    def __init__(
        self,
        *,
        initial: int = 1,
        maximum: int = 16,
        minimum: int = 1,
        tolerance: float = 2.0,
        slack: float = 0.05,
    ) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.limit = min(max(initial, minimum), self.maximum)
        self.in_flight = 0
        self.waiting = 0
        self.tolerance = tolerance
        self.slack = slack
        self.floor: float | None = None
        self._changed_at = 0.0
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for room under the limit, hold it for one request."""
        async with self._cond:
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: self.in_flight < self.limit)
            finally:
                self.waiting -= 1
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    @property
    def full(self) -> bool:
        """Whether a new request would have to wait."""
        return self.in_flight >= self.limit

    def record(self, latency: float, *, ok: bool, now: float | None = None) -> None:
        """Adjust the limit after one answer (or failure) that took `latency` seconds."""
        now = time.monotonic() if now is None else now
        if ok:
            # The floor follows the best latency seen, and drifts up slowly so that a provider
            # whose normal latency rose for good is not throttled forever. Starting from one
            # request in flight, the first answers measure the provider before any queue forms.
            floor = latency if self.floor is None else min(latency, self.floor)
            self.floor = floor + (latency - floor) * 0.002
        # Change at most once per round trip, so one burst counts once.
        if now - self._changed_at < max(latency, 0.001):
            return
        near_floor = self.floor is not None and latency <= max(
            self.floor * self.tolerance, self.floor + self.slack
        )
        if not ok:
            self._set(max(self.minimum, self.limit // 2), now)
        elif not near_floor:
            self._set(max(self.minimum, self.limit - 1), now)
        elif self.in_flight >= self.limit - 1:
            self._set(min(self.maximum, self.limit + 1), now)

    def _set(self, limit: int, now: float) -> None:
        if limit != self.limit:
            self.limit = limit
            self._changed_at = now

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(limit={self.limit}, in_flight={self.in_flight}, waiting={self.waiting})"
        )
