"""The `linkvault` command line."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from linkvault import __version__
from linkvault.cli import service
from linkvault.cli.common import CliError, configure_logging, say, warn
from linkvault.cli.connections import connections_app
from linkvault.cli.events import events
from linkvault.cli.keys import keys_app
from linkvault.cli.providers import providers_app
from linkvault.cli.webhooks import webhooks_app
from linkvault.errors import LinkvaultError

__all__ = ["app", "configure_logging", "entry", "main"]


app = typer.Typer(
    name="linkvault",
    help="Keep your users' connections to external data providers.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(connections_app, name="connections")
app.add_typer(providers_app, name="providers")
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")


def _print_version(value: bool) -> None:
    if value:
        say(f"linkvault {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Keep your users' connections to external data providers."""


app.command()(service.migrate)
app.command()(service.worker)
app.command()(service.serve)
app.command()(service.api)
app.command()(service.sandbox)
app.command()(events)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: one line on stderr and a non-zero exit for every error, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    if not args:
        args = ["--help"]
    try:
        result = command.main(args=args, prog_name="linkvault", standalone_mode=False)
    except typer.Abort:
        warn("linkvault: aborted")
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        warn(f"linkvault: error: {message}")
        return int(getattr(exc, "exit_code", 2))
    except LinkvaultError as exc:
        warn(f"linkvault: error: {exc}")
        return exc.code if isinstance(exc, CliError) else 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
