"""Reports on a seeded store (SQLite and PostgreSQL): every number against an independent
computation in Python from the facts the store was seeded with."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update
from statsmodels.stats.proportion import proportion_confint  # type: ignore[import-untyped]
from typer.testing import CliRunner

from tests.analytics.seeding import EXPERIMENT, T0, Facts, Msg, seed_store
from tidings import cli
from tidings.analytics import ArmCounts, Touch, attribute_all, decide, incremental_lift
from tidings.analytics import Conversion as AConversion
from tidings.analytics.attribution_run import run_attribution
from tidings.analytics.experiment_report import experiment_report
from tidings.analytics.html import render_html
from tidings.analytics.report import journey_report, wilson
from tidings.cli import app
from tidings.config import get_settings
from tidings.crm.models import (
    Assignment,
    Attribution,
    Contact,
    Conversion,
    Experiment,
    Journey,
    Message,
    MessageEvent,
)
from tidings.errors import InputError

runner = CliRunner()


def _has(m: Msg, kind: str, machine: bool | None = None) -> bool:
    return any(k == kind and (machine is None or mach == machine) for k, mach, _, _ in m.events)


def expected_steps(facts: Facts) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (step, variant), by hand: engagement counted per message, the one rule."""
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: defaultdict(int) | {"revenue": Decimal(0)}
    )
    by_id = {m.id: m for m in facts.messages}
    for m in facts.messages:
        row = out[(m.step, m.variant or "-")]
        row["messages"] += 1
        row["held"] += m.status == "held"
        if m.sent_at is None:
            continue
        row["sent"] += 1
        row["delivered"] += m.status == "delivered" or _has(m, "delivered")
        row["bounced"] += m.status == "bounced" or _has(m, "bounce")
        row["human_opens"] += _has(m, "open", False)
        row["machine_opens"] += _has(m, "open", True)
        row["clicks"] += _has(m, "click", False)
        row["unsubscribes"] += _has(m, "unsubscribe")
        row["complaints"] += _has(m, "complaint")
    for c in facts.conversions:
        if c.message is None:
            continue
        m = by_id[c.message]
        row = out[(m.step, m.variant or "-")]
        row["conversions"] += 1
        row["revenue"] += c.value
    return out


FIELDS = (
    "messages",
    "held",
    "sent",
    "delivered",
    "bounced",
    "human_opens",
    "machine_opens",
    "clicks",
    "unsubscribes",
    "complaints",
    "conversions",
)


