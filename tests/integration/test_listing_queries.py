"""A page of connections with their health costs two queries, whatever its size."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import pytest

from linkvault.domain import ConnectionStatus
from linkvault.services.connections import ConnectionService
from linkvault.services.health import HealthStatus
from linkvault.stores import ConnectionStore
from linkvault.stores.engine import Row, StoreEngine
from linkvault.testing import FakeClock
from tests.factories import make, saved


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
async def test_a_page_with_health_is_one_listing_and_one_health_read(
    store: ConnectionStore, clock: FakeClock
) -> None:
    for n in range(20):
        status = ConnectionStatus.EXPIRED if n % 4 == 0 else ConnectionStatus.ACTIVE
        await saved(store, make(clock, status=status, expires_at=clock.now))
    assert isinstance(store, StoreEngine)
    asked: list[str] = []
    fetch = store._fetch

    def counted(operation: str, query: str, args: tuple[Any, ...]) -> Awaitable[Sequence[Row]]:
        asked.append(operation)
        return fetch(operation, query, args)

    store._fetch = counted  # type: ignore[method-assign]

    page = await ConnectionService(store).list(limit=15)

    assert asked == ["list_connections", "connection_health"]
    assert len(page.items) == 15
    assert set(page.health) == {c.id for c in page.items}
    expired = [c.id for c in page.items if c.status is ConnectionStatus.EXPIRED]
    assert {page.health[i].health for i in expired} == {HealthStatus.NEEDS_USER_ACTION}
