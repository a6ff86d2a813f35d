"""Pytest fixtures serving the sandbox OAuth2 provider on loopback.

Use them from a test module with `from tests.sandbox_fixtures import running_sandbox`
(or list this module in the root conftest's `pytest_plugins`). `running_sandbox` serves
in a thread of the test process; `sandbox_process` serves in its own process, for loads
where the test process itself is busy (worker processes, benchmarks). `drive_consent`
plays the user on the consent page and returns the redirect's query parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from linkvault.providers import Provider
from linkvault.testing import (
    RunningSandbox,
    SandboxAdmin,
    sandbox_in_subprocess,
    sandbox_in_thread,
)


@pytest.fixture
def running_sandbox() -> Iterator[RunningSandbox]:
    with sandbox_in_thread() as running:
        yield running


@pytest.fixture
def sandbox_admin(running_sandbox: RunningSandbox) -> Iterator[SandboxAdmin]:
    with SandboxAdmin(running_sandbox.url) as admin:
        yield admin


@pytest.fixture
def sandbox(running_sandbox: RunningSandbox) -> Provider:
    return running_sandbox.provider()


@pytest.fixture
def sandbox_process() -> Iterator[SandboxAdmin]:
    with sandbox_in_subprocess() as admin:
        yield admin


_REQUEST_ID = re.compile(r'name="request_id" value="([^"]+)"')


async def drive_consent(
    authorize_url: str, *, approve: bool = True, subject: str = "sandbox-user"
) -> dict[str, str]:
    async with httpx.AsyncClient() as http:
        page = await http.get(authorize_url)
        if page.status_code != 200:
            location = page.headers.get("location")
            if location is None:
                raise AssertionError(f"consent page answered {page.status_code}")
            return dict(parse_qsl(urlsplit(location).query))
        found = _REQUEST_ID.search(page.text)
        assert found is not None, "the consent page has no request_id"
        form_action = str(page.url.join("/oauth/authorize"))
        answer = await http.post(
            form_action,
            data={
                "request_id": found.group(1),
                "decision": "approve" if approve else "deny",
                "subject": subject,
            },
        )
    assert answer.status_code == 303, answer.text
    return dict(parse_qsl(urlsplit(answer.headers["location"]).query))
