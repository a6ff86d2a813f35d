"""Rules every store shares."""

from __future__ import annotations

from linkvault.errors import InvalidArgumentError

# A year: far beyond any refresh horizon, and small enough for every datetime to hold.
MAX_MINUTES = 366 * 24 * 60


def check_minutes(minutes: int) -> int:
    """Validate the `minutes` argument of find_expiring_soon."""
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidArgumentError("minutes must be an integer")
    if not 0 <= minutes <= MAX_MINUTES:
        raise InvalidArgumentError(f"minutes must be between 0 and {MAX_MINUTES}")
    return minutes
