from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import httpx
from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.api import CALLBACK_PATH
from linkvault.crypto import generate_key
from linkvault.serving import bind_loopback, socket_url
from linkvault.settings import Settings
from linkvault.testing import sandbox_in_thread
from linkvault.testing.api import api_in_thread


def test_a_person_connects_the_sandbox_in_a_real_browser_and_the_api_shows_it_active(
    chromium: str, chromium_args: list[str], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    key, entry = generate_api_key("e2e", set(Scope))
    auth = {"Authorization": f"Bearer {key}"}
    sock = bind_loopback()
    api_url = socket_url(sock)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'e2e.db'}",
        keys=SecretStr(generate_key("k1")),
        public_url=api_url,
    )
    screenshot = tmp_path / "connected.png"
    with (
        sandbox_in_thread() as sandbox,
        api_in_thread(settings, ApiKeySet([entry]), env=sandbox.env(), sock=sock),
        httpx.Client(base_url=api_url, headers=auth, timeout=30) as http,
    ):
        started = http.post(
            "/v1/connections",
            json={"user_id": str(uuid4()), "provider": "sandbox", "alias": "browser"},
        )
        assert started.status_code == 201, started.text
        connection_id = started.json()["connection"]["id"]
        authorize_url = started.json()["authorize_url"]
        assert authorize_url.startswith(sandbox.url)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True, args=chromium_args
            )
            try:
                page = browser.new_page()
                page.goto(authorize_url)
                assert "Authorize" in page.inner_text("h1")
                with page.expect_navigation(url=f"{api_url}{CALLBACK_PATH}**"):
                    page.click("#approve")
                assert page.url.startswith(f"{api_url}{CALLBACK_PATH}?")
                assert page.inner_text("#status") == "active"
                assert page.inner_text("#connection-id") == connection_id
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()

        after = http.get(f"/v1/connections/{connection_id}")
        assert after.status_code == 200
        assert after.json()["status"] == "active"
        assert after.json()["credential_type"] == "oauth2"
    assert screenshot.stat().st_size > 1000
    assert screenshot.read_bytes().startswith(b"\x89PNG")
