"""``tidings journey ...`` and ``tidings events post``: validate, run and watch journeys.

``post`` is registered under ``tidings events`` (next to ``events import``) by ``tidings.cli``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from tidings.journeys.runtime import Runtime

console = Console()
app = typer.Typer(help="Journeys: validate, plan, run, pause and watch.", no_args_is_help=True)

FILES = typer.Argument(None, help="Journey files (default: every journeys/*.yaml).")
NOW = typer.Option(
    None,
    "--now",
    help="Act as if it were this time (ISO 8601, e.g. 2026-12-14T09:00; no offset means UTC): "
    "see what a time-based journey does over weeks without waiting for them.",
)


def _now(value: str | None) -> datetime | None:
    """``--now`` as an aware datetime (UTC when no offset is given)."""
    from tidings.crm.types import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 time, e.g. 2026-12-14T09:00", param_hint="--now"
        ) from None


def _runtime() -> Runtime:
    from tidings.journeys.runtime import Runtime

    return Runtime.from_settings()


def _loaded_runtime() -> Runtime:
    """The runtime with the project's journeys registered; a file that fails is said and skipped."""
    runtime = _runtime()
    runtime.load_journeys()
    report_problems(runtime)
    return runtime


def report_problems(runtime: Runtime) -> None:
    err = Console(stderr=True)
    for problem in runtime.problems:
        err.print(f"[yellow]skipped:[/] {problem}", highlight=False, soft_wrap=True)


def _files(files: list[Path] | None) -> list[Path]:
    from tidings.config import get_settings
    from tidings.journeys.loader import journey_files

    return list(files) if files else journey_files(get_settings().journeys_dir)


@app.command("validate")
def validate(files: list[Path] | None = FILES) -> None:
    """Check journeys: schema, step graph, and that templates and segments exist."""
    from tidings.config import get_settings
    from tidings.errors import InputError
    from tidings.journeys.loader import journey_files, journey_steps, load_file
    from tidings.journeys.runtime import references
    from tidings.segments.loader import load_catalog
    from tidings.templates.render import Renderer
    from tidings.yamlfile import InputErrors

    catalog = load_catalog(get_settings().segments_dir, strict=False)
    for error in catalog.problems:
        console.print(f"[red]{error}[/]", highlight=False, soft_wrap=True)
    project = journey_files(get_settings().journeys_dir)
    refs = references(Renderer(), set(catalog.segments), journey_steps([*project, *(files or [])]))
    problems = len(catalog.problems)
    for path in _files(files):
        try:
            journey = load_file(path, references=refs)
        except InputError as exc:
            errors = exc.errors if isinstance(exc, InputErrors) else [exc]
            problems += len(errors)
            for error in errors:
                console.print(f"[red]{error}[/]", highlight=False, soft_wrap=True)
            continue
        console.print(
            f"[green]ok[/] {path}: {journey.name}, {len(journey.steps)} steps", highlight=False
        )
    if problems:
        console.print(f"{problems} problem(s)")
        raise typer.Exit(1)


@app.command("schema")
def schema(
    out: Path | None = typer.Option(None, help="Write to this file (default: stdout)."),
) -> None:
    """The JSON Schema of journey files, for editor completion (generated from the models)."""
    from tidings.journeys.schema import Journey

    text = json.dumps(Journey.model_json_schema(), indent=2) + "\n"
    if out:
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        typer.echo(text, nl=False)


@app.command("plan")
def plan(file: Path = typer.Argument(..., help="The journey file."), now: str | None = NOW) -> None:
    """A dry run on the current CRM data: who would enter, and what each step would do.

    Nothing is written or sent: the plan runs in a transaction that is rolled back.
    """
    from tidings.journeys.planning import plan_journey

    runtime = _runtime()
    report = plan_journey(runtime, file, now=_now(now))
    console.print(f"[bold]{report.name}[/]: {report.entering} contacts would enter now")
    table = Table("step", "type", "would send", "held back", "deferred", "waiting")
    for row in report.steps:
        held = ", ".join(f"{k} {v}" for k, v in sorted(row.held.items())) or "-"
        table.add_row(row.step, row.type, str(row.sent), held, str(row.deferred), str(row.waiting))
    console.print(table)
    for note in report.notes:
        console.print(note)


