"""``tidings segment``: list, preview, explain and refresh segments.

    tidings segment list
    tidings segment preview engaged_buyers --limit 10
    tidings segment explain segments/engaged_buyers.yaml
    tidings segment refresh --all
    tidings segment schema --out segment.schema.json

A NAME is looked up in the segments directory (``--dir``, default: the ``segments`` package);
a path to a ``.yaml`` file is loaded and may reference the directory's segments.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from tidings.segments.loader import Catalog
    from tidings.segments.rules import Segment

app = typer.Typer(
    help="Segments: rules in YAML compiled to one SQL statement.", no_args_is_help=True
)

DIR_OPTION = typer.Option(
    None, "--dir", help="Directory of segment *.yaml files (default: the project's segments/)."
)
NOW_OPTION = typer.Option(None, "--now", help="Evaluate as of this ISO time (default: now).")


def _console() -> Any:
    from tidings.cli import console

    return console


def _catalog(directory: Path | None, target: str | None = None) -> tuple[Catalog, Segment | None]:
    from tidings.config import get_settings
    from tidings.segments.loader import load_catalog

    directory = directory or get_settings().segments_dir
    if target and (target.endswith((".yaml", ".yml")) or "/" in target):
        path = Path(target)
        if not path.is_file():
            from tidings.errors import InputError

            raise InputError(f"no such segment file: {path}", hint="give a NAME or a .yaml path")
        inside = path.resolve().parent == directory.resolve()
        catalog = load_catalog(directory, extra=() if inside else [path], strict=False)
        _report(catalog, path)
        name = next(n for n, s in catalog.sources.items() if Path(s).resolve() == path.resolve())
        return catalog, catalog.get(name)
    catalog = load_catalog(directory, strict=False)
    if target and target not in catalog.segments:
        _report(catalog, None)
    return catalog, catalog.get(target) if target else None


def _report(catalog: Catalog, path: Path | None) -> None:
    """Raise the problems that left the wanted segment out (all of them if ``path`` is None)."""
    from tidings.segments.loader import SegmentErrors

    wanted = [
        p for p in catalog.problems if path is None or (p.location or "").split(":")[0] == str(path)
    ]
    if wanted:
        raise SegmentErrors(wanted)


def _now(value: str | None) -> datetime:
    from tidings.crm.types import parse_time, utcnow

    return utcnow() if value is None else parse_time(value)


@app.command("schema")
def schema(
    out: Path | None = typer.Option(None, help="Write to this file (default: stdout)."),
) -> None:
    """The JSON Schema of segment files, for editor completion (generated from the models)."""
    import json

    from tidings.segments.rules import Segment

    text = json.dumps(Segment.model_json_schema(by_alias=True), indent=2) + "\n"
    if out:
        out.write_text(text)
        _console().print(f"wrote {out}")
    else:
        typer.echo(text, nl=False)


@app.command("list")
def list_segments(directory: Path | None = DIR_OPTION) -> None:
    """The segments defined in the directory, with their descriptions."""
    from rich.table import Table

    catalog, _ = _catalog(directory)
    table = Table("name", "description", "file")
    for name, seg in sorted(catalog.segments.items()):
        table.add_row(name, seg.description.strip(), catalog.sources[name])
    _console().print(table)
    for problem in catalog.problems:
        _console().print(f"[red]skipped: {problem}[/]", highlight=False, soft_wrap=True)
    if catalog.problems:
        raise typer.Exit(1)


@app.command("explain")
def explain(
    target: str = typer.Argument(..., help="Segment NAME or FILE."),
    directory: Path | None = DIR_OPTION,
    now: str | None = NOW_OPTION,
) -> None:
    """Print the one SQL statement the segment compiles to, for the store's dialect."""
    from tidings.crm.db import make_engine
    from tidings.segments.membership import segment_statement

    catalog, segment = _catalog(directory, target)
    assert segment is not None
    engine = make_engine()
    stmt = segment_statement(segment, catalog=catalog, dialect=engine.dialect.name, now=_now(now))
    _console().print(render_sql(stmt, engine.dialect), highlight=False, soft_wrap=True)


def render_sql(stmt: Any, dialect: Any) -> str:
    """The statement with its parameters written in (for reading, not for executing)."""
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if getattr(dialect, "paramstyle", "") in {"pyformat", "format"}:
        sql = sql.replace("%%", "%")
    return sql + ";"


@app.command("preview")
def preview(
    target: str = typer.Argument(..., help="Segment NAME or FILE."),
    limit: int = typer.Option(10, min=0, help="How many sample contacts to show."),
    directory: Path | None = DIR_OPTION,
    now: str | None = NOW_OPTION,
) -> None:
    """Count the segment's contacts and show a sample of them."""
    from rich.table import Table
    from sqlalchemy import func, select

    from tidings.crm.db import make_engine, session_scope
    from tidings.segments.compile import contacts
    from tidings.segments.membership import segment_statement, tune_for_segments

    catalog, segment = _catalog(directory, target)
    assert segment is not None
    engine = make_engine()
    stmt = segment_statement(segment, catalog=catalog, dialect=engine.dialect.name, now=_now(now))
    ids = stmt.subquery()
    with session_scope(engine) as session:
        tune_for_segments(session)
        total = session.scalar(select(func.count()).select_from(ids)) or 0
        rows = session.execute(
            select(contacts.c.id, contacts.c.external_id, contacts.c.email, contacts.c.phone)
            .where(contacts.c.id.in_(select(ids.c.id)))
            .order_by(contacts.c.id)
            .limit(limit)
        ).all()
    table = Table("id", "external_id", "email", "phone", title=f"{segment.name}: {total} contacts")
    for row in rows:
        table.add_row(*(str(v) if v is not None else "" for v in row))
    _console().print(table)


@app.command("refresh")
def refresh_cmd(
    target: str | None = typer.Argument(None, help="Segment NAME or FILE."),
    all_: bool = typer.Option(False, "--all", help="Refresh every segment in the directory."),
    directory: Path | None = DIR_OPTION,
    now: str | None = NOW_OPTION,
) -> None:
    """Update the stored membership (entered / exited), computed set-based in SQL."""
    from tidings.crm.db import make_engine, session_scope
    from tidings.errors import InputError
    from tidings.segments.membership import refresh

    if bool(target) == all_:
        raise InputError("give a segment NAME or FILE, or --all (not both)")
    catalog, segment = _catalog(directory, target)
    chosen = list(catalog.segments.values()) if all_ else [segment]
    engine = make_engine()
    moment = _now(now)
    for seg in chosen:
        assert seg is not None
        with session_scope(engine) as session:
            entered, exited = refresh(seg, session=session, catalog=catalog, now=moment)
        _console().print(f"{seg.name}: {entered} entered, {exited} exited")
