"""/v1/providers: the registry, without client secrets."""

from __future__ import annotations

from tests.integration.api.client import (
    KEY_PROVIDER_ID,
    Api,
)


async def test_providers_lists_the_registry_without_client_secrets(api: Api) -> None:
    r = await api.call("GET", "/v1/providers", key=api.keys.reader)
    assert r.status_code == 200
    by_slug = {p["slug"]: p for p in r.json()["items"]}
    assert by_slug["sandbox"]["auth_style"] == "oauth2"
    assert by_slug["sandbox"]["configured"] is True
    assert by_slug["schwab"]["configured"] is False
    assert by_slug["acme-keys"]["id"] == str(KEY_PROVIDER_ID)
    assert "sandbox-secret" not in r.text
