"""Versioned SQL migrations, one folder per dialect, files named NNNN_name.sql."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

SCHEMA_TABLE = "linkvault_schema_migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of a dialect, in version order."""
    folder = files("linkvault.stores.migrations").joinpath(dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {versions}")
    return found


def latest_version(dialect: str) -> int:
    return len(load_migrations(dialect))
