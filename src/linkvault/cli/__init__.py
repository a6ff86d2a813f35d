"""The `linkvault` command line: `app` is the typer application, `entry` the console script."""

from linkvault.cli.app import app, entry, main

__all__ = ["app", "entry", "main"]