def test_journey_report_matches_an_independent_count(store: Engine) -> None:
    facts = seed_store(store)
    with store.connect() as conn:
        report = journey_report(conn, "promo")
    want = expected_steps(facts)
    got = {(r.step, r.variant): r for r in report.steps if r.variant != "*"}
    assert set(got) == set(want) == {("hello", "A"), ("hello", "B"), ("reminder", "-")}
    for key, row in got.items():
        assert {f: getattr(row, f) for f in FIELDS} == {f: want[key][f] for f in FIELDS}, key
        assert row.revenue == want[key]["revenue"]
    # the seed has what the rule is about: duplicate human opens and machine-only opens
    hello = [m for m in facts.messages if m.step == "hello" and m.sent_at]
    assert any(sum(k == "open" and not mach for k, mach, _, _ in m.events) > 1 for m in hello)
    assert any(_has(m, "open", True) and not _has(m, "open", False) for m in hello)
    total = next(r for r in report.steps if r.step == "hello" and r.variant == "*")
    assert total.sent == got["hello", "A"].sent + got["hello", "B"].sent
    assert report.total.sent == sum(w["sent"] for w in want.values())
    assert report.steps[0].step == "hello"  # the journey's own order
    # rates: Wilson, as statsmodels computes it
    rate = got["hello", "A"].rate("clicks")
    low, high = proportion_confint(rate.successes, rate.n, alpha=0.05, method="wilson")
    assert rate.n == got["hello", "A"].sent
    assert (rate.low, rate.high) == pytest.approx((low, high))

    # arms: enrollments by assigned variant, their conversions and revenue
    arms = {a.name: a for a in report.arms}
    for variant in ("A", "B", "holdout"):
        contacts = [c for c, v in facts.assigned.items() if v == variant]
        convs = [c for c in facts.conversions if c.variant == variant]
        assert arms[variant].enrolled == len(contacts)
        assert arms[variant].conversions == len(convs)
        assert arms[variant].revenue == sum((c.value for c in convs), Decimal(0))
        assert arms[variant].revenue_sq == sum((c.value * c.value for c in convs), Decimal(0))
    assert sum(a.enrolled for a in report.arms) == len(facts.enrollments)
    # lift against the holdout
    assert [lr.baseline for lr in report.lifts] == ["holdout"]

    def arm(name: str, variants: set[str]) -> ArmCounts:
        n = sum(1 for v in facts.assigned.values() if v in variants)
        cs = [c for c in facts.conversions if c.variant in variants]
        return ArmCounts(
            name, n, len(cs), sum(c.value for c in cs), sum(c.value * c.value for c in cs)
        )

    lift = incremental_lift(arm("treated", {"A", "B"}), arm("holdout", {"holdout"}))
    assert report.lifts[0].lift.conversion.effect == pytest.approx(lift.conversion.effect)
    assert report.lifts[0].lift.conversion.p_value == pytest.approx(lift.conversion.p_value)
    assert lift.revenue is not None and report.lifts[0].lift.revenue is not None
    assert report.lifts[0].lift.revenue.ci_low == pytest.approx(lift.revenue.ci_low)
    # revenue per day
    days: dict[str, Decimal] = defaultdict(Decimal)
    for c in facts.conversions:
        days[c.at.date().isoformat()] += c.value
    got_days: dict[str, Decimal] = defaultdict(Decimal)
    for d in report.revenue_by_day:
        got_days[d.day] += d.revenue
    assert got_days == days
    # json and csv carry the same numbers
    doc = json.loads(json.dumps(report.to_dict()))
    a_row = next(s for s in doc["steps"] if s["step"] == "hello" and s["variant"] == "A")
    assert a_row["clicks"] == want["hello", "A"]["clicks"]
    assert a_row["rates"]["clicks"]["low"] == pytest.approx(low)
    assert len(report.csv_rows()) == len(report.steps) + 1


def test_wilson_against_statsmodels() -> None:
    for x, n in ((0, 10), (3, 10), (10, 10), (300, 10_000), (1, 1)):
        low, high = proportion_confint(x, n, alpha=0.05, method="wilson")
        r = wilson(x, n)
        assert (r.low, r.high) == pytest.approx((low, high), abs=1e-12)
    assert wilson(0, 0).value == 0


def test_the_control_group_is_an_arm_of_its_own(store: Engine) -> None:
    facts = seed_store(store, contacts=120, control_group=20)
    assert 10 < len(facts.control) < 40
    with store.begin() as conn:
        report = journey_report(conn, "promo")
        experiment = experiment_report(conn, EXPERIMENT, metric="conversion", record=False)
    arms = {a.name: a for a in report.arms}
    assert arms["control"].enrolled == len(facts.control)
    for variant in ("A", "B", "holdout"):
        contacts = {c for c, v in facts.assigned.items() if v == variant} - facts.control
        assert arms[variant].enrolled == len(contacts)
        convs = [c for c in facts.conversions if c.variant == variant]
        assert arms[variant].conversions == len(convs)
        assert Decimal(str(arms[variant].revenue)) == sum((c.value for c in convs), Decimal(0))
    control_convs = [c for c in facts.conversions if c.contact in facts.control]
    assert arms["control"].conversions == len(control_convs)
    assert [lr.baseline for lr in report.lifts] == ["holdout", "control"]
    treated = ArmCounts(
        "t",
        len(facts.enrollments) - len(facts.control),
        len(facts.conversions) - len(control_convs),
    )
    want = incremental_lift(treated, ArmCounts("c", len(facts.control), len(control_convs)))
    assert report.lifts[1].lift.conversion.effect == pytest.approx(want.conversion.effect)
    # the experiment leaves the control group out of every arm (it received nothing)
    conv = {a.name: a for a in experiment.conversion_arms}
    for variant in ("A", "B", "holdout"):
        contacts = {c for c, v in facts.assigned.items() if v == variant} - facts.control
        assert conv[variant].recipients == len(contacts)
    # the SRM check still counts every assignment (control contacts are assigned too)
    assert experiment.decision.srm is not None
    assert sum(experiment.decision.srm.observed.values()) == len(facts.assigned)


