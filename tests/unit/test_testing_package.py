"""`linkvault.testing` is shipped for users' tests and stays out of the product path."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import linkvault
from linkvault.stores.memory import InMemoryConnectionRepository
from linkvault.testing import FakeClock
from linkvault.testing import InMemoryConnectionRepository as ExportedRepository

PACKAGE = Path(linkvault.__file__).parent
TESTING = PACKAGE / "testing"


def product_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TESTING in path.parents or path.name == "__main__.py":
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_every_product_module_loads_nothing_of_linkvault_testing() -> None:
    modules = product_modules()
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('linkvault.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(done.stdout)

    assert {"linkvault.runtime", "linkvault.oauth.client"} <= set(loaded)
    assert [m for m in loaded if m.startswith("linkvault.testing")] == []


def test_only_a_cli_command_imports_linkvault_testing_and_only_when_it_runs() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TESTING in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            if any(t == "linkvault.testing" or t.startswith("linkvault.testing.") for t in targets):
                where = path.relative_to(PACKAGE.parent)
                found.append((str(where), id(node) in in_function))

    assert all(inside for _, inside in found), found
    assert all(where.startswith("linkvault/cli") for where, _ in found), found


def test_linkvault_testing_exports_the_in_memory_store() -> None:
    assert ExportedRepository is InMemoryConnectionRepository


def test_a_fake_clock_stands_still_until_advanced() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))

    assert clock() == clock() == datetime(2026, 1, 1, tzinfo=UTC)
    clock.advance(minutes=5)
    assert clock() == datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=5)
