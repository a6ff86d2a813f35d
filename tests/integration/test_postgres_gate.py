from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
ONE_POSTGRES_TEST = "tests/conformance/test_repository.py::test_unknown_id_gives_none[postgres]"


def run_pytest(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["LINKVAULT_TEST_POSTGRES_URL"] = "postgresql://postgres@127.0.0.1:1/postgres"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", ONE_POSTGRES_TEST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_postgres_outside_ci_the_tests_skip_with_a_one_line_reason() -> None:
    result = run_pytest(ci=None)
    assert result.returncode == 0, result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1
    assert "PostgreSQL not reachable at postgresql://postgres@127.0.0.1:1/postgres" in skipped[0]
    assert "1 skipped" in result.stdout


def test_without_postgres_in_ci_the_tests_fail_instead_of_skipping() -> None:
    result = run_pytest(ci="true")
    assert result.returncode == 1, result.stdout
    assert "CI must run the PostgreSQL tests" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]


async def test_two_concurrent_migrate_commands_do_not_collide(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.create_database(migrated=False)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "linkvault.cli",
            "migrate",
            "-d",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)

    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(out.decode() for out, _ in outputs)
    assert "Applied migrations 1" in said[0]
    assert "up to date" in said[1]