@app.command("simulate")
def simulate_command(
    file: Path = typer.Argument(..., help="The journey file."),
    scenario: Path = typer.Option(..., "--scenario", "-s", help="The scenario YAML."),
) -> None:
    """Play a scenario (contacts, events, opens, clicks, orders on a timeline) against the
    journey in a scratch store with the real engine; print what each contact went through, and
    fail with a diff where the scenario's `expect` says otherwise."""
    from tidings.config import get_settings
    from tidings.journeys.simulate import load_scenario, simulate

    played = simulate(get_settings(), file, load_scenario(scenario))
    table = Table(
        "contact",
        "sent (step @ time)",
        "held",
        "reached",
        "goal",
        title=f"journey {played.journey}",
    )
    for name, outcome in played.contacts.items():
        table.add_row(
            name,
            ", ".join(f"{step} @ {at:%Y-%m-%d %H:%M}" for step, at in outcome.sent) or "-",
            ", ".join(f"{step}: {why}" for step, why in outcome.held) or "-",
            outcome.reached,
            f"{outcome.goal:%Y-%m-%d %H:%M}" if outcome.goal else "-",
        )
    console.print(table)
    if played.mismatches:
        console.print(f"[red]{len(played.mismatches)} expectation(s) not met ({scenario}):[/]")
        for contact, key, wanted, actual in played.mismatches:
            console.print(
                f"  {contact}.{key}: expected {wanted!r}, got {actual!r}", highlight=False
            )
        raise typer.Exit(1)
    if played.contacts:
        console.print(f"[green]ok[/] {scenario}: every expectation met", highlight=False)


@app.command("run")
def run(
    file: Path = typer.Argument(..., help="The journey file."),
    local: bool = typer.Option(False, "--local", help="In this process, even with a server."),
    prefect: bool = typer.Option(
        False, "--prefect", help="As a flow run, even without a server (a temporary one starts)."
    ),
    now: str | None = NOW,
) -> None:
    """Enrol, tick and send a journey now. With a Prefect server configured (PREFECT_API_URL)
    it runs as a flow run there; without one, in this process (no temporary server)."""
    from tidings.flows.prefect_env import prefect_server_url
    from tidings.journeys.runtime import Runtime

    if local and prefect:
        raise typer.BadParameter("choose --local or --prefect, not both")
    server = None if local else prefect_server_url()
    if local or not (prefect or server):
        from tidings.journeys.running import run_once

        summary = run_once(Runtime.from_settings(), file, progress=console, now=_now(now))
    else:
        console.print(
            f"a flow run on the Prefect server at {server} ..."
            if server
            else "starting a temporary Prefect server for one flow run (10-20 s) ...",
            highlight=False,
        )
        from tidings.flows.journeys import run_journey

        summary = run_journey(str(file.resolve()), now=now)
    print_summary(summary)
    exit_if_unsent([summary])


def print_summary(summary: dict[str, Any]) -> None:
    if summary.get("paused"):
        name = summary["journey"]
        console.print(
            f"journey {name} is paused: nothing was enrolled, advanced or sent "
            f"(`tidings journey resume {name}`)",
            highlight=False,
        )
        return
    table = Table("what", "count", title=f"journey {summary['journey']}", title_justify="left")
    for key in (
        "enrolled",
        "processed",
        "messages",
        "deferred",
        "completed",
        "exited",
        "sent",
        "failed",
        "retry",
    ):
        table.add_row(key, str(summary.get(key, 0)))
    for reason, n in sorted(summary.get("held", {}).items()):
        table.add_row(f"held: {reason}", str(n))
    console.print(table)
    print_failures(summary.get("failures") or [])


def print_failures(failures: list[dict[str, Any]]) -> None:
    """Each reason a message was not sent: how many, why, which contacts (a few each)."""
    from tidings.journeys.failures import failure_lines

    err = Console(stderr=True)
    for line in failure_lines(failures):
        err.print(f"[red]{line}[/]", highlight=False, soft_wrap=True)


def exit_if_unsent(summaries: list[dict[str, Any]]) -> None:
    """Exit 1 when a message failed or went back to the queue (the reasons were printed)."""
    failed = sum(int(s.get("failed") or 0) for s in summaries)
    retry = sum(int(s.get("retry") or 0) for s in summaries)
    if failed or retry:
        Console(stderr=True).print(
            f"[red]not everything was sent: {failed} failed, {retry} queued again[/]",
            highlight=False,
        )
        raise typer.Exit(1)


