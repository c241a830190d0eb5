"""The ``tidings`` command line.

Each area registers its own Typer sub-app here; heavy imports stay inside the commands so
``tidings --help`` answers at once.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

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
    try:
        main()
    except (ConfigurationError, InputError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


db_app = typer.Typer(help="The CRM store: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


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


def main() -> None:
    run_guarded(app)


if __name__ == "__main__":
    main()
