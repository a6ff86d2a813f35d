"""`python -m linkvault.cli`."""

from linkvault.cli.app import entry

entry()
