"""The ``tidings`` command line.

Each area registers its own Typer sub-app here; heavy imports stay inside the commands so
``tidings --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from crm import cli as crm_cli
from journeys import cli as journeys_cli
from segments import cli as segments_cli
from segments.ml import cli as models_cli
from templates import cli as templates_cli
from tidings.errors import ConfigurationError, InputError
from web import cli as web_cli

app = typer.Typer(
    name="tidings",
    help="Marketing automation: journeys in YAML, exactly-once sending, real statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error the user can act on and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_guarded(main: typer.Typer) -> None:
    try:
        main()
    except (ConfigurationError, InputError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


db_app = typer.Typer(help="The CRM store: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(crm_cli.crm_app, name="crm")
app.add_typer(crm_cli.contacts_app, name="contacts")
app.add_typer(crm_cli.events_app, name="events")
app.add_typer(crm_cli.orders_app, name="orders")
app.add_typer(segments_cli.app, name="segment")
app.add_typer(models_cli.app, name="models")
app.add_typer(templates_cli.app, name="templates")
app.add_typer(journeys_cli.app, name="journey")
crm_cli.events_app.command("post")(journeys_cli.post)
web_cli.register(app)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or migrate the store at TIDINGS_DATABASE_URL to the newest schema."""
    from crm.db import current_revision, make_engine, upgrade

    engine = make_engine()
    before = current_revision(engine)
    upgrade(engine, revision)
    after = current_revision(engine)
    where = engine.url.render_as_string(hide_password=True)
    if before == after:
        console.print(f"store {where} already at revision {after}")
    else:
        console.print(f"store {where} migrated {before or 'empty'} -> {after}")


@db_app.command("current")
def db_current() -> None:
    """Print the store's revision and the newest one available."""
    from crm.db import current_revision, head_revision, make_engine

    engine = make_engine()
    console.print(f"current: {current_revision(engine) or 'empty'}; head: {head_revision(engine)}")


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("demo"), help="Where the demo writes its files."),
    data: Path = typer.Option(Path("data/sample"), help="The sample CRM data to import."),
) -> None:
    """The main job on embedded defaults: import the sample CRM, run the welcome journey and
    an order-status SMS through the sandbox outbox, and show what was sent."""
    from crm.db import make_engine, upgrade
    from crm.importer import IMPORTERS
    from crm.quality import quality_report
    from journeys.running import find_contact, run_once
    from journeys.runtime import Runtime
    from journeys.triggers import post_event
    from tidings.config import get_settings

    workdir.mkdir(parents=True, exist_ok=True)
    outbox = workdir / "outbox"
    # The demo runs whatever the hour: quiet hours would defer the welcome emails to morning.
    settings = get_settings().model_copy(update={"outbox_dir": str(outbox), "quiet_hours": "off"})
    engine = make_engine(settings.database_url)
    console.rule("1. the CRM store")
    upgrade(engine)
    console.print(f"store ready at {engine.url.render_as_string(hide_password=True)}")
    console.rule("2. import the sample CRM data")
    for kind in ("contacts", "events", "orders"):
        crm_cli.print_import_report(IMPORTERS[kind](data / f"{kind}.csv", engine=engine))
    console.rule("3. data quality")
    crm_cli.print_quality(quality_report(engine=engine, stale_days=settings.stale_days))
    console.rule("4. the welcome journey (new sign-ups, A/B subject test) -> outbox")
    runtime = Runtime.from_settings(settings, db=engine)
    runtime.load_journeys()
    journeys_cli.print_summary(run_once(runtime, Path("journeys/welcome.yaml")))
    console.rule("5. the shop posts order.shipped -> order-status SMS at once")
    outcome = post_event(
        runtime,
        contact_id=find_contact(runtime, "C0002"),
        name="order.shipped",
        idempotency_key="demo-order-O00001",
        properties={
            "order": {
                "number": "O00001",
                "carrier": "DHL",
                "tracking_url": "https://track.example.com/O1",
            }
        },
    )
    console.print(
        "already sent in an earlier demo run"
        if outcome.duplicate
        else f"order_status: {outcome.sent} SMS sent at once"
    )
    console.rule(f"6. what was sent (files in {outbox})")
    journeys_cli.print_outbox(outbox)


def main() -> None:
    run_guarded(app)


if __name__ == "__main__":
    main()