def print_outbox(folder: Path, *, limit: int = 8) -> None:
    """What the sandbox outbox channel wrote: one line per message, newest last."""
    files = (
        sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    )
    records = [json.loads(p.read_text()) for p in files]
    emails = [r for r in records if r.get("channel") == "email"]
    sms = [r for r in records if r.get("channel") == "sms"]
    console.print(f"{len(emails)} emails and {len(sms)} SMS in {folder}")
    table = Table("channel", "to", "subject / body")
    for record in emails[:limit] + sms[-limit:]:
        text = record.get("subject") if record["channel"] == "email" else record.get("body")
        table.add_row(record["channel"], str(record["to"]), str(text))
    console.print(table)


@app.command("tick")
def tick(
    name: str = typer.Argument(None, help="One journey (default: all)."), now: str | None = NOW
) -> None:
    """Advance due enrollments and send what they produced (what the scheduled flow does)."""
    from tidings.journeys.running import tick_all

    runtime = _loaded_runtime()
    summaries = tick_all(runtime, names=[name] if name else None, now=_now(now))
    for summary in summaries:
        print_summary(summary)
    exit_if_unsent(summaries)


@app.command("work")
def work_command(
    name: str = typer.Argument(..., help="Journey name."),
    reconcile_after: str = typer.Option(
        None, help="Reconcile messages in flight longer than this first (default: setting)."
    ),
) -> None:
    """Work through a journey until nothing is due: reconcile, advance, send (a local worker)."""
    from datetime import timedelta

    from tidings.journeys.running import work
    from tidings.segments.rules import parse_duration

    runtime = _loaded_runtime()
    seconds = parse_duration(reconcile_after or runtime.settings.reconcile_after)
    console.print("ready", highlight=False)
    summary = work(runtime, name, reconcile_after=timedelta(seconds=seconds), report=console)
    print_summary(summary)
    exit_if_unsent([summary])


@app.command("reconcile")
def reconcile_command(
    older_than: str = typer.Option(
        None, help="Only messages in flight longer than this (default TIDINGS_RECONCILE_AFTER)."
    ),
    sent: str = typer.Option(
        None, "--sent", help="Message ids (comma-separated) the relay's log shows as accepted."
    ),
    resend: str = typer.Option(
        None, "--resend", help="Message ids (comma-separated) to queue and send again."
    ),
) -> None:
    """Ask the providers about messages left in flight by a crash; requeue what they lack.

    What no provider can tell (SMTP) stays in flight and is listed; settle it with --sent or
    --resend."""
    from datetime import timedelta

    from tidings.journeys.reconcile import reconcile, resolve
    from tidings.segments.rules import parse_duration

    runtime = _runtime()
    if sent or resend:
        for ids_text, as_sent in ((sent, True), (resend, False)):
            if ids_text:
                ids = _message_ids(ids_text, "--sent" if as_sent else "--resend")
                done = resolve(runtime, ids, sent=as_sent)
                console.print(
                    f"{done} of {len(ids)} marked {'sent' if as_sent else 'to send again'} "
                    "(only messages still in flight are changed)"
                )
        return
    seconds = parse_duration(older_than or runtime.settings.reconcile_after)
    stats = reconcile(runtime, older_than=timedelta(seconds=seconds))
    console.print(
        f"checked {stats.checked}: {stats.sent} had been sent, {stats.requeued} requeued, "
        f"{stats.failed} failed, {stats.unknown} unknown (still in flight)"
    )
    if stats.unknown_ids:
        listed = ",".join(str(i) for i in stats.unknown_ids)
        console.print(
            f"unknown: {listed}\nfind them in the relay's log, then "
            f"`tidings journey reconcile --sent IDS` or `--resend IDS`"
        )


def _message_ids(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give message ids separated by commas, e.g. 12,15", param_hint=option
        ) from None


