"""/v1/providers: the registry, without client secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.api.client import (
    KEY_PROVIDER_ID,
    PROVIDERS_TOML,
    Api,
)

LIMITED = """
[[providers]]
slug = "acme-limited"
id = "3f9e1b7a-0c2d-4e5f-8a6b-7c8d9e0f1a2b"
display_name = "Acme (rate limited)"
auth_style = "api_key"
api_base_url = "https://api.acme.example/v1/"
api_rate_limit = { per_connection = "10/s", per_provider = "120/min" }
"""


@pytest.fixture
def providers_file(tmp_path: Path) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(PROVIDERS_TOML + LIMITED)
    return path


async def test_providers_lists_the_registry_without_client_secrets(api: Api) -> None:
    r = await api.call("GET", "/v1/providers", key=api.keys.reader)
    assert r.status_code == 200
    by_slug = {p["slug"]: p for p in r.json()["items"]}
    assert by_slug["sandbox"]["auth_style"] == "oauth2"
    assert by_slug["sandbox"]["configured"] is True
    assert by_slug["schwab"]["configured"] is False
    assert by_slug["acme-keys"]["id"] == str(KEY_PROVIDER_ID)
    assert "sandbox-secret" not in r.text
    assert by_slug["schwab"]["api_base_url"] == "https://api.schwabapi.com/trader/v1"
    assert by_slug["sandbox"]["api_base_url"].endswith("/api")
    assert by_slug["acme-keys"]["api_base_url"] is None
    assert by_slug["sandbox"]["api_rate_limit"] == {"per_connection": None, "per_provider": None}


async def test_providers_show_their_declared_rate_limits(api: Api) -> None:
    r = await api.call("GET", "/v1/providers", key=api.keys.reader)

    limited = {p["slug"]: p for p in r.json()["items"]}["acme-limited"]
    assert limited["api_base_url"] == "https://api.acme.example/v1"
    assert limited["api_rate_limit"] == {"per_connection": "10/s", "per_provider": "120/m"}
