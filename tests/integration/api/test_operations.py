"""Health, the OpenAPI document, docs and metrics."""

from __future__ import annotations

import json
from uuid import uuid4

import httpx

from tests.integration.api.client import (
    Api,
)


async def test_health_answers_without_a_key(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}


async def test_openapi_and_docs_are_served_without_a_key_and_errors_are_problem_json(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert (await client.get("/docs")).status_code == 200
    get_one = schema["paths"]["/v1/connections/{connection_id}"]["get"]
    assert "application/problem+json" in get_one["responses"]["404"]["content"]
    assert get_one["security"] == [{"bearerAuth": []}]
    connection = schema["components"]["schemas"]["Connection"]["properties"]
    assert connection["id"]["format"] == "uuid"
    assert connection["created_at"]["format"] == "date-time"
    assert "encrypted_data" not in json.dumps(schema["components"]["schemas"]["Connection"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]


async def test_metrics_count_requests_by_route_and_the_refresh_worker(api: Api) -> None:
    conn = await api.connect_oauth(uuid4())
    await api.call("POST", f"/v1/connections/{conn['id']}/refresh")
    await api.http.get("/v1/connections")
    r = await api.call("GET", "/metrics", key=api.keys.reader)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'route="/v1/connections/{connection_id}"' in text
    assert (
        'linkvault_http_requests_total{method="GET",route="/v1/connections",status="401"} 1.0'
        in text
    )
    assert "linkvault_http_request_duration_seconds_bucket" in text
    assert "linkvault_refresh_refreshed_total 1.0" in text
    assert 'linkvault_refresh_failed_total{class="revoked"} 0.0' in text
    assert "linkvault_refresh_due_unclaimed 0.0" in text
    assert "linkvault_refresh_oldest_overdue_seconds" in text
    assert str(conn["id"]) not in text
