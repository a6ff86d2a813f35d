"""The deployment a user can copy: the Dockerfile (linted), compose.yaml (checked), and the
same topology started as plain processes on loopback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into build stages."""
    text = re.sub(r"\\\n\s*", " ", dockerfile)
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_unprivileged_from_wheels_with_no_build_tools() -> None:
    build, final = stages((REPO / "Dockerfile").read_text())
    assert build[0].split()[-1] == "build"  # FROM ... AS build
    for stage in (build, final):
        base = stage[0].split()[1]
        assert ":" in base
        assert not base.endswith(":latest")
    final_text = "\n".join(final)
    assert "COPY --from=build /wheels /wheels" in final_text
    assert "--no-index" in final_text  # nothing fetched from an index into the final image
    assert not re.search(r"\b(apt-get|gcc|build-essential|git)\b", final_text)
    assert "COPY src" not in final_text  # no source tree in the final image
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0].isdigit()
    assert users[-1].split(":")[0] != "0"
    assert any(line.startswith("HEALTHCHECK ") and "/v1/health/live" in line for line in final)
    assert final[-2:] == ['ENTRYPOINT ["linkvault"]', 'CMD ["api"]']
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored  # only what the build copies is sent


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return loaded


def test_compose_runs_postgres_pgbouncer_a_migration_two_api_processes_and_two_workers() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "pgbouncer", "migrate", "api", "worker"}
    assert services["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    assert services["migrate"]["command"] == ["migrate"]
    api = services["api"]
    assert api["command"][:3] == ["api", "--workers", "2"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]  # loopback: a TLS proxy goes in front
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("api", "worker"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["env_file"] == ".env"
    for name in ("api", "worker", "migrate"):
        url = services[name]["environment"]["LINKVAULT_DATABASE_URL"]
        assert "@pgbouncer:6432/" in url
        assert url.endswith("?pooler=transaction")


def test_compose_holds_no_secret_only_references_to_env() -> None:
    text = (REPO / "compose.yaml").read_text()
    for service in compose()["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if "PASSWORD" in name or name.endswith("_KEYS"):
                assert str(value).startswith("${"), f"{name} must come from .env"
    assert "lvk_" not in text
    assert not re.search(r"postgresql://[^:]+:[^$@][^@]*@", text)  # no literal password in a URL
