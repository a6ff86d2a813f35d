"""The README, run as printed: every fenced block of it is run, or written and then used.

The walkthrough runs in a scratch folder that stands in for a checkout (Makefile, sources
and .venv linked in), so no file lands in the repository and nothing binds the fixed ports:
the environment holds `LINKVAULT_PORT` and `LINKVAULT_PROVIDER_SANDBOX_BASE_URL`, the two
settings the README names for moving the API and the sandbox. Shell blocks share one
session, as commands typed in one terminal do; the browser step in the README's prose is
played by an HTTP client.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import Background, clean_env, free_port, wait_for_http

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
LINKED = ("Makefile", "pyproject.toml", "README.md", "src", ".venv")
BACKGROUND = ("make serve", ".venv/bin/linkvault sandbox")
WRITTEN = {"json": "grants.jsonl", "toml": "providers.toml"}
_REQUEST_ID = re.compile(r'name="request_id" value="([^"]+)"')
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    lang: str
    text: str

    @property
    def commands(self) -> list[str]:
        return [line.split("#", 1)[0].strip() for line in self.text.splitlines()]


def readme_blocks() -> list[Block]:
    return [Block(m.group(1), m.group(2)) for m in _FENCE.finditer(README.read_text())]


def _is(block: Block, command: str) -> bool:
    return block.lang == "sh" and block.commands == [command]


class Session:
    """Shell blocks run one after another in one folder, keeping exported variables."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.state = folder.parent / "session.sh"
        self.state.write_text("")
        self.background: list[Background] = []

    def run(self, script: str) -> str:
        wrapped = f"set -eo pipefail\n. {shlex.quote(str(self.state))}\n{script}\n"
        wrapped += f"export -p > {shlex.quote(str(self.state))}\n"
        done = subprocess.run(
            ["bash", "-c", wrapped],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- {done.stderr}"
        return done.stdout

    def start(self, command: str) -> None:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.background.append(Background(process))


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    up_to_date = subprocess.run(["make", "-q", ".venv/bin/.runtime"], cwd=REPO, check=False)
    assert up_to_date.returncode == 0, "run `make install` first: the scratch folder links .venv"
    folder = tmp_path / "checkout"
    folder.mkdir()
    for name in LINKED:
        (folder / name).symlink_to(REPO / name)
    env = clean_env(
        LINKVAULT_PORT=str(free_port()),
        LINKVAULT_PROVIDER_SANDBOX_BASE_URL=f"http://127.0.0.1:{free_port()}",
    )
    env["PATH"] = f"{_project_environment(tmp_path / 'project-env')}:{env['PATH']}"
    running = Session(folder, env)
    try:
        yield running
    finally:
        for process in running.background:
            process.stop()


def _project_environment(path: Path) -> Path:
    """A fresh venv standing in for the reader's project; its `python3` installs the wheel.

    It sees the test environment's packages through a .pth file, so installing the wheel
    needs no download, and it never touches the test environment's own linkvault.
    """
    subprocess.run([sys.executable, "-m", "venv", path], check=True, timeout=120)
    (site,) = path.glob("lib/python3.*/site-packages")
    (own_site,) = Path(sys.executable).parent.parent.glob("lib/python3.*/site-packages")
    (site / "test-environment.pth").write_text(f"{own_site}\n")
    return path / "bin"


def _play_the_user(answer: str) -> None:
    """Open the authorize_url, press Approve, and follow the redirect to the callback."""
    authorize_url = json.loads(answer)["authorize_url"]
    with httpx.Client(timeout=10) as browser:
        page = browser.get(authorize_url)
        request_id = _REQUEST_ID.search(page.text)
        assert request_id is not None, page.text
        approved = browser.post(
            str(page.url.join("/oauth/authorize")),
            data={"request_id": request_id.group(1), "decision": "approve", "subject": "me"},
        )
        callback = browser.get(approved.headers["location"])
    assert callback.status_code == 200, callback.text


def test_the_readme_runs_as_printed(session: Session) -> None:
    api = f"http://127.0.0.1:{session.env['LINKVAULT_PORT']}"
    outputs: list[str] = []
    for block in readme_blocks():
        if _is(block, "make test"):
            continue  # what runs this test; its recipe is checked below
        if block.lang == "sh" and block.commands[0] in BACKGROUND:
            assert len(block.commands) == 1, block.text
            session.start(block.commands[0])
            if block.commands[0] == "make serve":
                assert wait_for_http(f"{api}/v1/health", timeout=60) == 200
            else:
                wait_for_http(
                    f"{session.env['LINKVAULT_PROVIDER_SANDBOX_BASE_URL']}/oauth/authorize"
                )
        elif block.lang == "sh":
            outputs.append(session.run(block.text))
            if '"authorize_url"' in outputs[-1]:
                _play_the_user(outputs[-1])
        elif block.lang == "python":
            script = session.folder / "example.py"
            script.write_text(block.text)
            outputs.append(session.run(f"{shlex.quote(sys.executable)} example.py"))
        elif block.lang in WRITTEN:
            (session.folder / WRITTEN[block.lang]).write_text(block.text)
        else:
            pytest.fail(f"a README block this test does not run:\n{block.text}")

    printed = "\n".join(outputs)
    listed = json.loads(next(o for o in outputs if '"items"' in o))
    assert [c["status"] for c in listed["items"]] == ["active"]
    issued = json.loads(next(o for o in outputs if '"access_token"' in o))
    assert set(issued) == {"access_token", "token_type", "expires_at"}
    assert issued["token_type"] == "Bearer"
    assert "a stale copy is refused" in printed
    assert "<redacted>" in printed
    assert "rt-from-your-old-system" not in printed
    assert "Imported 1 connection(s)." in printed
    assert "acme" in printed
    assert "due 45 minutes later: True" in printed  # the linkvault.testing example
    assert "verified: connection.recovered" in printed  # the webhook receiver example
    created = json.loads(next(o for o in outputs if '"secret"' in o))
    assert created["secret"].startswith("whsec_")
    assert sorted(created["events"]) == ["connection.recovered", "connection.refresh_failed"]
    assert "connection.activated" in printed  # `linkvault events`
    project_python = session.env["PATH"].split(":")[0] + "/python3"
    installed = subprocess.run(
        [project_python, "-c", "import linkvault; print(linkvault.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert installed.stdout.startswith(session.env["PATH"].split(":")[0].removesuffix("bin"))
    for process in session.background:
        process.stop()  # make itself ends by the signal; what it ran must end cleanly
        assert "Traceback" not in process.stderr, process.stderr
        assert "lvk_" not in process.stdout + process.stderr
        assert created["secret"] not in process.stdout + process.stderr


def test_the_readme_names_make_serve_and_make_test_once_each() -> None:
    blocks = readme_blocks()
    assert sum(_is(b, "make serve") for b in blocks) == 1
    assert sum(_is(b, "make test") for b in blocks) == 1


def test_make_serve_installs_only_runtime_dependencies_and_make_test_the_dev_extras(
    tmp_path: Path,
) -> None:
    def recipe(target: str) -> str:
        dry = subprocess.run(
            ["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'fresh'}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return dry.stdout

    serve, test = recipe("serve"), recipe("test")
    assert "pip install --quiet -e .\n" in serve
    assert ".[dev]" not in serve
    assert serve.rstrip().endswith("linkvault serve")
    assert "pip install --quiet -e '.[dev]'" in test
    assert test.rstrip().endswith("pytest")


def test_the_readme_points_to_no_file_outside_the_repository() -> None:
    text = README.read_text()
    assert "../" not in text
    for path in re.findall(r"`([\w./-]+\.md)`", text):
        assert (REPO / path).is_file(), path
