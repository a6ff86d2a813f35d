"""`linkvault providers`: the providers linkvault knows."""

from __future__ import annotations

from rich import box
from rich.table import Table

from linkvault.cli.common import (
    JsonOption,
    group,
    markup_safe,
    out,
    print_json,
    registry,
    say,
    settings,
)

providers_app = group("The providers linkvault knows.")


@providers_app.command("list")
def providers_list(as_json: JsonOption = False) -> None:
    """List the providers of the registry (built in, plus LINKVAULT_PROVIDERS_FILE)."""
    rows = [
        {
            "slug": p.slug,
            "id": str(p.id),
            "display_name": p.display_name,
            "auth_style": p.auth_style.value,
            "refreshes": p.refreshes,
            "rotates_refresh_tokens": p.rotates_refresh_tokens,
            "configured": p.configured,
        }
        for p in registry(settings())
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("slug", "configured", "auth", "name", "id", box=box.SIMPLE_HEAD, pad_edge=False)
    table.columns[1].min_width = 10
    table.columns[4].no_wrap = True
    for r in rows:
        table.add_row(
            markup_safe(str(r["slug"])),
            "yes" if r["configured"] else "no",
            str(r["auth_style"]),
            markup_safe(str(r["display_name"])),
            str(r["id"]),
        )
    out.print(table)
    if not all(r["configured"] for r in rows):
        say(
            "A provider that is not configured needs its client: "
            "LINKVAULT_PROVIDER_<SLUG>_CLIENT_ID and _CLIENT_SECRET."
        )
