"""What every `linkvault` command group shares: groups, options, consoles, safe output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from linkvault.cli.terminal import markup_safe, printable
from linkvault.errors import LinkvaultError
from linkvault.providers import ProviderRegistry
from linkvault.settings import Settings, environment, load_settings, source_of
from linkvault.stores import ConnectionStore, open_store, sqlite_path

__all__ = [
    "CliError",
    "DatabaseOption",
    "JsonOption",
    "configure_logging",
    "err",
    "existing_database",
    "group",
    "markup_safe",
    "out",
    "print_json",
    "registry",
    "run",
    "say",
    "settings",
    "warn",
    "with_existing_store",
]

T = TypeVar("T")

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


def settings() -> Settings:
    return load_settings()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def registry(current: Settings) -> ProviderRegistry:
    """The providers as `serve` sees them: the API reports the same."""
    from linkvault.runtime import provider_registry

    return provider_registry(current, environment())


async def with_existing_store(
    database_url: str | None, work: Callable[[ConnectionStore], Awaitable[T]]
) -> T:
    """Run `work` on a database that exists and is migrated; never creates or migrates one."""
    current = settings()
    url = database_url or current.database_url
    source = "--database-url" if database_url else source_of(current, "database_url")
    store = await open_store(existing_database(url, source), migrate=False)
    try:
        await store.check_schema()
        return await work(store)
    finally:
        await store.close()


def configure_logging(level: str) -> None:
    """Plain key=value lines on stderr; a deployment may install its own handlers instead."""
    import logging

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