def test_unknown_journey_names_the_known_ones(store: Engine) -> None:
    seed_store(store, contacts=2)
    with store.connect() as conn, pytest.raises(InputError, match="known: other, promo"):
        journey_report(conn, "nope")


def test_experiment_report_decides_as_decide_does_with_the_srm_block(store: Engine) -> None:
    facts = seed_store(store)
    with store.begin() as conn:
        report = experiment_report(conn, EXPERIMENT, now=T0 + timedelta(days=5))
    arms = []
    for v in ("A", "B"):
        sent = [m for m in facts.messages if m.step == "hello" and m.variant == v and m.sent_at]
        arms.append(ArmCounts(v, len(sent), sum(_has(m, "click", False) for m in sent)))
    assigned = {v: sum(1 for x in facts.assigned.values() if x == v) for v in ("A", "B", "holdout")}
    want = decide(
        arms, metric="click", weights={"A": 45, "B": 45, "holdout": 10}, assignments=assigned
    )
    assert report.metric == "click" and report.rule == "sequential"
    assert report.arms == arms
    assert report.assigned == assigned
    assert report.decision.outcome == want.outcome
    assert report.decision.p_values == pytest.approx(want.p_values)
    assert report.decision.srm is not None and want.srm is not None
    assert report.decision.srm.p_value == pytest.approx(want.srm.p_value)
    assert dict(report.decision.srm.observed) == assigned
    assert report.decision.peeking_safe and "mSPRT" in report.decision.test
    # conversion metric, and the lift against the holdout, from assignments
    conv = {a.name: a for a in report.conversion_arms}
    for v in ("A", "B", "holdout"):
        cs = [c for c in facts.conversions if c.variant == v]
        assert (conv[v].recipients, conv[v].successes) == (assigned[v], len(cs))
        assert Decimal(str(conv[v].revenue)) == sum((c.value for c in cs), Decimal(0))
    assert report.lift is not None
    # the running p-value is stored for the next look, beside the weight
    with store.connect() as conn:
        variants = conn.scalar(select(Experiment.variants).where(Experiment.name == EXPERIMENT))
    assert variants is not None
    assert variants["A"] == {"weight": 50}
    assert variants["B"]["weight"] == 50
    assert variants["B"]["p_value"] == pytest.approx(want.p_values["B"])
    # the next look passes it back: never above the stored one
    with store.begin() as conn:
        again = experiment_report(conn, EXPERIMENT, metric="revenue")
    assert again.metric == "revenue" and again.decision.test


def test_sample_ratio_mismatch_blocks_and_writes_no_winner(store: Engine) -> None:
    seed_store(store, contacts=20)
    with store.begin() as conn:
        exp_id = conn.scalar(select(Experiment.id).where(Experiment.name == EXPERIMENT))
        extra = conn.execute(
            insert(Contact).returning(Contact.id),
            [{"external_id": f"X{i}", "attributes": {}} for i in range(300)],
        ).scalars()
        conn.execute(
            insert(Assignment),
            [
                {"experiment_id": exp_id, "contact_id": c, "variant": "A", "assigned_at": T0}
                for c in extra
            ],
        )
        report = experiment_report(conn, EXPERIMENT)
    d = report.decision
    assert d.outcome == "blocked" and d.winner is None
    assert d.srm is not None and d.srm.mismatch
    assert "sample-ratio mismatch" in d.reason
    with store.connect() as conn:
        assert conn.scalar(select(Experiment.winner)) is None


