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
contacts_app = typer.Typer(
    help="Contacts: import, the contact card, export and erasure.", no_args_is_help=True
)
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
        + (f", [yellow]{report.warned} with warnings[/]" if report.warned else "")
        + (
            f", [magenta]{report.suppressed} suppressed (erased people)[/]"
            if report.suppressed
            else ""
        ),
        highlight=False,
    )
    sections = (
        ("rejected rows", report.errors),
        ("warnings: imported without these fields", report.warnings),
        ("suppressed rows: erased people, not imported", report.suppressions),
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
    if report.touched or report.confirmations:
        from tidings.journeys.runtime import Runtime
        from tidings.segments import live
        from tidings.segments.inputs import IMPORTED

        runtime = Runtime.from_settings()
        # the live segments that read what the import changed follow it now, as after any write
        if live.record_apart(runtime.engine, report.touched, IMPORTED[kind]):
            live.drain(runtime.engine)
        if report.confirmations:  # double opt-in: the confirmation emails go out now
            runtime.dispatcher.dispatch(only=report.confirmations)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_import_report(report)
    # 1: the good rows are in, but some were rejected or suppressed (scripts can tell).
    # Warnings alone (a field left out of an imported row) exit 0: every row is in.
    raise typer.Exit(1 if report.rejected or report.suppressed else 0)


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


REF = typer.Argument(..., help="Contact id (#12), external id or email")


def _resolve(ref: str) -> int:
    """The contact ``ref`` names, as ``contacts show`` finds it; exit 2 when there is none."""
    from tidings.crm.db import make_engine
    from tidings.web.card import find_contact_id

    contact_id = find_contact_id(make_engine(), ref)
    if contact_id is None:
        console.print(f"[red]error:[/] no contact with id, external_id or email {ref!r}")
        raise typer.Exit(2)
    return contact_id


@contacts_app.command("export")
def contacts_export(
    ref: str = REF,
    out: Path | None = typer.Option(None, "--out", help="Write the JSON here, not to stdout."),
) -> None:
    """Everything stored about a contact as one JSON document (GDPR articles 15 and 20)."""
    from tidings.crm.db import make_engine
    from tidings.crm.erasure import export_contact

    document = json.dumps(export_contact(make_engine(), _resolve(ref)), indent=2)
    if out is None:
        typer.echo(document)
        return
    out.write_text(document + "\n", encoding="utf-8")
    console.print(f"exported contact {ref} to {out}", highlight=False)


@contacts_app.command("erase")
def contacts_erase(
    ref: str = REF,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    reason: str | None = typer.Option(None, help="Why (kept in the erasure log)."),
    as_json: bool = AS_JSON,
) -> None:
    """Erase a contact's personal data (GDPR article 17), keeping anonymous counts.

    Their email, phone and external id are kept only as keyed hashes: a later import or API
    write naming them is reported as suppressed until the person consents again. Running it
    again is harmless. See docs/privacy.md.
    """
    from tidings.crm.db import make_engine
    from tidings.crm.erasure import cli_actor, erase_contact, find_erasure
    from tidings.web.card import find_contact_id

    db = make_engine()
    contact_id = find_contact_id(db, ref)
    if contact_id is None:
        gone = find_erasure(db, ref)
        if gone is None:
            console.print(f"[red]error:[/] no contact with id, external_id or email {ref!r}")
            raise typer.Exit(2)
        if as_json:
            typer.echo(json.dumps(gone.to_dict(), indent=2))
        else:
            console.print(
                f"{ref} was already erased on {gone.erased_at:%Y-%m-%d} "
                f"(erasure #{gone.erasure_id}): nothing to do",
                highlight=False,
            )
        return
    if not yes and not typer.confirm(
        f"Erase contact #{contact_id} ({ref}): personal data removed for good?"
    ):
        raise typer.Exit(1)
    outcome = erase_contact(db, contact_id, actor=cli_actor(), reason=reason)
    if as_json:
        typer.echo(json.dumps(outcome.to_dict(), indent=2))
        return
    if outcome.already:
        console.print(
            f"contact #{contact_id} was already erased (erasure #{outcome.erasure_id}): "
            "nothing left to remove",
            highlight=False,
        )
        return
    table = Table("table", "what", "rows", title=f"erasure #{outcome.erasure_id}")
    for name, counts in outcome.counts.items():
        for what, n in counts.items():
            table.add_row(name, what, str(n))
    console.print(table)
    console.print(f"contact #{contact_id} erased", highlight=False)
