from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.crypto import generate_key
from linkvault.settings import Settings
from linkvault.testing.api import api_in_thread


def test_docs_render_in_a_browser_that_can_reach_no_other_host(
    chromium: str, chromium_args: list[str], tmp_path: Path
) -> None:
    from playwright.sync_api import Route, sync_playwright

    _, entry = generate_api_key("docs", set(Scope))
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'docs.db'}", keys=SecretStr(generate_key("k1"))
    )
    elsewhere: list[str] = []

    def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with (
        api_in_thread(settings, ApiKeySet([entry])) as api,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=chromium_args
        )
        try:
            page = browser.new_page()
            page.route("**/*", loopback_only)
            page.goto(f"{api.url}/docs")
            page.wait_for_selector(".swagger-ui .info .title")
            title = page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path")
            paths = page.eval_on_selector_all(
                ".opblock-summary-path", "spans => spans.map(s => s.dataset.path)"
            )
        finally:
            browser.close()
    assert title.startswith("linkvault")
    assert "/v1/connections/{connection_id}" in paths
    assert elsewhere == []
