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

from tidings.cli import crm as crm_cli
from tidings.cli import demo as demo_cli
from tidings.cli import journeys as journeys_cli
from tidings.cli import models as models_cli
from tidings.cli import reports as reports_cli
from tidings.cli import segments as segments_cli
from tidings.cli import templates as templates_cli
from tidings.cli import web as web_cli
from tidings.errors import ConfigurationError, InputError

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
    """Run the app; a bad setting, bad input or a service that is down ends in one line
    ``error: ...`` and exit 2, never a traceback (an unexpected error keeps its traceback)."""
    from tidings.cli.errors import service_error

    try:
        main()
    except (ConfigurationError, InputError) as exc:
        _error_exit(str(exc))
    except Exception as exc:
        message = service_error(exc)
        if message is None:
            raise
        _error_exit(message)


def _error_exit(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


@app.callback()
def project_option(
    project: Path | None = typer.Option(
        None,
        "--project",
        "-p",
        envvar="TIDINGS_PROJECT_DIR",
        help="The project folder (journeys/, segments/, templates/, channels/, .env). "
        "Default: the working directory.",
    ),
) -> None:
    """Every command reads its content from one project folder."""
    from tidings.config import use_project

    if project is not None:
        if not project.is_dir():
            fail(f"--project {project}: no such folder (create one with `tidings init {project}`)")
        use_project(project)


@app.command("init")
def init(directory: Path = typer.Argument(..., help="The new project folder.")) -> None:
    """Write a new project: one working journey, its segment and templates, channels, flows."""
    from tidings.project import init_project

    init_project(directory)
    console.print(f"[green]created[/] {directory}", highlight=False)
    console.print(
        f"next: cd {directory} && tidings db upgrade && tidings journey validate && "
        "tidings journey run journeys/welcome.yaml",
        highlight=False,
        soft_wrap=True,
    )


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
app.add_typer(reports_cli.report_app, name="report")
app.add_typer(reports_cli.experiment_app, name="experiment")
app.add_typer(reports_cli.attribution_app, name="attribution")
crm_cli.events_app.command("post")(journeys_cli.post)
web_cli.register(app)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or migrate the store at TIDINGS_DATABASE_URL to the newest schema."""
    from tidings.crm.db import current_revision, make_engine, upgrade

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
    from tidings.crm.db import current_revision, head_revision, make_engine

    engine = make_engine()
    console.print(f"current: {current_revision(engine) or 'empty'}; head: {head_revision(engine)}")


app.command("demo")(demo_cli.demo)


def main() -> None:
    run_guarded(app)


if __name__ == "__main__":
    main()
