"""The served API with its worker (as `linkvault serve` runs it) delivers webhooks."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import uuid4

import httpx

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.testing import api_in_thread
from tests.integration.api.client import PROVIDERS_TOML, bearer, make_settings
from tests.integration.webhooks.conftest import Receiver


def test_a_connection_made_through_the_served_api_reaches_the_receiver(
    tmp_path: Path, receiver: Receiver
) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS_TOML)
    settings = make_settings(f"sqlite:///{tmp_path / 'lv.db'}", providers).model_copy(
        update={"webhook_allow_http_loopback": True}
    )
    key, entry = generate_api_key("admin", set(Scope))
    with (
        api_in_thread(settings, ApiKeySet([entry]), env={}, run_worker=True) as api,
        httpx.Client(base_url=api.url, headers=bearer(key)) as http,
    ):
        created = http.post("/v1/webhooks", json={"url": receiver.url, "events": []})
        assert created.status_code == 201, created.text
        receiver.secret = created.json()["secret"]
        body = {"user_id": str(uuid4()), "provider": "acme-keys", "api_key": "acme-key-123"}
        conn = http.post("/v1/connections", json=body)
        assert conn.status_code == 201, conn.text
        connection_id = conn.json()["connection"]["id"]

        deadline = time.monotonic() + 60
        while not receiver.delivered() and time.monotonic() < deadline:
            time.sleep(0.05)

    first = receiver.delivered()[0]
    assert first.body["type"] == "connection.created"
    assert first.connection_id == connection_id
    assert first.verified
