"""`linkvault sandbox` and `linkvault serve` agree on where the sandbox is, and say so alike."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from tests.support import Background, free_port, run_cli, start_cli, wait_for_http

_REQUEST_ID = re.compile(r'name="request_id" value="([^"]+)"')


@pytest.fixture
def moved(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """serve and sandbox started in one folder whose .env moves the sandbox off 8765."""
    sandbox_url = f"http://127.0.0.1:{free_port()}"
    (tmp_path / ".env").write_text(f"LINKVAULT_PROVIDER_SANDBOX_BASE_URL={sandbox_url}\n")
    api_port = free_port()
    running: list[Background] = [
        start_cli("sandbox", cwd=tmp_path),
        start_cli("serve", "--port", str(api_port), cwd=tmp_path),
    ]
    try:
        wait_for_http(f"{sandbox_url}/oauth/authorize")
        api = f"http://127.0.0.1:{api_port}"
        assert wait_for_http(f"{api}/v1/health") == 200
        key = (tmp_path / "linkvault.admin-key").read_text().strip()
        yield sandbox_url, api, key
    finally:
        for process in running:
            process.stop()


def test_a_connect_flow_works_with_the_sandbox_moved_by_one_setting_both_read(
    moved: tuple[str, str, str],
) -> None:
    sandbox_url, api, key = moved
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=10) as http:
        started = http.post(
            f"{api}/v1/connections",
            headers=auth,
            json={"user_id": str(uuid4()), "provider": "sandbox"},
        )
        assert started.status_code == 201, started.text
        authorize_url = started.json()["authorize_url"]
        assert authorize_url.startswith(f"{sandbox_url}/oauth/authorize")
        page = http.get(authorize_url)
        request_id = _REQUEST_ID.search(page.text)
        assert request_id is not None
        consent = http.post(
            f"{sandbox_url}/oauth/authorize",
            data={"request_id": request_id.group(1), "decision": "approve", "subject": "u"},
        )
        callback = consent.headers["location"]
        assert callback.startswith(f"{api}/v1/oauth/callback")
        http.get(callback)
        connection_id = started.json()["connection"]["id"]
        shown = http.get(f"{api}/v1/connections/{connection_id}", headers=auth)
    assert shown.json()["status"] == "active"


def test_providers_list_reports_the_configuration_the_api_reports(
    tmp_path: Path, moved: tuple[str, str, str]
) -> None:
    _, api, key = moved

    listed = run_cli("providers", "list", "--json", cwd=tmp_path)
    served = httpx.get(f"{api}/v1/providers", headers={"Authorization": f"Bearer {key}"})

    assert listed.returncode == 0, listed.stderr
    from_cli = {r["slug"]: r["configured"] for r in json.loads(listed.stdout)}
    from_api = {p["slug"]: p["configured"] for p in served.json()["items"]}
    assert from_cli == from_api
    assert from_cli["sandbox"] is True


def test_a_sandbox_started_elsewhere_says_what_serve_needs(tmp_path: Path) -> None:
    port = free_port()
    sandbox = start_cli("sandbox", "--port", str(port), cwd=tmp_path)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/oauth/authorize")
    finally:
        sandbox.stop()

    assert f"LINKVAULT_PROVIDER_SANDBOX_BASE_URL=http://127.0.0.1:{port}" in sandbox.stderr
    assert "serve looks for the sandbox at http://127.0.0.1:8765" in sandbox.stderr
