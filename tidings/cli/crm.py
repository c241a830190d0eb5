"""CLI of the CRM store: ``tidings contacts|events|orders import`` and ``tidings crm quality``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from tidings.crm.importer import ImportReport
    from tidings.crm.quality import QualityReport

console = Console()
crm_app = typer.Typer(help="The CRM store: data quality.", no_args_is_help=True)
contacts_app = typer.Typer(help="Contacts: import, and the contact card.", no_args_is_help=True)
events_app = typer.Typer(
    help="Events: import a file, or post one (journeys react).", no_args_is_help=True
)
orders_app = typer.Typer(help="Orders: import.", no_args_is_help=True)

FILE = typer.Argument(..., help="A .csv (`,` or `;`, with or without BOM) or .jsonl file.")
FORMAT = typer.Option(None, "--format", help="csv or jsonl (default: from the file name).")
AS_JSON = typer.Option(False, "--json", help="Print the report as JSON.")
EXTRA = typer.Option(
    False,
    "--allow-extra-columns",
    help="Keep an unknown column that looks like a known one (e-mail, amount) as an "
    "attribute instead of stopping on the header.",
)
SHOWN_ERRORS = 25


def print_import_report(report: ImportReport, *, out: Console = console) -> None:
    out.print(
        f"[bold]{report.kind}[/] from {report.path}: {report.read} rows, "
        f"[green]{report.accepted} accepted[/] ({report.inserted} new, {report.updated} updated, "
        f"{report.unchanged} unchanged), "
        + (f"[red]{report.rejected} rejected[/]" if report.rejected else "0 rejected")
        + (f", [yellow]{report.warned} with warnings[/]" if report.warned else ""),
        highlight=False,
    )
    sections = (
        ("rejected rows", report.errors),
        ("warnings: imported without these fields", report.warnings),
    )
    for title, problems in sections:
        if not problems:
            continue
        table = Table("line", "column", "reason", title=title, title_justify="left")
        for problem in problems[:SHOWN_ERRORS]:
            table.add_row(str(problem.line), problem.column or "-", problem.reason)
        out.print(table)
        hidden = len(problems) - SHOWN_ERRORS
        if hidden > 0:
            out.print(f"... and {hidden} more (use --json for all)")


def _import(kind: str, path: Path, fmt: str | None, as_json: bool, allow_extra: bool) -> None:
    from tidings.crm.db import make_engine
    from tidings.crm.importer import IMPORTERS

    # A header error (a misspelt or missing column) raises InputError: exit 2, nothing imported.
    report = IMPORTERS[kind](path, engine=make_engine(), fmt=fmt, allow_extra_columns=allow_extra)
    if report.confirmations:  # double opt-in: the confirmation emails go out now
        from tidings.journeys.runtime import Runtime

        Runtime.from_settings().dispatcher.dispatch(only=report.confirmations)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_import_report(report)
    # 1: the good rows are in, but some were rejected (scripts can tell). Warnings alone (a
    # field left out of an imported row) exit 0: every row is in.
    raise typer.Exit(1 if report.rejected else 0)


@contacts_app.command("import")
def contacts_import(
    path: Path = FILE,
    fmt: str | None = FORMAT,
    as_json: bool = AS_JSON,
    allow_extra: bool = EXTRA,
) -> None:
    """Upsert contacts (by external_id, else email); other columns become attributes.

    A column that looks like a known one (e-mail, phone_number) stops the import on the header
    unless --allow-extra-columns; a bad phone, locale or timezone is left out with a warning.
    """
    _import("contacts", path, fmt, as_json, allow_extra)


@events_app.command("import")
def events_import(
    path: Path = FILE,
    fmt: str | None = FORMAT,
    as_json: bool = AS_JSON,
    allow_extra: bool = EXTRA,
) -> None:
    """Append events (external_id|email, name, occurred_at, properties...)."""
    _import("events", path, fmt, as_json, allow_extra)


@orders_app.command("import")
def orders_import(
    path: Path = FILE,
    fmt: str | None = FORMAT,
    as_json: bool = AS_JSON,
    allow_extra: bool = EXTRA,
) -> None:
    """Upsert orders by order_id (external_id|email, total, currency, status, placed_at)."""
    _import("orders", path, fmt, as_json, allow_extra)


def print_quality(report: QualityReport, *, out: Console = console) -> None:
    out.print(f"[bold]Data quality[/] of {report.contacts} contacts")
    table = Table("field", "filled", "complete", title="completeness", title_justify="left")
    for item in report.completeness:
        table.add_row(item.field, str(item.filled), f"{item.percent:.1f}%")
    for item in report.attributes[:20]:
        table.add_row(f"attributes.{item.field}", str(item.filled), f"{item.percent:.1f}%")
    out.print(table)
    fresh = Table("what", "newest", title="freshness", title_justify="left")
    for name, moment in report.freshness.items():
        fresh.add_row(name, moment.isoformat(timespec="seconds") if moment else "never")
    fresh.add_row(f"contacts not updated in {report.stale_days} days", str(report.stale_contacts))
    for name, count in report.totals.items():
        fresh.add_row(f"{name} stored", str(count))
    out.print(fresh)
    dupes = Table(
        "kind", "groups", "contacts", "examples", title="likely duplicates", title_justify="left"
    )
    for group in report.duplicates.values():
        examples = "; ".join(
            " = ".join(str(c["external_id"] or c["email"] or c["id"]) for c in sample)
            for sample in group.samples[:3]
        )
        dupes.add_row(group.reason, str(group.groups), str(group.contacts), examples or "-")
    out.print(dupes)


@crm_app.command("quality")
def crm_quality(
    as_json: bool = AS_JSON,
    stale_days: int | None = typer.Option(
        None, help="Contacts not updated for this many days are stale (TIDINGS_STALE_DAYS)."
    ),
) -> None:
    """Completeness per field, staleness and freshness, and likely duplicate contacts."""
    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.crm.quality import quality_report

    days = stale_days or get_settings().stale_days
    report = quality_report(engine=make_engine(), stale_days=days)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_quality(report)
