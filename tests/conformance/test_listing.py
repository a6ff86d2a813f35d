from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from linkvault.domain import ConnectionStatus, ProviderConnection
from linkvault.errors import InvalidArgumentError
from linkvault.stores import ConnectionStore
from linkvault.stores.common import ConnectionFilter, Page
from linkvault.testing import FakeClock
from tests.factories import PLAID, SCHWAB, make, saved


async def test_pages_walk_every_connection_once_in_id_order(
    store: ConnectionStore, clock: FakeClock
) -> None:
    ids = {(await saved(store, make(clock))).id for _ in range(23)}

    seen: list[UUID] = []
    after = None
    while True:
        page = await store.list_connections(page=Page(after=after, limit=5))
        if not page:
            break
        assert len(page) <= 5
        seen.extend(c.id for c in page)
        after = page[-1].id

    assert set(seen) == ids
    assert len(seen) == len(ids)
    assert [i.bytes for i in seen] == sorted(i.bytes for i in seen)


async def test_filters_combine(store: ConnectionStore, clock: FakeClock) -> None:
    user = uuid4()
    soon = clock.now + timedelta(minutes=5)
    later = clock.now + timedelta(hours=5)
    a = await saved(
        store, make(clock, user_id=user, status=ConnectionStatus.ACTIVE, expires_at=soon)
    )
    await saved(store, make(clock, user_id=user, status=ConnectionStatus.ACTIVE, expires_at=later))
    b = await saved(store, make(clock, user_id=user, provider_id=PLAID))
    await saved(store, make(clock, status=ConnectionStatus.ACTIVE, expires_at=soon))

    def ids(rows: list[ProviderConnection]) -> set[UUID]:
        return {c.id for c in rows}

    assert len(await store.list_connections(ConnectionFilter(user_id=user))) == 3
    assert ids(await store.list_connections(ConnectionFilter(user_id=user, provider_id=PLAID))) == {
        b.id
    }
    assert ids(
        await store.list_connections(
            ConnectionFilter(user_id=user, expiring_before=clock.now + timedelta(minutes=10))
        )
    ) == {a.id}
    pending = await store.list_connections(
        ConnectionFilter(user_id=user, status=ConnectionStatus.PENDING, provider_id=SCHWAB)
    )
    assert pending == []


@pytest.mark.parametrize("limit", [0, -1, 1001, True])
async def test_a_bad_page_size_is_refused(store: ConnectionStore, limit: int) -> None:
    with pytest.raises(InvalidArgumentError):
        await store.list_connections(page=Page(limit=limit))