def _bulk_experiment(db: Engine, n: int = 2000, rates: tuple[float, float] = (0.05, 0.12)) -> None:
    """An experiment on a journey with a clear winner: n sends per arm, clicks at ``rates``."""
    with db.begin() as conn:
        jid = conn.execute(
            insert(Journey)
            .values(name="big", version_hash="h", definition={"steps": []})
            .returning(Journey.id)
        ).scalar_one()
        eid = conn.execute(
            insert(Experiment)
            .values(
                name="big.hello",
                journey_name="big",
                step_id="hello",
                variants={"A": {"weight": 1}, "B": {"weight": 1}},
                holdout_percent=0,
            )
            .returning(Experiment.id)
        ).scalar_one()
        contacts = (
            conn.execute(
                insert(Contact).returning(Contact.id, sort_by_parameter_order=True),
                [{"external_id": f"B{i}", "attributes": {}} for i in range(2 * n)],
            )
            .scalars()
            .all()
        )
        rows = []
        for i, c in enumerate(contacts):
            rows.append((c, "A" if i % 2 == 0 else "B", i // 2))
        conn.execute(
            insert(Assignment),
            [
                {"experiment_id": eid, "contact_id": c, "variant": v, "assigned_at": T0}
                for c, v, _ in rows
            ],
        )
        ids = (
            conn.execute(
                insert(Message).returning(Message.id, sort_by_parameter_order=True),
                [
                    {
                        "idempotency_key": f"b{c}",
                        "contact_id": c,
                        "journey_id": jid,
                        "step_id": "hello",
                        "variant": v,
                        "channel": "email",
                        "to_address": "x@example.com",
                        "status": "delivered",
                        "sent_at": T0,
                        "meta": {},
                    }
                    for c, v, _ in rows
                ],
            )
            .scalars()
            .all()
        )
        events = []
        for (_, v, k), mid in zip(rows, ids, strict=True):
            if k < n * rates[0 if v == "A" else 1]:
                events.append(
                    {
                        "message_id": mid,
                        "provider": "pixel",
                        "provider_event_id": f"c{mid}",
                        "type": "click",
                        "occurred_at": T0,
                        "machine": False,
                        "payload": {},
                    }
                )
        conn.execute(insert(MessageEvent), events)


def test_a_winner_is_written_once(store: Engine) -> None:
    _bulk_experiment(store)
    first = T0 + timedelta(days=3)
    with store.begin() as conn:
        report = experiment_report(conn, "big.hello", now=first)
    assert report.decision.outcome == "winner" and report.decision.winner == "B"
    assert report.recorded and report.winner == "B"
    with store.begin() as conn:
        later = experiment_report(conn, "big.hello", now=first + timedelta(days=1))
    assert not later.recorded and later.decided_at == first
    with store.connect() as conn:
        row = conn.execute(select(Experiment.winner, Experiment.decided_at, Experiment.status))
        assert tuple(row.one()) == ("B", first, "decided")
    # --no-record writes nothing at all
    with store.begin() as conn:
        conn.execute(update(Experiment).values(winner=None, decided_at=None))
        experiment_report(conn, "big.hello", record=False)
    with store.connect() as conn:
        assert conn.scalar(select(Experiment.winner)) is None


# -- attribution -------------------------------------------------------------------------------


def _attribution_rows(db: Engine) -> set[tuple[Any, ...]]:
    with db.connect() as conn:
        return {
            (r.conversion_id, r.message_id, r.model, round(r.weight, 12), Decimal(r.value))
            for r in conn.execute(select(Attribution))
        }


def _hand_example(db: Engine) -> tuple[int, list[int]]:
    """docs/analytics.md's worked example, in the store: an order of 100.00 at 12:00."""
    t = datetime(2026, 11, 20, 12, tzinfo=UTC)
    with db.begin() as conn:
        cid = conn.execute(
            insert(Contact).values(external_id="hand", attributes={}).returning(Contact.id)
        ).scalar_one()

        def message(key: str, sent: datetime) -> int:
            return conn.execute(
                insert(Message)
                .values(
                    idempotency_key=key,
                    contact_id=cid,
                    channel="email",
                    to_address="h@example.com",
                    status="delivered",
                    created_at=sent,
                    sent_at=sent,
                    meta={},
                )
                .returning(Message.id)
            ).scalar_one()

        m1 = message("h1", t - timedelta(hours=17))  # sent 17 h before
        m2 = message("h2", t - timedelta(days=3))  # clicked 9 h before
        m3 = message("h3", t - timedelta(days=3))  # clicked 1 h before
        m4 = message("h4", t - timedelta(hours=30))  # sent outside the 1-day window
        m5 = message("h5", t - timedelta(days=4))  # clicked after the order
        events = [
            (m2, "click", False, t - timedelta(hours=9)),
            (m3, "click", False, t - timedelta(hours=1)),
            (m5, "click", False, t + timedelta(hours=1)),
            (m1, "open", True, t - timedelta(hours=16)),  # machine open: no touch
            (m4, "click", True, t - timedelta(hours=2)),  # link scanner: no touch
        ]
        for n, (mid, kind, machine, at) in enumerate(events):
            conn.execute(
                insert(MessageEvent).values(
                    message_id=mid,
                    provider="pixel",
                    provider_event_id=f"h{n}",
                    type=kind,
                    occurred_at=at,
                    machine=machine,
                    payload={},
                )
            )
        conv = conn.execute(
            insert(Conversion)
            .values(
                idempotency_key="hand",
                contact_id=cid,
                kind="event",
                value=Decimal("100.00"),
                currency="USD",
                occurred_at=t,
            )
            .returning(Conversion.id)
        ).scalar_one()
    return conv, [m1, m2, m3]


def test_attribution_run_is_idempotent_and_sums_to_the_order_value(store: Engine) -> None:
    facts = seed_store(store)
    hand, (m1, m2, m3) = _hand_example(store)
    with store.begin() as conn:
        run = run_attribution(conn, until=datetime(2027, 1, 1, tzinfo=UTC))
    assert run.conversions == len(facts.conversions) + 1
    first = _attribution_rows(store)
    with store.begin() as conn:
        again = run_attribution(conn, until=datetime(2027, 1, 1, tzinfo=UTC))
    assert _attribution_rows(store) == first
    assert again.deleted == again.rows == run.rows
    per: dict[tuple[int, str], list[tuple[float, Decimal]]] = defaultdict(list)
    for conv, _, model, weight, value in first:
        per[conv, model].append((weight, value))
    values = {c.id: c.value for c in facts.conversions} | {hand: Decimal("100.00")}
    for (conv, _model), credits in per.items():
        assert sum(w for w, _ in credits) == pytest.approx(1.0)
        assert sum((v for _, v in credits), Decimal(0)) == values[conv]
    # the same rows from touches built by hand from the seed's facts
    touches: dict[int, list[Touch]] = defaultdict(list)
    for m in facts.messages + facts.others:
        if m.sent_at is None:
            continue
        touches[m.contact].append(Touch("send", m.sent_at, m.id))
        opens = [at for k, mach, _, at in m.events if k == "open" and not mach]
        if opens:
            touches[m.contact].append(Touch("open", min(opens), m.id))
        touches[m.contact].extend(
            Touch("click", at, m.id) for k, mach, _, at in m.events if k == "click" and not mach
        )
    want = set()
    for c in facts.conversions:
        conv = AConversion(at=c.at, value=c.value, currency=c.currency or "USD")
        for model, result in attribute_all(conv, touches[c.contact]).items():
            want |= {
                (c.id, cr.message_id, model, round(float(cr.weight), 12), cr.value)
                for cr in result.credits
            }
    assert {r for r in first if r[0] != hand} == want
    assert len({r[0] for r in want}) >= 5
    # the hand-worked example of docs/analytics.md
    linear = sorted((m, v) for c, m, model, _, v in first if c == hand and model == "linear")
    assert linear == [(m1, Decimal("33.34")), (m2, Decimal("33.33")), (m3, Decimal("33.33"))]
    position = sorted(
        (m, v) for c, m, model, _, v in first if c == hand and model == "position_based"
    )
    assert position == [(m1, Decimal("40.00")), (m2, Decimal("20.00")), (m3, Decimal("40.00"))]
    # touches are any journey's: the totals name both
    assert {t.journey for t in run.totals} >= {"promo", "other", "-"}
    # the report reads them per model and step
    with store.connect() as conn:
        report = journey_report(conn, "promo")
    assert {a.model for a in report.attribution} == {
        "first_touch",
        "last_touch",
        "linear",
        "time_decay",
        "position_based",
    }


def test_attribution_run_touches_only_its_period_and_models(store: Engine) -> None:
    hand, _ = _hand_example(store)
    seed_store(store, contacts=30)
    with store.begin() as conn:
        run_attribution(conn, until=datetime(2027, 1, 1, tzinfo=UTC))
    before = _attribution_rows(store)
    hand_rows = {r for r in before if r[0] == hand}
    with store.begin() as conn:  # the seed's period only, one model
        run = run_attribution(
            conn,
            since=datetime(2026, 11, 1, tzinfo=UTC),
            until=datetime(2026, 11, 15, tzinfo=UTC),
            models=("linear",),
        )
    after = _attribution_rows(store)
    assert hand_rows <= after
    assert after == before
    assert run.deleted == run.rows == sum(1 for r in before if r[2] == "linear" and r[0] != hand)


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def env(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TIDINGS_DATABASE_URL", store_url)
    monkeypatch.setattr(cli.console, "width", 250)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_reports(store: Engine, env: None, tmp_path: Path) -> None:
    facts = seed_store(store)
    html = tmp_path / "promo.html"
    result = runner.invoke(app, ["report", "journey", "promo", "--json", "--html", str(html)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    want = expected_steps(facts)
    row = next(s for s in doc["steps"] if s["step"] == "hello" and s["variant"] == "B")
    assert row["human_opens"] == want["hello", "B"]["human_opens"]
    assert "<svg" in html.read_text()
    result = runner.invoke(app, ["report", "journey", "promo", "--csv"])
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.strip().splitlines()
    assert header.startswith("step,variant,messages,held,sent,delivered,delivered_rate")
    assert len(lines) == 5  # hello A, B, total; reminder; the journey
    result = runner.invoke(app, ["report", "journey", "promo"])
    assert result.exit_code == 0 and "human opens" in result.stdout
    result = runner.invoke(app, ["report", "experiment", EXPERIMENT])
    assert result.exit_code == 0, result.output
    assert "sample-ratio check" in result.stdout and "mSPRT" in result.stdout
    result = runner.invoke(app, ["report", "experiment", EXPERIMENT, "--json", "--no-record"])
    assert json.loads(result.stdout)["srm"]["mismatch"] is False
    result = runner.invoke(
        app, ["attribution", "run", "--model", "linear", "--until", "2026-12-31"]
    )
    assert result.exit_code == 0, result.output
    assert f"{len(facts.conversions)} conversions" in result.stdout
    assert "promo" in result.stdout and "linear" in result.stdout


def test_cli_plan_parses_the_percent() -> None:
    result = runner.invoke(
        app,
        [
            "experiment",
            "plan",
            "--baseline",
            "0.03",
            "--mde",
            "10%",
            "--alpha",
            "0.05",
            "--power",
            "0.8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "53,211 recipients per arm" in result.stdout
    result = runner.invoke(app, ["experiment", "plan", "--baseline", "3%", "--mde", "0.3pp"])
    assert result.exit_code == 0 and "53,211 recipients per arm" in result.stdout  # the same
    assert "absolute mde" in result.stdout
    result = runner.invoke(app, ["experiment", "plan", "--baseline", "0.03", "--mde", "ten"])
    assert result.exit_code != 0


def test_html_has_the_four_charts(store: Engine) -> None:
    seed_store(store)
    with store.begin() as conn:
        run_attribution(conn, until=datetime(2027, 1, 1, tzinfo=UTC))
        page = render_html(journey_report(conn, "promo"))
    for name in ("funnel", "variants", "attribution", "revenue"):
        start = page.index(f'data-chart="{name}"')
        figure = page[start : page.index("</figure>", start)]
        assert "<svg" in figure and 'class="mark-' in figure, name
        assert "data-empty" not in figure
    assert 'class="mark-line' in page and 'class="mark-rule' in page
    assert "<script" not in page  # offline: no JavaScript, no CDN
