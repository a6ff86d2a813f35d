"""Named SQL blocks, one .sql file per dialect."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")


def parse_named_blocks(text: str) -> dict[str, str]:
    """Split `-- name: x` blocks into {name: statement}; comments inside a block are dropped."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NAME.match(line.strip())
        if match:
            name = match.group(1)
            if name in blocks:
                raise ValueError(f"query {name!r} is defined twice")
            current = blocks[name] = []
        elif current is not None and not line.strip().startswith("--"):
            current.append(line)
    queries = {name: "\n".join(lines).strip().rstrip(";").strip() for name, lines in blocks.items()}
    empty = [name for name, sql in queries.items() if not sql]
    if empty:
        raise ValueError(f"empty queries: {', '.join(empty)}")
    return queries


@cache
def load(dialect: str) -> dict[str, str]:
    """The named queries of one dialect (`postgres` or `sqlite`)."""
    text = files("linkvault.stores").joinpath("sql", f"{dialect}.sql").read_text("utf-8")
    return parse_named_blocks(text)