@app.command("status")
def status(name: str = typer.Argument(..., help="Journey name.")) -> None:
    """Where the contacts of a journey are, per version and step, and what was sent."""
    from tidings.journeys.running import journey_status

    info = journey_status(_runtime(), name)
    console.print(f"[bold]{name}[/]: {info['status']}, {len(info['versions'])} version(s)")
    table = Table("version", "step", "state", "contacts")
    for row in info["enrollments"]:
        table.add_row(row["version"], row["step"] or "-", row["status"], str(row["count"]))
    console.print(table)
    messages = Table("step", "variant", "channel", "status", "messages")
    for row in info["messages"]:
        messages.add_row(
            row["step"] or "-",
            row["variant"] or "-",
            row["channel"],
            row["status"],
            str(row["count"]),
        )
    console.print(messages)
    if info["experiments"]:  # the holdout gets no message: its size is here
        assigned = Table("experiment", "variant", "contacts assigned")
        for row in info["experiments"]:
            assigned.add_row(row["experiment"], row["variant"], str(row["contacts"]))
        console.print(assigned)
    for row in info["decisions"]:
        if row["status"] == "running":
            console.print(f"experiment {row['experiment']}: running", highlight=False)
            continue
        how = "by its fallback rule" if row["status"] == "fallback" else "by its rule"
        console.print(
            f"experiment {row['experiment']}: {row['winner'] or 'no winner (split kept)'} "
            f"{how} at {row['decided_at']}; {row['reason'] or ''}",
            highlight=False,
            soft_wrap=True,
        )


@app.command("pause")
def pause(name: str = typer.Argument(..., help="Journey name.")) -> None:
    """Stop advancing a journey; contacts stay where they are."""
    if not _runtime().engine.set_status(name, "paused"):
        console.print(f"[red]no journey named {name!r} is registered[/]")
        raise typer.Exit(1)
    console.print(f"{name} paused")


@app.command("resume")
def resume(name: str = typer.Argument(..., help="Journey name.")) -> None:
    """Continue a paused journey from where each contact stands."""
    if not _runtime().engine.set_status(name, "active"):
        console.print(f"[red]no journey named {name!r} is registered[/]")
        raise typer.Exit(1)
    console.print(f"{name} resumed")


@app.command("test-send")
def test_send_command(
    name: str = typer.Argument(..., help="The journey (its name, or its YAML file)."),
    step: str = typer.Option(..., "--step", help="The email or SMS step to send."),
    to: str = typer.Option(
        ..., "--to", help="Where to send it: addresses (or E.164 numbers), comma-separated."
    ),
    contact: str | None = typer.Option(
        None,
        "--contact",
        help="Render for this contact (external id, email or #id); default: the first sample "
        "contact of templates/samples.yaml.",
    ),
    variant: str | None = typer.Option(None, "--variant", help="The experiment variant."),
) -> None:
    """Send a step, rendered for a real or sample contact, to test addresses: marked as a test
    ([TEST] subject, X-Tidings-Test header), never in reports, caps, consent or enrollments."""
    from tidings.journeys.testsend import test_send

    results = test_send(
        _runtime(), journey=name, step=step, to=to, contact=contact, variant=variant
    )
    table = Table("test send", "to", "status", "locale", "subject / reason")
    for result in results:
        table.add_row(
            f"test-{result.id}",
            result.to,
            result.status,
            result.locale or "-",
            (result.subject if result.status == "sent" else result.error) or "-",
        )
    console.print(table)
    if any(result.status != "sent" for result in results):
        raise typer.Exit(1)


def post(
    name: str = typer.Argument(..., help="Event name, e.g. order.shipped."),
    contact: str = typer.Option(..., help="The contact's external_id or email."),
    properties: str = typer.Option("{}", help="Event properties as a JSON object."),
    key: str | None = typer.Option(None, help="Idempotency key (a retry with it is a no-op)."),
    occurred_at: datetime | None = typer.Option(None, help="When it happened (default: now)."),
    now: str | None = NOW,
) -> None:
    """Record an event now; transactional journeys it triggers send at once."""
    from tidings.journeys.running import find_contact
    from tidings.journeys.triggers import post_event

    try:
        props = json.loads(properties)
    except json.JSONDecodeError as exc:
        console.print(f"[red]--properties is not JSON: {exc}[/]")
        raise typer.Exit(2) from None
    if not isinstance(props, dict):
        console.print("[red]--properties must be a JSON object[/]")
        raise typer.Exit(2)
    runtime = _loaded_runtime()
    contact_id = find_contact(runtime, contact)
    outcome = post_event(
        runtime,
        contact_id=contact_id,
        name=name,
        properties=props,
        idempotency_key=key,
        source="cli",
        occurred_at=occurred_at.astimezone() if occurred_at else None,
        now=_now(now),
    )
    if outcome.duplicate:
        console.print("already recorded (same idempotency key): nothing done")
        return
    for journey, ids in outcome.enrollments.items():
        console.print(f"{journey}: {len(ids)} enrolled")
    console.print(
        f"sent {outcome.sent}, failed {outcome.failed}, woke {outcome.woken}"
        + (f", queued again {outcome.retry}" if outcome.retry else "")
    )
    print_failures(outcome.failures)
    exit_if_unsent([{"failed": outcome.failed, "retry": outcome.retry}])


