"""The API under test in-process: keys, settings and a client that remembers every answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import httpx
from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.api import CALLBACK_PATH
from linkvault.crypto import generate_key
from linkvault.settings import Settings
from tests.sandbox_fixtures import drive_consent

BASE = "http://testserver"


KEY_PROVIDER_ID = UUID("0b7b3a5e-53c4-4c0e-9a34-7f1a2f5e9d11")


PROVIDERS_TOML = f"""
[[providers]]
slug = "acme-keys"
id = "{KEY_PROVIDER_ID}"
display_name = "Acme (API key)"
auth_style = "api_key"
"""


PROBLEM = "application/problem+json"


@dataclass
class Keys:
    admin: str
    reader: str
    writer: str
    revealer: str
    tokener: str
    proxier: str
    access: ApiKeySet


def make_keys() -> Keys:
    """One API key per role: admin (every scope), reader, writer, revealer (credentials),
    tokener (access tokens) and proxier (calls through the provider proxy)."""
    admin, admin_entry = generate_api_key("admin", set(Scope))
    reader, reader_entry = generate_api_key("reader", {Scope.READ})
    writer, writer_entry = generate_api_key("writer", {Scope.READ, Scope.WRITE})
    revealer, revealer_entry = generate_api_key("revealer", {Scope.CREDENTIALS})
    tokener, tokener_entry = generate_api_key("tokener", {Scope.TOKEN})
    proxier, proxier_entry = generate_api_key("proxier", {Scope.PROXY})
    entries = [admin_entry, reader_entry, writer_entry, revealer_entry, tokener_entry]
    access = ApiKeySet([*entries, proxier_entry])
    return Keys(admin, reader, writer, revealer, tokener, proxier, access)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_settings(database_url: str, providers_file: Path, key: str | None = None) -> Settings:
    return Settings(
        database_url=database_url,
        keys=SecretStr(key or generate_key("k1")),
        providers_file=providers_file,
        public_url=BASE,
        return_origins=("https://app.example",),
    )


class Api:
    def __init__(self, http: httpx.AsyncClient, keys: Keys) -> None:
        self.http = http
        self.keys = keys
        self.responses: list[httpx.Response] = []

    async def call(
        self, method: str, path: str, *, key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**bearer(key or self.keys.admin), **kwargs.pop("headers", {})}
        response = await self.http.request(method, path, headers=headers, **kwargs)
        self.responses.append(response)
        return response

    async def start_oauth(self, user_id: UUID, **body: Any) -> dict[str, Any]:
        r = await self.call(
            "POST", "/v1/connections", json={"user_id": str(user_id), "provider": "sandbox", **body}
        )
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    async def callback(self, authorize_url: str, *, approve: bool = True) -> httpx.Response:
        params = await drive_consent(authorize_url, approve=approve)
        response = await self.http.get(f"{CALLBACK_PATH}?{urlencode(params)}")
        self.responses.append(response)
        return response

    async def connect_oauth(self, user_id: UUID) -> dict[str, Any]:
        started = await self.start_oauth(user_id)
        done = await self.callback(started["authorize_url"])
        assert done.status_code == 200, done.text
        return await self.get(started["connection"]["id"])

    async def connect_key(
        self, user_id: UUID, api_key: str = "acme-key-123", **body: Any
    ) -> dict[str, Any]:
        r = await self.call(
            "POST",
            "/v1/connections",
            json={"user_id": str(user_id), "provider": "acme-keys", "api_key": api_key, **body},
        )
        assert r.status_code == 201, r.text
        connection: dict[str, Any] = r.json()["connection"]
        return connection

    async def get(self, connection_id: str) -> dict[str, Any]:
        r = await self.call("GET", f"/v1/connections/{connection_id}")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    async def count(self) -> int:
        r = await self.call("GET", "/v1/connections", params={"limit": 500})
        return len(r.json()["items"])


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= body.keys()
    return body
