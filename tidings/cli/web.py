"""Command line of the web edge: ``serve``, ``ingest``, ``apikey``, ``contacts show``.

``register(app)`` adds them to the ``tidings`` command::

    tidings serve --port 8000            # the web app under uvicorn
    tidings serve --workers 4 --live-process   # ... and the live loop in a process of its own
    tidings ingest                       # the Redis stream consumer (with TIDINGS_REDIS_URL)
    tidings live                         # the live segments' loop in a process of its own
    tidings apikey create shop           # prints the key once
    tidings apikey revoke 3f9a0c12d4e5
    tidings contacts show C0002          # the contact card with its whole history
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tidings.config import Settings
    from tidings.journeys.runtime import Runtime

console = Console()
apikey_app = typer.Typer(help="API keys of the event API (stored hashed).", no_args_is_help=True)


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="uvicorn worker processes."),
    live_process: bool = typer.Option(
        False,
        "--live-process",
        help="Run the live segments' loop in one process of its own beside the workers "
        "(`tidings live`), not in a thread of each (TIDINGS_LIVE_LOOP=false for them).",
    ),
) -> None:
    """Run the web app: webhooks, tracking, unsubscribe, event API (docs at /docs)."""
    import os
    import signal
    import subprocess
    import sys

    import uvicorn

    from tidings.config import get_settings
    from tidings.web.app import configure_logging

    configure_logging()
    looper = None
    if live_process:
        os.environ["TIDINGS_LIVE_LOOP"] = "false"  # read by the workers (and this process)
        get_settings.cache_clear()
        looper = subprocess.Popen([sys.executable, "-m", "tidings", "live", "--with-parent"])
        # uvicorn ends by raising the signal it caught again: let that reach the finally
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            "tidings.web.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,
        )
    finally:
        if looper is not None:
            looper.terminate()
            looper.wait(60)


def ingest(
    until_idle: bool = typer.Option(False, help="Stop once the stream is drained."),
) -> None:
    """Consume the Redis event buffer into the store (acknowledged after each commit)."""
    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.web.app import configure_logging
    from tidings.web.buffer import Consumer
    from tidings.web.events import make_poster

    configure_logging()
    settings = get_settings()
    db = make_engine(settings.database_url)
    runtime = _lazy_runtime(settings, db)
    consumer = Consumer(settings, db=db, post_events=lambda: make_poster(runtime()))
    console.print(f"consuming {settings.ingest_stream} as {consumer.name} (Ctrl-C stops)")
    try:
        stats = consumer.run(until_idle=until_idle)
    except KeyboardInterrupt:
        stats = consumer.stats
    console.print(
        f"{stats.entries} entries in {stats.batches} batches: {stats.stored} provider events "
        f"stored, {stats.duplicates} duplicates, {stats.events} API events, {stats.dead} "
        f"parked in {settings.ingest_stream}:dead, {stats.retries} retries"
    )


def live(
    with_parent: bool = typer.Option(
        False, "--with-parent", hidden=True, help="Stop when the parent process is gone."
    ),
) -> None:
    """Run the live segments' loop in this process until stopped (Ctrl-C, SIGTERM).

    For a busy web app: serve it with ``TIDINGS_LIVE_LOOP=false`` and run this beside it, so
    the loop does not share an interpreter lock with request parsing. It polls every
    ``TIDINGS_LIVE_POLL_SECONDS`` while idle and steps back to back while changes arrive.
    Any number may run (they take turns); stopping one mid-step leaves its changes queued."""
    import os
    import signal
    import threading

    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.segments.live import Loop
    from tidings.web.app import configure_logging

    configure_logging()
    settings = get_settings()
    db = make_engine(settings.database_url)
    runtime = _lazy_runtime(settings, db)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    loop = Loop(lambda: runtime().engine, db=db, poll=settings.live_poll_seconds)
    loop.start()
    console.print(
        f"live segments' loop running, polling every {settings.live_poll_seconds:g} s "
        "while idle (Ctrl-C stops)"
    )
    parent = os.getppid()
    with contextlib.suppress(KeyboardInterrupt):
        # --with-parent (tidings serve --live-process): uvicorn ends its process by the
        # signal it caught, so serve may not outlive it long enough to stop this one
        while not stop.wait(1.0 if with_parent else None):
            if os.getppid() != parent:
                break
    loop.stop()


@apikey_app.command("create")
def apikey_create(name: str = typer.Argument(..., help="Who uses the key, e.g. shop")) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    from tidings.crm.db import make_engine
    from tidings.web.apikeys import create_key

    key = create_key(make_engine(), name=name)
    console.print(f"API key for {name} (prefix {key.prefix}); store it now, it is not shown again:")
    print(key.secret)


@apikey_app.command("revoke")
def apikey_revoke(prefix: str = typer.Argument(..., help="The key's prefix, or the key")) -> None:
    """Revoke a key at once."""
    from tidings.crm.db import make_engine
    from tidings.web.apikeys import revoke_key

    if not revoke_key(make_engine(), prefix=prefix):
        console.print(f"[red]error:[/] no active key with prefix {prefix!r} (tidings apikey list)")
        raise typer.Exit(2)
    console.print(f"revoked {prefix}")


@apikey_app.command("list")
def apikey_list() -> None:
    """List keys (prefix, name, created, revoked); the keys themselves are not stored."""
    from tidings.crm.db import make_engine
    from tidings.web.apikeys import list_keys

    table = Table("prefix", "name", "created", "revoked")
    for row in list_keys(make_engine()):
        table.add_row(row["prefix"], row["name"], str(row["created_at"]), str(row["revoked_at"]))
    console.print(table)


def contacts_show(
    ref: str = typer.Argument(..., help="Contact id (#12), external id or email"),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """The contact card: profile, consents, and the whole history in time order."""
    from tidings.crm.db import make_engine
    from tidings.web.card import contact_card

    card = contact_card(make_engine(), ref)
    if card is None:
        console.print(f"[red]error:[/] no contact with id, external_id or email {ref!r}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(card, indent=2, default=str))
        return
    name = " ".join(filter(None, [card["first_name"], card["last_name"]])) or "(no name)"
    console.print(f"[bold]#{card['id']} {name}[/]  external_id={card['external_id']}")
    console.print(f"email {card['email']}  phone {card['phone']}  tz {card['timezone']}")
    if card["erased_at"]:
        console.print(f"[magenta]erased[/] {card['erased_at']}: an anonymous row (docs/privacy.md)")
    for c in card["consents"]:
        console.print(f"consent {c['channel']}/{c['purpose']}: {c['status']} ({c['source']})")
    for s in card["suppressions"]:
        console.print(f"[red]suppressed[/] {s['channel']} {s['address']}: {s['reason']}")
    table = Table("when", "what", "detail")
    for item in card["timeline"]:
        table.add_row(item["at"], item["kind"], _detail(item))
    console.print(table)


def _detail(item: dict[str, object]) -> str:
    kind = item["kind"]
    if kind == "event":
        return f"{item['name']} {json.dumps(item['properties'], default=str)[:80]}"
    if kind == "order":
        return f"{item['order_id']} {item['total']} {item['currency']} {item['status']}"
    if kind == "consent":
        return (
            f"{item['channel']}/{item['purpose']} {item['previous_status']} -> "
            f"{item['status']} by {item['source']}"
        )
    events = item.get("events") or []
    trail = ", ".join(
        f"{e['type']}{' (machine)' if e['machine'] else ''}"
        for e in events  # type: ignore[attr-defined]
    )
    why = f" ({item['error']})" if item.get("error") else ""  # failed, held, queued to retry
    return f"{item['channel']} {item['template'] or ''} to {item['to']}: {item['status']}{why}" + (
        f" [{trail}]" if trail else ""
    )


def register(app: typer.Typer) -> None:
    """Add the web commands to the ``tidings`` app."""
    from tidings.cli import crm as crm_cli

    app.command("serve")(serve)
    app.command("ingest")(ingest)
    app.command("live")(live)
    app.add_typer(apikey_app, name="apikey")
    crm_cli.contacts_app.command("show")(contacts_show)


def _lazy_runtime(settings: Settings, db: Engine) -> Callable[[], Runtime]:
    """The journeys' runtime, built on first use (it loads the project's journeys, templates
    and adapters), then kept: a consumer or loop that never needs it never pays for it."""
    from tidings.journeys.runtime import Runtime

    @functools.cache
    def runtime() -> Runtime:
        return Runtime.from_settings(settings, db=db)

    return runtime
