"""Auto-winner: a test share is sent, the decision is taken at a time or sample size, the rest
receives the winner; an inconclusive test falls back to the configured rule.

Before: ``experiment:`` had no ``auto_winner``, no ``rule`` and no ``metric: revenue``; every
contact of the step was in the test and nobody ever received a winner.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session

from tests.journeys.test_engine import SETTINGS, T0, add_contacts, people
from tidings.analytics.experiment_report import experiment_report
from tidings.config import Settings
from tidings.crm.models import Assignment, Enrollment, Experiment, Message, MessageEvent
from tidings.errors import InputError
from tidings.journeys.engine import JourneyEngine
from tidings.journeys.experiments import in_test
from tidings.journeys.loader import load_text
from tidings.journeys.runtime import Runtime

N = 400
NAME = "launch.hello"


def journey_text(auto: str, *, rule: str = "fixed", metric: str = "click") -> str:
    return f"""
name: launch
trigger: {{type: api}}
steps:
  - id: hello
    type: email
    template: welcome
    experiment:
      variants: [{{name: A, weight: 50}}, {{name: B, weight: 50}}]
      metric: {metric}
      rule: {rule}
      auto_winner: {auto}
"""


@pytest.fixture
def engine(store: Engine) -> JourneyEngine:
    return JourneyEngine(db=store, settings=SETTINGS)


def start(engine: JourneyEngine, auto: str, **kw: str) -> tuple[dict[str, int], object]:
    ids = add_contacts(engine.db, people(N))
    version = engine.register(load_text(journey_text(auto, **kw), source="launch.yaml"))
    engine.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    return ids, version


def sent_by_variant(store: Engine) -> Counter[str | None]:
    with Session(store) as session:
        return Counter(session.scalars(select(Message.variant)))


def deliver_and_click(store: Engine, click_rate: dict[str, float]) -> None:
    """Mark every message sent, and give the first ``rate`` of each variant's a human click
    (the clicks so far are replaced)."""
    with Session(store) as session, session.begin():
        session.execute(delete(MessageEvent))
        session.execute(update(Message).values(status="sent", sent_at=T0))
        rows = session.execute(select(Message.id, Message.variant).order_by(Message.id)).all()
        seen: Counter[str] = Counter()
        totals = Counter(v for _, v in rows)
        for mid, variant in rows:
            seen[variant] += 1
            if seen[variant] <= click_rate.get(variant, 0) * totals[variant]:
                session.execute(
                    insert(MessageEvent).values(
                        message_id=mid,
                        provider="pixel",
                        provider_event_id=f"c{mid}",
                        type="click",
                        occurred_at=T0 + timedelta(minutes=30),
                        machine=False,
                    )
                )


def experiment_row(store: Engine) -> tuple[str, str | None, str | None]:
    with Session(store) as session:
        row = session.execute(
            select(Experiment.status, Experiment.winner, Experiment.decision_reason).where(
                Experiment.name == NAME
            )
        ).one()
    return row.status, row.winner, row.decision_reason


def test_the_test_share_is_sent_the_rest_waits_then_receives_the_winner(
    engine: JourneyEngine, store: Engine
) -> None:
    ids, _ = start(engine, "{test_share: 30, decide_after: 4 hours}")
    tested = {c for c in ids.values() if in_test(NAME, c, 30)}
    assert 0.2 * N < len(tested) < 0.4 * N

    stats = engine.tick("launch", now=T0)
    assert sum(sent_by_variant(store).values()) == len(tested)  # only the test share
    assert stats.awaiting_winner == {"hello": N - len(tested)}
    with Session(store) as session:
        assigned = set(session.scalars(select(Assignment.contact_id)))
        parked = session.scalars(
            select(func.min(Enrollment.next_due_at)).where(Enrollment.step_id == "hello")
        ).one()
    assert assigned == tested  # the rest is not in the experiment
    assert parked is not None

    engine.tick("launch", now=T0 + timedelta(hours=1))  # before the deadline: nothing moves
    assert sum(sent_by_variant(store).values()) == len(tested)
    assert experiment_row(store)[0] == "running"

    deliver_and_click(store, {"A": 0.05, "B": 0.60})
    engine.tick("launch", now=T0 + timedelta(hours=4))
    status, winner, reason = experiment_row(store)
    assert (status, winner) == ("decided", "B")
    assert reason and reason.startswith("decided when 4 hours after the first send: B beats A")
    by_variant = sent_by_variant(store)
    tested_b = sum(1 for c in tested if _variant_of(store, c) == "B")
    assert by_variant["B"] == tested_b + (N - len(tested))  # the rest got B, at this tick
    assert by_variant["A"] == len(tested) - tested_b
    with Session(store) as session:
        assert session.scalar(select(func.count()).select_from(Assignment)) == len(tested)
        active = session.scalar(
            select(func.count()).select_from(Enrollment).where(Enrollment.status == "active")
        )
    assert active == 0

    with store.begin() as conn:  # the experiment's arms are the test share only
        report = experiment_report(conn, NAME, record=False)
    assert sum(a.recipients for a in report.arms) == len(tested)
    assert report.status == "decided" and report.winner == "B"


def _variant_of(store: Engine, contact_id: int) -> str:
    with Session(store) as session:
        return str(
            session.scalar(select(Assignment.variant).where(Assignment.contact_id == contact_id))
        )


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [
        ("", "A"),
        ("fallback: B", "B"),
        ("fallback: best_observed", "B"),
        ("fallback: keep_split", None),
    ],
)
def test_an_inconclusive_test_falls_back_to_the_configured_rule(
    engine: JourneyEngine, store: Engine, fallback: str, expected: str | None
) -> None:
    ids, _ = start(engine, "{test_share: 30, decide_after: 2 hours, " + fallback + "}")
    engine.tick("launch", now=T0)
    deliver_and_click(store, {"A": 0.10, "B": 0.12})  # no real difference at this size
    engine.tick("launch", now=T0 + timedelta(hours=2))
    status, winner, reason = experiment_row(store)
    assert (status, winner) == ("fallback", expected)
    assert reason and reason.startswith("inconclusive when 2 hours after the first send")
    rest = N - sum(1 for c in ids.values() if in_test(NAME, c, 30))
    with Session(store) as session:
        rest_variants = Counter(
            session.scalars(
                select(Message.variant).where(
                    Message.contact_id.not_in(select(Assignment.contact_id))
                )
            )
        )
    assert sum(rest_variants.values()) == rest  # the rest is sent, whatever the fallback
    if expected is None:  # keep_split: the rest is split by the weights
        assert set(rest_variants) == {"A", "B"}
    else:
        assert rest_variants == {expected: rest}


def test_the_decision_is_taken_once_every_arm_has_its_sample(
    engine: JourneyEngine, store: Engine
) -> None:
    start(engine, "{test_share: 50, min_recipients: 60}", rule="sequential")
    engine.tick("launch", now=T0)
    engine.tick("launch", now=T0 + timedelta(minutes=5))  # queued, not sent: no sample yet
    assert experiment_row(store)[0] == "running"
    deliver_and_click(store, {"A": 0.02, "B": 0.9})
    engine.tick("launch", now=T0 + timedelta(minutes=10))
    status, winner, reason = experiment_row(store)
    assert (status, winner) == ("decided", "B")
    assert reason and "every arm reached 60 recipients" in reason
    assert sum(sent_by_variant(store).values()) == N  # the rest went out at the same tick


def test_a_sample_ratio_mismatch_falls_back_and_says_why(
    engine: JourneyEngine, store: Engine
) -> None:
    start(engine, "{test_share: 40, decide_after: 1 hour}")
    engine.tick("launch", now=T0)
    with Session(store) as session, session.begin():  # a broken assignment: most B's lost
        lost = session.scalars(select(Assignment.id).where(Assignment.variant == "B")).all()
        session.execute(
            update(Assignment)
            .where(Assignment.id.in_(lost[: len(lost) * 2 // 3]))
            .values(variant="A")
        )
    deliver_and_click(store, {"A": 0.1, "B": 0.9})
    engine.tick("launch", now=T0 + timedelta(hours=1))
    status, winner, reason = experiment_row(store)
    assert (status, winner) == ("fallback", "A")
    assert reason and reason.startswith("blocked") and "sample-ratio" in reason


def test_a_decided_experiment_is_not_decided_again(engine: JourneyEngine, store: Engine) -> None:
    start(engine, "{test_share: 30, decide_after: 1 hour}")
    engine.tick("launch", now=T0)
    deliver_and_click(store, {"A": 0.05, "B": 0.05})
    engine.tick("launch", now=T0 + timedelta(hours=1))
    first = experiment_row(store)
    deliver_and_click(store, {"A": 0.0, "B": 1.0})
    engine.tick("launch", now=T0 + timedelta(hours=9))
    assert experiment_row(store) == first


@pytest.mark.parametrize(
    ("auto", "message"),
    [
        ("{test_share: 20}", "auto_winner needs decide_after"),
        ("{test_share: 120, decide_after: 1 hour}", "test_share"),
        ("{test_share: 20, decide_after: 1 hour, fallback: C}", "fallback 'C' is neither"),
        ("{test_share: 20, min_recipients: 3}", "min_recipients"),
    ],
)
def test_a_bad_auto_winner_names_the_file_line_and_key(auto: str, message: str) -> None:
    with pytest.raises(InputError) as error:
        load_text(journey_text(auto), source="launch.yaml")
    text = str(error.value)
    assert message in text
    assert "launch.yaml:" in text


def test_plan_shows_the_rest_waiting_for_the_decision(store_url: str, tmp_path: Path) -> None:
    from tidings.journeys.planning import plan_journey
    from tidings.journeys.triggers import post_event

    runtime = Runtime.from_settings(
        Settings(
            database_url=store_url,
            outbox_dir=tmp_path / "outbox",
            secret_key="plan",
            frequency_cap="off",
            quiet_hours="off",
        )
    )
    ids = add_contacts(runtime.db, people(60))
    file = tmp_path / "launch.yaml"
    text = journey_text("{test_share: 25, decide_after: 6 hours}")
    file.write_text(text.replace("trigger: {type: api}", "trigger: {type: event, event: x}"))
    for contact in ids.values():
        post_event(runtime, contact_id=contact, name="x", now=T0)
    plan = plan_journey(runtime, file, now=T0)
    (hello,) = plan.steps
    assert hello.sent == 60  # the test share first, the rest at the decision
    assert hello.first is not None and hello.last is not None
    assert hello.last - hello.first >= timedelta(hours=6)
    rest = 60 - sum(1 for c in ids.values() if in_test(NAME, c, 25))
    assert any(f"auto-winner: {rest} waited for the decision" in n for n in plan.notes)
