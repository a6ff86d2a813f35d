"""Text from the database or the network, made safe to show on a terminal."""

from __future__ import annotations

import re

from rich.markup import escape

__all__ = ["markup_safe", "printable"]

# Whole escape sequences first (CSI, OSC such as OSC-8 hyperlinks, DCS/SOS/PM/APC strings),
# in their 7-bit (ESC x) and 8-bit (C1) forms, so no payload of theirs is left behind; then
# any other C0 or C1 control character, and the bidirectional overrides that reorder text.
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]P^_X]|[\x9d\x90\x9e\x9f\x98])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, newlines: bool = True) -> str:
    """`text` without control characters or escape sequences (newlines and tabs kept)."""
    cleaned = _CONTROLS.sub("", _SEQUENCES.sub("", text))
    return cleaned if newlines else cleaned.replace("\n", " ").replace("\t", " ")


def markup_safe(text: str) -> str:
    """`text` for a rich renderable that parses markup: printable, with markup escaped."""
    return escape(printable(text))