@app.command("trigger")
def trigger(
    name: str = typer.Argument(..., help="The journey (its trigger is `type: api`)."),
    contact: list[str] | None = typer.Option(
        None, "--contact", "-c", help="External id, email or #id; repeat for more contacts."
    ),
    segment: str | None = typer.Option(None, "--segment", help="Everyone in this segment now."),
    file: Path | None = typer.Option(
        None,
        "--file",
        help="A CSV with a column external_id or email; its other columns are that contact's data.",
    ),
    data: str = typer.Option(
        "{}", "--data", help="JSON object every contact's templates get: {{ data.code }}."
    ),
    key: str | None = typer.Option(
        None, "--key", help="Idempotency key: the same key never enrols a contact twice."
    ),
    now: str | None = NOW,
) -> None:
    """Fire a `type: api` journey for contacts now: enrol them and send at once."""
    from tidings.errors import InputError
    from tidings.journeys.triggers import Target, segment_targets, trigger_journey
    from tidings.segments.live import drain

    err = Console(stderr=True)
    sources = [given for given in (contact, segment, file) if given]
    if len(sources) != 1:
        err.print(
            "[red]error:[/] name the contacts once: --contact ID ..., --segment S or --file F"
        )
        raise typer.Exit(2)
    common = _json_object(data, "--data")
    moment = _now(now)
    runtime = _loaded_runtime()
    try:
        if contact:
            targets = [Target(ref) for ref in contact]
        elif segment:
            targets = segment_targets(runtime, segment, now=moment)
        else:
            assert file is not None
            targets = _file_targets(file)
        outcome = trigger_journey(
            runtime, name, targets, data=common, key=key, source="cli", now=moment
        )
        drain(runtime.engine, now=moment)  # live segments moved by update_contact steps
    except InputError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(
        f"journey {name}: {outcome.named} named, {outcome.enrolled} enrolled"
        + (
            f", {outcome.already} already in (re-entry rule or same --key)"
            if outcome.already
            else ""
        )
        + f"; sent {outcome.sent}, failed {outcome.failed}"
        + (f", queued again {outcome.retry}" if outcome.retry else ""),
        highlight=False,
    )
    print_failures(outcome.failures)
    exit_if_unsent([{"failed": outcome.failed, "retry": outcome.retry}])


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=option) from None
    if not isinstance(value, dict):
        raise typer.BadParameter(
            'give a JSON object, e.g. \'{"code": "SPRING"}\'', param_hint=option
        )
    return value


def _file_targets(path: Path) -> list[Any]:
    """Targets from a CSV: the column ``external_id`` (or ``email``) names each contact; the
    other non-empty cells are its data."""
    import csv

    from tidings.errors import InputError
    from tidings.journeys.triggers import Target

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        by = next((c for c in ("external_id", "email") if c in columns), None)
        if by is None:
            found = ", ".join(columns) or "none"
            raise InputError(f"{path}: needs a column external_id or email (found: {found})")
        targets = []
        for line, row in enumerate(reader, start=2):
            values = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            ref = values.pop(by)
            if not ref:
                raise InputError(f"{path}:{line}: empty {by}")
            data = {
                k: v for k, v in values.items() if k and v and k not in ("external_id", "email")
            }
            targets.append(Target(ref, by=by, data=data))
    if not targets:
        raise InputError(f"{path}: no contacts in the file")
    return targets
