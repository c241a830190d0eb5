"""``tidings report``, ``tidings experiment plan``, ``tidings attribution run``.

    tidings report journey welcome [--json | --csv] [--html report.html]
    tidings report experiment welcome.hello [--rule sequential|fixed|bayesian] [--no-record]
    tidings experiment plan --baseline 0.03 --mde 10% --alpha 0.05 --power 0.8
    tidings attribution run [--model linear ...] [--since 2026-11-01 --until 2026-11-30]

See docs/analytics.md.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

if TYPE_CHECKING:
    from tidings.analytics.experiment_report import ExperimentReport
    from tidings.analytics.report import JourneyReport

report_app = typer.Typer(
    help="Reports: journeys per step and variant, experiments.", no_args_is_help=True
)
experiment_app = typer.Typer(help="A/B experiments: planning.", no_args_is_help=True)
attribution_app = typer.Typer(help="Attribution of conversions to messages.", no_args_is_help=True)


def _console() -> Any:
    from tidings.cli import console

    return console


def _input_error(message: str, hint: str | None = None) -> Exception:
    from tidings.errors import InputError

    return InputError(message, hint=hint)


@report_app.command("journey")
def report_journey(
    name: str = typer.Argument(..., help="The journey's name."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print one CSV row per step and variant."),
    html: Path | None = typer.Option(None, "--html", help="Also write the HTML report here."),
) -> None:
    """Per step and variant: sent, delivered, bounced, human opens, machine opens, clicks,
    unsubscribes, complaints, conversions, revenue; every rate with its 95% interval."""
    from tidings.analytics.report import journey_report
    from tidings.crm.db import make_engine

    if as_json and as_csv:
        raise _input_error("--json and --csv: choose one")
    engine = make_engine()
    with engine.connect() as conn:
        report = journey_report(conn, name)
    if html is not None:
        from tidings.analytics.html import render_html

        html.write_text(render_html(report), encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    elif as_csv:
        rows = report.csv_rows()
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_journey(report)
    if html is not None:
        target = sys.stderr if (as_json or as_csv) else sys.stdout
        print(f"HTML report: {html.resolve()}", file=target)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def print_journey(report: JourneyReport) -> None:
    from rich.table import Table

    from tidings.analytics.report import COUNTS

    console = _console()
    console.print(
        f"journey [bold]{report.journey}[/] ({report.versions} version(s)); rates over sent, "
        "95% Wilson intervals; opens and clicks: messages with a human open or click",
        highlight=False,
    )
    table = Table(show_lines=False)
    table.add_column("step")
    table.add_column("variant")
    for c in COUNTS:
        table.add_column(c.replace("_", " "), justify="right")
    table.add_column("revenue", justify="right")
    for row in [*report.steps, report.total]:
        cells = [row.step, row.variant]
        for c in COUNTS:
            n = getattr(row, c)
            if c == "sent":
                cells.append(f"{n:,}")
            else:
                r = row.rate(c)
                cells.append(f"{n:,}\n{_pct(r.value)} [{_pct(r.low)}, {_pct(r.high)}]")
        cells.append(str(row.revenue))
        table.add_row(*cells, style="bold" if row.variant == "*" else None)
    console.print(table)
    arms = Table(title="arms (enrollments)")
    for col in ("arm", "enrolled", "conversions", "rate [95% CI]", "revenue", "per enrollment"):
        arms.add_column(col, justify="left" if col == "arm" else "right")
    for a in report.arms:
        r = a.conversion_rate
        arms.add_row(
            a.name,
            f"{a.enrolled:,}",
            f"{a.conversions:,}",
            f"{_pct(r.value)} [{_pct(r.low)}, {_pct(r.high)}]",
            str(a.revenue),
            f"{a.revenue_per_enrollment:.2f}",
        )
    console.print(arms)
    for lr in report.lifts:
        conv = lr.lift.conversion
        text = (
            f"lift against the {lr.baseline} ({lr.treated}): conversion "
            f"{100 * conv.effect:+.2f} pp [{100 * conv.ci_low:+.2f}, {100 * conv.ci_high:+.2f}], "
            f"p={conv.p_value:.3g}"
        )
        if lr.lift.revenue is not None:
            rev = lr.lift.revenue
            text += (
                f"; revenue per contact {rev.effect:+.2f} [{rev.ci_low:+.2f}, {rev.ci_high:+.2f}]"
                f", p={rev.p_value:.3g}"
            )
        console.print(text, highlight=False)
    if report.attribution:
        att = Table(title="attribution (tidings attribution run)")
        for col in ("model", "step", "conversions", "weight", "revenue"):
            att.add_column(col)
        for x in report.attribution:
            att.add_row(x.model, x.step, str(x.conversions), f"{x.weight:.2f}", str(x.value))
        console.print(att)


@report_app.command("experiment")
def report_experiment(
    name: str = typer.Argument(..., help="The experiment's name (default name: journey.step)."),
    rule: str | None = typer.Option(
        None,
        help="sequential (mSPRT, valid under daily looks), fixed or bayesian "
        "(default: the experiment's rule, else sequential).",
    ),
    metric: str | None = typer.Option(
        None, help="open, click, conversion or revenue (default: the experiment's metric)."
    ),
    alpha: float | None = typer.Option(
        None, help="Significance level (default: the experiment's alpha, else 0.05)."
    ),
    record: bool = typer.Option(
        True, "--record/--no-record", help="Store the running p-values and the winner (once)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """The decision, the test, the p-value or probability, the sample-ratio check, the lift."""
    from tidings.analytics.experiment_report import METRICS, RULES, experiment_report
    from tidings.crm.db import make_engine

    if rule is not None and rule not in RULES:
        raise _input_error(f"--rule {rule}: choose one of {', '.join(RULES)}")
    if metric is not None and metric not in METRICS:
        raise _input_error(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    engine = make_engine()
    with engine.begin() as conn:
        report = experiment_report(
            conn,
            name,
            rule=cast(Any, rule),
            metric=cast(Any, metric),
            alpha=alpha,
            record=record,
        )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        print_experiment(report)


def print_experiment(report: ExperimentReport) -> None:
    from rich.table import Table

    console = _console()
    d = report.decision
    console.print(
        f"experiment [bold]{report.name}[/] (journey {report.journey}, step {report.step}); "
        f"metric {report.metric}; rule {report.rule}",
        highlight=False,
    )
    table = Table()
    for col in ("arm", "recipients", "successes", "rate", "revenue/recipient", "p", "p adj."):
        table.add_column(col, justify="left" if col == "arm" else "right")
    pv = {c.treatment: c for c in d.comparisons}
    for a in report.arms:
        c = pv.get(a.name)
        table.add_row(
            a.name,
            f"{a.recipients:,}",
            f"{a.successes:,}",
            _pct(a.rate),
            f"{a.revenue_mean:.2f}",
            f"{c.p_value:.3g}" if c else ("control" if a is report.arms[0] else "-"),
            f"{c.p_adjusted:.3g}" if c else "",
        )
    console.print(table)
    console.print(f"test: {d.test or '-'}", highlight=False)
    if d.probabilities:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in d.probabilities.items())
        console.print(f"probability to be best: {shown} (threshold {d.threshold})")
    srm = d.srm
    if srm is not None:
        verdict = "[red]MISMATCH: decision blocked[/]" if srm.mismatch else "[green]ok[/]"
        console.print(f"sample-ratio check: {verdict}; {srm.reason}", highlight=False)
    label = {"winner": "[green]winner[/]", "blocked": "[red]blocked[/]"}.get(
        d.outcome, "[yellow]inconclusive[/]"
    )
    console.print(f"decision: {label} {d.winner or ''}", highlight=False)
    console.print(d.reason, highlight=False, soft_wrap=True)
    if report.lift is not None:
        conv = report.lift.conversion
        text = (
            f"lift against the holdout: conversion {100 * conv.effect:+.2f} pp "
            f"[{100 * conv.ci_low:+.2f}, {100 * conv.ci_high:+.2f}], p={conv.p_value:.3g}"
        )
        if report.lift.revenue is not None:
            rev = report.lift.revenue
            text += (
                f"; revenue per contact {rev.effect:+.2f} [{rev.ci_low:+.2f}, {rev.ci_high:+.2f}]"
            )
        console.print(text, highlight=False)
    how = "by its fallback rule" if report.status == "fallback" else "by its rule"
    if report.recorded:
        console.print(f"recorded: winner {report.winner} at {report.decided_at:%Y-%m-%d %H:%M}")
    elif report.decided_at is not None:
        console.print(
            f"decided earlier {how}: winner {report.winner or '(none: split kept)'} at "
            f"{report.decided_at:%Y-%m-%d %H:%M} (not re-decided)",
            highlight=False,
        )
        if report.decision_reason:
            console.print(f"why: {report.decision_reason}", highlight=False, soft_wrap=True)


def parse_mde(value: str) -> tuple[float, bool]:
    """``10%`` -> (0.10, relative); ``0.1`` -> (0.1, relative); ``+0.5pp`` -> (0.005, absolute).

    >>> parse_mde("10%"), parse_mde("0.5pp")
    ((0.1, True), (0.005, False))
    """
    text = value.strip().lower().replace(" ", "")
    try:
        if text.endswith("pp"):
            return float(text[:-2]) / 100, False
        if text.endswith("%"):
            return float(text[:-1]) / 100, True
        return float(text), True
    except ValueError:
        raise _input_error(
            f"--mde {value!r}: write a relative lift (10% or 0.1) or points (0.5pp)"
        ) from None


def _fraction(value: str, option: str) -> float:
    text = value.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise _input_error(f"{option} {value!r}: write a rate such as 0.03 or 3%") from None


@experiment_app.command("plan")
def experiment_plan(
    baseline: str = typer.Option(..., help="Current rate: 0.03 or 3%."),
    mde: str = typer.Option(
        ..., help="Minimum detectable effect: relative (10% or 0.1) or absolute (0.5pp)."
    ),
    alpha: float = typer.Option(0.05, help="Significance level (two-sided)."),
    power: str = typer.Option("0.8", help="Power: 0.8 or 80%."),
    arms: int = typer.Option(2, help="Arms (variants), to give the total."),
) -> None:
    """Recipients per arm for a two-sided two-proportion test (the fixed rule)."""
    from tidings.analytics.stats import sample_size

    base = _fraction(baseline, "--baseline")
    effect, relative = parse_mde(mde)
    pw = _fraction(power, "--power")
    try:
        n = sample_size(base, effect, alpha=alpha, power=pw, relative=relative)
    except ValueError as exc:
        raise _input_error(str(exc)) from None
    target = base * (1 + effect) if relative else base + effect
    console = _console()
    console.print(f"{n:,} recipients per arm", highlight=False)
    console.print(
        f"baseline {_pct(base)} -> {100 * target:.3g}% ({'relative' if relative else 'absolute'}"
        f" mde {mde}), alpha {alpha:g} two-sided, power {pw:g}; {arms} arms: {n * arms:,} "
        "recipients in all. This is the fixed-horizon size; the default sequential rule may "
        "stop earlier on a larger effect and needs more for an effect near the mde.",
        highlight=False,
        soft_wrap=True,
    )


def _moment(value: str | None, option: str, *, end: bool = False) -> datetime | None:
    """An ISO date or time; a bare date as ``--until`` means the end of that day."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _input_error(f"{option} {value!r}: write a date (2026-11-01) or ISO time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and len(value.strip()) == 10:
        moment += timedelta(days=1)
    return moment


