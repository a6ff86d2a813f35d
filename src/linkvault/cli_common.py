"""What every `linkvault` command group shares: groups, options, consoles, safe output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from linkvault.errors import LinkvaultError
from linkvault.stores import sqlite_path
from linkvault.terminal import markup_safe, printable

__all__ = [
    "CliError",
    "DatabaseOption",
    "JsonOption",
    "err",
    "existing_database",
    "group",
    "markup_safe",
    "out",
    "print_json",
    "say",
    "warn",
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        "-d",
        help="Database URL (default: LINKVAULT_DATABASE_URL).",
        metavar="URL",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class CliError(LinkvaultError):
    """A command's refusal: printed as one line on stderr, exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def group(help_text: str) -> typer.Typer:
    """A command group that shows its help when called bare, and plain (not rich) help."""
    app = typer.Typer(help=help_text, rich_markup_mode=None, invoke_without_command=True)

    @app.callback()
    def bare(ctx: typer.Context) -> None:
        if ctx.invoked_subcommand is None:
            out.print(ctx.get_help(), markup=False)
            raise typer.Exit(0)

    return app


def say(text: str) -> None:
    """One line of plain text on stdout, control characters removed."""
    out.print(printable(text), markup=False)


def warn(text: str) -> None:
    """One line of plain text on stderr, control characters removed."""
    err.print(printable(text, newlines=False), markup=False)


def print_json(document: Any) -> None:
    """JSON for scripts: ASCII only, so no control character reaches the terminal raw."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def existing_database(url: str, source: str) -> str:
    """`url`, after checking that a SQLite file it names exists: reading never creates one."""
    if not url.startswith("sqlite:"):
        return url
    path = Path(sqlite_path(url)).resolve()
    if not path.exists():
        raise CliError(
            f"no database at {path} (from {source}); create it with `linkvault migrate` "
            "or `linkvault serve`, or point --database-url at an existing one"
        )
    return url
