"""What the refresh worker tells the application, through the event log, as it happens."""

from __future__ import annotations

from linkvault.domain import ConnectionStatus
from linkvault.events import StoredEvent
from linkvault.services.connections import ConnectionService
from linkvault.services.health import HealthStatus
from linkvault.testing import FaultKind
from tests.refreshing import POLICY, Bench


def kinds(events: list[StoredEvent]) -> list[str]:
    return [e.event.type.value for e in events]


async def test_a_refresh_that_fails_then_succeeds_logs_refresh_failed_then_recovered(
    bench: Bench,
) -> None:
    conn = await bench.connection()
    bench.running.sandbox.inject_fault(FaultKind.SERVER_ERROR, count=2, status=503)
    worker = bench.worker()

    for attempt in (1, 2):
        assert await worker.run_once() == 1
        failed = (await bench.store.connection_events(conn.id))[-1]
        assert failed.event.type.value == "connection.refresh_failed"
        assert failed.event.data["attempt"] == attempt
        assert failed.event.data["outcome"] == "unavailable"
        assert failed.event.reason is not None
        assert "503" in failed.event.reason
        assert (failed.event.from_status, failed.event.to_status) == ("active", "active")
        bench.clock.advance(seconds=POLICY.backoff_base.total_seconds() * 2**attempt + 1)
    assert await worker.run_once() == 1

    events = await bench.store.connection_events(conn.id)
    assert kinds(events)[-3:] == [
        "connection.refresh_failed",
        "connection.refresh_failed",
        "connection.recovered",
    ]
    assert events[-1].event.data == {"after_attempts": 2}
    stored = await bench.stored(conn.id)
    assert stored.status is ConnectionStatus.ACTIVE

    # A healthy refresh afterwards writes nothing: only changes of health are news.
    bench.clock.advance(days=1)
    assert await worker.run_once() == 1
    assert len(await bench.store.connection_events(conn.id)) == len(events)


async def test_a_refused_grant_logs_the_expiry_with_its_reason(bench: Bench) -> None:
    conn = await bench.connection()
    bench.running.sandbox.inject_fault(FaultKind.INVALID_GRANT)

    assert await bench.worker().run_once() == 1

    last = (await bench.store.connection_events(conn.id))[-1]
    assert last.event.type.value == "connection.expired"
    assert (last.event.from_status, last.event.to_status) == ("active", "expired")
    assert last.event.reason is not None
    assert "invalid_grant" in last.event.reason


async def test_a_client_the_provider_rejects_needs_attention_once_not_every_retry(
    bench: Bench,
) -> None:
    conn = await bench.connection()
    bench.reject_client()
    worker = bench.worker()

    assert await worker.run_once() == 1
    bench.clock.advance(hours=7)
    assert await worker.run_once() == 1

    events = await bench.store.connection_events(conn.id)
    assert kinds(events).count("connection.needs_attention") == 1
    attention = next(e for e in events if e.event.type.value == "connection.needs_attention")
    assert attention.event.data == {"outcome": "client_rejected"}
    assert "not-the-secret" not in repr(events)
    # The connection shows it: its last error names the outcome, so its health says so.
    report = await ConnectionService(bench.store).health(await bench.stored(conn.id))
    assert report.health is HealthStatus.NEEDS_ATTENTION
    assert report.last_refresh_error is not None
    assert report.last_refresh_error.startswith("client_rejected: ")
    assert (report.refresh_failures, report.needs_user_action) == (2, False)