def _duration(value: str, option: str) -> timedelta:
    from tidings.segments.rules import parse_duration

    try:
        return timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise _input_error(f"{option}: {exc}") from None


@attribution_app.command("run")
def attribution_run(
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="A model (repeatable; default: all five)."
    ),
    since: str | None = typer.Option(None, help="Conversions from this date or time (UTC)."),
    until: str | None = typer.Option(
        None, help="Conversions before this time; a date includes the whole day (default: now)."
    ),
    # The windows and half-life default to AttributionSettings (1, 3 and 7 days; 1 day); they
    # become the settings TIDINGS_ATTRIBUTION_SEND_WINDOW, _OPEN_WINDOW, _CLICK_WINDOW and
    # _HALF_LIFE when attribution gets its place in tidings/config.py.
    send_window: str = typer.Option("1 day", help="Look-back window of a send."),
    open_window: str = typer.Option("3 days", help="Look-back window of a human open."),
    click_window: str = typer.Option("7 days", help="Look-back window of a click."),
    half_life: str = typer.Option("1 day", help="Half-life of the time_decay model."),
    currency: str = typer.Option("USD", help="Currency of conversions that name none."),
) -> None:
    """Recompute attributions for the conversions of a period (delete and write, one
    transaction); print the totals per journey and model."""
    from rich.table import Table

    from tidings.analytics.attribution import MODELS, AttributionSettings
    from tidings.analytics.attribution_run import run_attribution
    from tidings.crm.db import make_engine

    models = model or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise _input_error(f"--model {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    settings = AttributionSettings(
        send_window=_duration(send_window, "--send-window"),
        open_window=_duration(open_window, "--open-window"),
        click_window=_duration(click_window, "--click-window"),
        half_life=_duration(half_life, "--half-life"),
    )
    engine = make_engine()
    with engine.begin() as conn:
        run = run_attribution(
            conn,
            since=_moment(since, "--since"),
            until=_moment(until, "--until", end=True),
            models=cast(Any, tuple(dict.fromkeys(models))),
            settings=settings,
            currency=currency,
        )
    console = _console()
    period = f"{run.since.isoformat() if run.since else 'the beginning'} .. {run.until.isoformat()}"
    console.print(
        f"{run.conversions:,} conversions ({run.value} in all) from {period}; "
        f"{run.deleted:,} rows replaced by {run.rows:,}",
        highlight=False,
    )
    table = Table(title="attributed per journey and model")
    for col in ("journey", "model", "conversions", "revenue"):
        table.add_column(col, justify="left" if col in {"journey", "model"} else "right")
    for t in run.totals:
        table.add_row(t.journey, t.model, f"{t.conversions:,}", str(t.value))
    console.print(table)
    for m, n in run.unattributed.items():
        if n:
            console.print(
                f"{m}: {n:,} conversion(s) had no touch inside the windows", highlight=False
            )
