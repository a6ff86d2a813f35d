from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PROBLEM_JSON = "application/problem+json"
# A provider that connects with an API key, for tests of the API's key flow.
API_KEY_PROVIDER_TOML = """
[[providers]]
slug = "acme-keys"
id = "0b7b3a5e-53c4-4c0e-9a34-7f1a2f5e9d11"
display_name = "Acme (API key)"
auth_style = "api_key"
"""


def problem_of(response: Any, status: int) -> dict[str, Any]:
    """The RFC 9457 body of `response` (an httpx response), after checking it is one."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= body.keys()
    return body


LINKVAULT = str(Path(sys.executable).with_name("linkvault"))


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without LINKVAULT_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKVAULT_")}
    env["COLUMNS"] = "80"
    return {**env, **extra}


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the installed `linkvault` command in `cwd`, with no LINKVAULT_* setting but `env`."""
    return subprocess.run(
        [LINKVAULT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**(env or {})),
        input=stdin,
        check=False,
    )


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float = 30) -> int:
    """The status of the first answer from `url`, retrying until something listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=1).status_code
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Background:
    """A `linkvault` command running in the background; `stop` ends it and collects output."""

    process: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = ""

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=30)
        self.stdout += out
        self.stderr += err
        return self.process.returncode


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Background:
    """Start `linkvault *args` in `cwd` in the background, with no LINKVAULT_* but `env`."""
    process = subprocess.Popen(
        [LINKVAULT, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**(env or {})),
    )
    return Background(process)


def start_api_process(env: dict[str, str], port: int, log: Path, stack: ExitStack) -> str:
    """`linkvault api` on a loopback port, its output in `log`, stopped (SIGTERM, then
    SIGKILL) when `stack` closes; its base URL once /v1/health/ready answers 200."""
    out = stack.enter_context(log.open("wb"))
    process = subprocess.Popen(
        [sys.executable, "-m", "linkvault.cli", "api", "--port", str(port)],
        env={**env, "LINKVAULT_HOST": "127.0.0.1"},
        stdout=out,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    stack.callback(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/v1/health/ready", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"API on {url} did not come up: {log.read_text()}"
        time.sleep(0.1)
