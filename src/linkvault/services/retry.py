"""Saving a change against concurrent writers: the one retry-on-stale loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from linkvault.domain import ProviderConnection
from linkvault.errors import StaleConnectionError
from linkvault.stores import ConnectionStore

# Every lost race means another writer won, so a change that is re-applied to a fresh copy
# gets through after at most as many attempts as there are concurrent writers.
STALE_ATTEMPTS = 32


@dataclass(frozen=True, slots=True)
class SaveResult:
    """Whether the change was saved, and the last copy: the saved one, or the one that refused it.

    `connection` is None when the connection was deleted meanwhile.
    """

    saved: bool
    connection: ProviderConnection | None


def _always(_: ProviderConnection) -> bool:
    return True


async def save_with_retry(
    store: ConnectionStore,
    conn: ProviderConnection,
    change: Callable[[ProviderConnection], None],
    *,
    still_applies: Callable[[ProviderConnection], bool] = _always,
    attempts: int = STALE_ATTEMPTS,
    on_stale: Callable[[], object] | None = None,
) -> SaveResult:
    """Apply `change` to `conn` and save it; after a concurrent write, to a fresh copy.

    A fresh copy gets the change only while `still_applies(fresh)`; otherwise nothing is
    written and the fresh copy is returned unsaved. After `attempts` saves that all lost a
    race, the last StaleConnectionError is raised.
    """
    target = conn
    for attempt in range(1, attempts + 1):
        change(target)
        try:
            await store.save(target)
        except StaleConnectionError:
            if attempt == attempts:
                raise
            if on_stale is not None:
                on_stale()
            fresh = await store.find_by_id(conn.id)
            if fresh is None or not still_applies(fresh):
                return SaveResult(False, fresh)
            target = fresh
            continue
        return SaveResult(True, target)
    raise AssertionError("unreachable")  # pragma: no cover
