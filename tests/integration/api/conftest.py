"""Fixtures of the API tests: a runtime on each database, the app over ASGI, the keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from linkvault.api import create_app
from linkvault.runtime import Runtime
from linkvault.testing import RunningSandbox
from tests.integration.api.client import (
    BASE,
    PROVIDERS_TOML,
    Api,
    Keys,
    make_keys,
    make_settings,
)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


@pytest.fixture
def providers_file(tmp_path: Path) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(PROVIDERS_TOML)
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def runtime(
    database_url: str, providers_file: Path, running_sandbox: RunningSandbox
) -> AsyncIterator[Runtime]:
    settings = make_settings(database_url, providers_file)
    async with await Runtime.open(settings, env=running_sandbox.env(), migrate=True) as rt:
        yield rt


@pytest.fixture
async def client(runtime: Runtime, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime, keys.access)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield http


@pytest.fixture
def api(client: httpx.AsyncClient, keys: Keys) -> Api:
    return Api(client, keys)
