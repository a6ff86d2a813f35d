from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from linkvault.access import Scope, generate_api_key
from linkvault.crypto import generate_key

SERVE = """
import asyncio, sys
from linkvault.access import access_from_settings
from linkvault.api import serve
from linkvault.serving import bind_loopback, socket_url
from linkvault.runtime import Runtime
from linkvault.settings import Settings

async def main() -> None:
    settings = Settings()
    runtime = await Runtime.open(settings)
    sock = bind_loopback()
    print(socket_url(sock), flush=True)
    try:
        await serve(runtime, access_from_settings(settings), sockets=[sock], log_level="warning")
    finally:
        await runtime.close()
    print("closed", flush=True)

asyncio.run(main())
"""


def test_serve_runs_the_api_and_the_worker_until_sigterm_and_closes_cleanly(
    tmp_path: Path,
) -> None:
    key, entry = generate_api_key("ops", {Scope.READ})
    env = {
        **os.environ,
        "LINKVAULT_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "LINKVAULT_KEYS": generate_key("k1"),
        "LINKVAULT_API_KEYS": entry.spec,
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=url, timeout=5) as http:
            while True:
                try:
                    health = http.get("/v1/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the API did not come up"
                    time.sleep(0.05)
            assert health.status_code == 200
            assert http.get("/v1/connections").status_code == 401
            metrics = http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
            assert "linkvault_refresh_worker_running 1.0" in metrics.text
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "closed" in out
    assert "Traceback" not in err
