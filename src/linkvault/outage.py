"""Logging an outage as a story, not a flood: its start, a summary now and then, its end."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from linkvault.domain import Clock, utc_now

SUMMARY_EVERY = timedelta(minutes=1)


class OutageLog:
    """A WARNING when failures start, a summary per `every` while they last, an INFO at the end.

    Failures are reported with `failure`, evidence that the dependency answers with `success`.
    Both are called from one event loop, so no lock is needed.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        every: timedelta = SUMMARY_EVERY,
        clock: Clock = utc_now,
    ) -> None:
        self.logger = logger
        self.what = what
        self.every = every
        self.clock = clock
        self.started_at: datetime | None = None
        self._reported_at = datetime.min
        self._failures = 0
        self._unreported = 0

    @property
    def ongoing(self) -> bool:
        return self.started_at is not None

    def failure(self, exc: BaseException) -> None:
        """Count a failed use; log it when it starts an outage or a summary is due."""
        now = self.clock()
        self._failures += 1
        if self.started_at is None:
            self.started_at = self._reported_at = now
            self.logger.warning(
                "%s is unavailable: %s: %s (one summary every %ds until it answers again)",
                self.what,
                type(exc).__name__,
                exc,
                int(self.every.total_seconds()),
            )
            return
        self._unreported += 1
        if now - self._reported_at >= self.every:
            self.logger.warning(
                "%s is still unavailable after %ds: %d failures since the last summary, "
                "%d in all; latest: %s",
                self.what,
                int((now - self.started_at).total_seconds()),
                self._unreported,
                self._failures,
                type(exc).__name__,
            )
            self._reported_at = now
            self._unreported = 0

    def success(self) -> None:
        """The dependency answered: log the end of an ongoing outage."""
        if self.started_at is None:
            return
        self.logger.info(
            "%s is available again after %ds; %d failures during the outage",
            self.what,
            int((self.clock() - self.started_at).total_seconds()),
            self._failures,
        )
        self.started_at = None
        self._failures = self._unreported = 0
