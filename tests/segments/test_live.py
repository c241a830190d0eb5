"""Live segments: inputs of a rule, memberships that follow the API's writes at once, entries
that trigger journeys at once (a re-entry within one tick is seen), the full refresh as check,
and the ``wait_for_segment`` step, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tests.conftest import FIXTURE_PROJECT
from tidings.config import Settings
from tidings.crm.models import Contact, Enrollment, SegmentMembership
from tidings.journeys.running import tick_all
from tidings.journeys.runtime import Runtime
from tidings.segments import core as c
from tidings.segments.inputs import Change, inputs
from tidings.segments.live import drain, pending, sweep
from tidings.segments.live import update as live_update
from tidings.segments.rules import Segment
from tidings.web.apikeys import create_key
from tidings.web.app import create_app


def core_of(rule: dict[str, Any]) -> c.Core:
    return c.to_core(Segment.model_validate({"name": "x", "rule": rule}).rule)


# -- what a rule reads -------------------------------------------------------------------------


def test_inputs_of_each_kind_of_rule() -> None:
    got = inputs(
        core_of(
            {
                "all": [
                    {"attribute": "plan", "eq": "pro"},
                    {"attribute": "address.city", "eq": "Berlin"},
                    {"attribute": "locale", "eq": "de"},
                    {"event": "cart.updated", "where": {"total": {"gt": 10}}},
                    {"orders": {"count": {"gte": 2}}},
                    {"consent": {"channel": "email"}},
                ]
            }
        )
    )
    assert got.events == {"cart.updated"}
    assert got.attributes == {"plan", "address", "locale", "email"}
    assert got.orders and got.consents and got.suppressions
    assert not got.relative_time and not got.engagement
    assert got.live and got.swept == ["suppressions"]
    assert got.affected_by(Change.event("cart.updated"))
    assert not got.affected_by(Change.event("page.viewed"))
    assert got.affected_by(Change.contact(frozenset({"plan"}), consents=False))
    assert not got.affected_by(Change.contact(frozenset({"shoe_size"}), consents=False))
    assert got.affected_by(Change(orders=True))


def test_time_windows_and_engagement_need_the_sweep() -> None:
    windowed = inputs(core_of({"event": "cart.updated", "within": "1 hour"}))
    assert windowed.live and windowed.relative_time and windowed.swept == ["time window"]
    older = inputs(core_of({"attribute": "created_at", "older_than": "30 days"}))
    assert older.relative_time
    spend = inputs(core_of({"orders": {"last_order": {"within": "30 days"}}}))
    assert spend.orders and spend.relative_time
    opened = inputs(core_of({"opened": {"journey": "welcome"}}))
    assert opened.engagement and not opened.live and opened.swept == ["engagement"]
    plain = inputs(core_of({"attribute": "signup", "gte": "2026-01-01"}))
    assert not plain.relative_time and plain.swept == []


def test_inputs_of_the_newer_operators() -> None:
    pattern = inputs(core_of({"event": "checkout.*", "count": {"gte": 2}}))
    assert pattern.affected_by(Change.event("checkout.started"))
    assert not pattern.affected_by(Change.event("cart.updated"))
    last = inputs(core_of({"last_event": "cart.updated", "where": {"status": "open"}}))
    assert last.events == {"cart.updated"} and last.live and last.swept == []
    held = inputs(core_of({"has_been": {"attribute": "plan", "eq": "pro", "for": "7 days"}}))
    assert held.attributes == {"plan"} and held.swept == ["time window"]
    assert held.affected_by(Change.contact(frozenset({"plan"}), consents=False))
    bucket = inputs(core_of({"sample": {"percent": 10, "seed": "s"}}))
    assert bucket.affected_by(Change.contact(frozenset({"external_id"}), consents=False))
    assert not bucket.affected_by(Change.contact(frozenset({"plan"}), consents=False))


def test_an_unknown_node_means_full_refresh_only() -> None:
    @dataclass(frozen=True)
    class FutureOperator:
        name: str

    got = inputs(c.All((c.Compare(c.Column("locale"), "eq", "de"), FutureOperator("x"))))  # type: ignore[arg-type]
    assert got.unknown == {"FutureOperator"}
    assert not got.live
    assert not got.affected_by(Change.contact())
    assert got.swept == ["unknown rule FutureOperator"]


# -- through the API, on both stores -------------------------------------------------------------

SEGMENTS = {
    "pro": "name: pro\nrule: {attribute: plan, eq: pro}\n",
    "buyers": "name: buyers\nlive: true\nrule: {orders: {count: {gte: 2}}}\n",
    "carts": "name: carts\nlive: true\nrule: {event: cart.updated, count: {gte: 2}}\n",
    "recent": "name: recent\nlive: true\nrule: {event: cart.updated, within: 1 hour}\n",
}
PRO_WELCOME = """
name: pro_welcome
trigger: {type: segment, segment: pro}
settings: {reentry: always}
steps:
  - {id: hello, type: email, template: welcome}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "segments").mkdir(parents=True)
    (root / "journeys").mkdir()
    (root / "templates").symlink_to(FIXTURE_PROJECT / "templates")
    for name, text in SEGMENTS.items():
        (root / "segments" / f"{name}.yaml").write_text(text)
    (root / "journeys" / "pro_welcome.yaml").write_text(PRO_WELCOME)
    return root


@pytest.fixture
def settings(store_url: str, project: Path, tmp_path: Path) -> Settings:
    return Settings(
        database_url=store_url,
        project_dir=project,
        outbox_dir=str(tmp_path / "outbox"),
        secret_key="test-secret",
        frequency_cap="off",
        quiet_hours="off",
        redis_url=None,
    )


@dataclass
class Live:
    runtime: Runtime
    client: TestClient
    tmp: Path

    def contact(self, **values: Any) -> None:
        response = self.client.post("/v1/contacts", json={"external_id": "C1", **values})
        assert response.status_code == 200, response.text

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the app's live loop (its background thread, woken by the API's writes,
        polling for the rest) has evaluated every queued change: the queue is empty once its
        transaction committed."""
        deadline = time.monotonic() + timeout
        while pending(self.runtime.db):
            assert time.monotonic() < deadline, "the live loop did not drain the queue"
            time.sleep(0.02)

    def stays(self, segment: str) -> list[tuple[bool, bool]]:
        """(entered, exited) per stay of C1, in order, once the live loop has caught up."""
        self.settle()
        with Session(self.runtime.db) as session:
            rows = session.execute(
                select(SegmentMembership.entered_at, SegmentMembership.exited_at)
                .join(Contact, Contact.id == SegmentMembership.contact_id)
                .where(Contact.external_id == "C1", SegmentMembership.segment == segment)
                .order_by(SegmentMembership.id)
            ).all()
        return [(e is not None, x is not None) for e, x in rows]

    def emails(self) -> list[dict[str, Any]]:
        files = sorted((self.tmp / "outbox").glob("*.json"))
        found = [json.loads(p.read_text()) for p in files]
        return [m for m in found if m.get("channel") == "email"]


@pytest.fixture
def live(settings: Settings, store: Any, tmp_path: Path) -> Iterator[Live]:
    runtime = Runtime.from_settings(settings, db=store)
    runtime.load_journeys()
    app = create_app(settings, db=store, runtime_factory=lambda: runtime)
    key = create_key(store, name="shop")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key.secret}"
        yield Live(runtime, client, tmp_path)


BASE = {"email": "c1@example.com", "first_name": "Cy", "consent_email": True}


def test_reentry_within_one_tick_is_seen_and_sends_twice(live: Live) -> None:
    tick_all(live.runtime)  # the journey is registered and ticking: nobody is in yet
    live.contact(**BASE, attributes={"plan": "pro"})
    assert live.stays("pro") == [(True, False)]  # entered at once, not at the tick
    live.contact(attributes={"plan": "free"})
    live.settle()  # the two writes a moment apart (within one batch of the loop they merge)
    live.contact(attributes={"plan": "pro"})
    assert live.stays("pro") == [(True, True), (True, False)]
    with Session(live.runtime.db) as session:  # each stay enrolled at its entry
        keys = session.scalars(select(Enrollment.entry_key).order_by(Enrollment.id)).all()
    assert len(keys) == 2 and all(k.startswith("m:") for k in keys)
    [result] = tick_all(live.runtime)
    assert result["sent"] == 2
    assert len(live.emails()) == 2
    assert tick_all(live.runtime)[0]["sent"] == 0  # nothing twice


def test_events_and_orders_move_memberships_at_once(live: Live) -> None:
    live.contact(**BASE)
    event = {"external_id": "C1", "name": "cart.updated", "properties": {}}
    assert live.client.post("/v1/events", json=event).status_code == 200
    assert live.stays("carts") == []
    assert live.stays("recent") == [(True, False)]
    assert live.client.post("/v1/events", json=[event, event]).status_code == 200
    assert live.stays("carts") == [(True, False)]
    order = {"external_id": "C1", "total": "10", "currency": "EUR", "status": "placed"}
    placed = datetime.now(UTC).isoformat()
    for n in (1, 2):
        response = live.client.post(
            "/v1/orders", json={**order, "order_id": f"O{n}", "placed_at": placed}
        )
        assert response.status_code == 200
    assert live.stays("buyers") == [(True, False)]
    response = live.client.post(
        "/v1/orders", json={**order, "order_id": "O2", "placed_at": placed, "status": "cancelled"}
    )
    assert response.status_code == 200
    assert live.stays("buyers") == [(True, True)]
    results = {r.segment: r for r in sweep(live.runtime.engine)}
    assert all(r.missed == 0 for r in results.values())  # the live path missed nothing
    assert results["recent"].swept == ["time window"]


def test_the_full_refresh_reports_what_the_live_path_missed(live: Live) -> None:
    live.contact(**BASE)
    with Session(live.runtime.db) as session, session.begin():  # behind the live path's back
        session.execute(update(Contact).values(attributes={"plan": "pro"}))
    tick_all(live.runtime)  # registers the journey, so "pro" is live from here on
    with Session(live.runtime.db) as session, session.begin():
        session.execute(update(Contact).values(attributes={"plan": "free"}))
    [pro] = [r for r in sweep(live.runtime.engine) if r.segment == "pro"]
    assert (pro.entered, pro.exited, pro.missed) == (0, 1, 1)


def test_live_update_is_a_no_op_for_segments_it_cannot_affect(live: Live) -> None:
    live.contact(**BASE, attributes={"plan": "pro"})
    live.settle()
    with live.runtime.db.connect() as conn:
        cid = conn.execute(select(Contact.id)).scalar_one()
    stats = live_update(live.runtime.engine, [cid], Change.event("page.viewed"))
    assert stats.segments == 0
    stats = live_update(live.runtime.engine, [cid], Change.contact())
    assert stats.segments >= 1 and stats.entered == stats.exited == 0


# -- wait_for_segment ----------------------------------------------------------------------------

WAITER = """
name: upgrade_nudge
trigger: {type: api}
steps:
  - {id: wait_pro, type: wait_for_segment, segment: pro, timeout: 3 days, on_timeout: nudge}
  - {id: thanks, type: email, template: welcome, next: done}
  - {id: nudge, type: email, template: welcome}
  - {id: done, type: exit}
"""


def nudge(live: Live) -> tuple[Enrollment, list[str | None]]:
    """The upgrade_nudge enrollment and the steps it sent."""
    from tidings.crm.models import Journey as JourneyRow
    from tidings.crm.models import Message

    with Session(live.runtime.db) as session:
        journey_ids = select(JourneyRow.id).where(JourneyRow.name == "upgrade_nudge")
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.journey_id.in_(journey_ids))
        ).one()
        steps = session.scalars(
            select(Message.step_id).where(Message.journey_id.in_(journey_ids))
        ).all()
    return enrollment, list(steps)


def start_nudge(live: Live, project: Path, text: str = WAITER) -> None:
    from tidings.journeys.triggers import Target, trigger_journey

    (project / "journeys" / "upgrade_nudge.yaml").write_text(text)
    live.runtime.load_journeys()
    live.contact(**BASE, attributes={"plan": "free"})
    outcome = trigger_journey(live.runtime, "upgrade_nudge", [Target("C1")])
    assert outcome.enrolled == 1


def test_wait_for_segment_goes_on_at_once_when_the_contact_enters(
    live: Live, project: Path
) -> None:
    start_nudge(live, project)
    enrollment, sent = nudge(live)
    assert enrollment.step_id == "wait_pro" and sent == []
    assert enrollment.next_due_at is not None
    assert enrollment.next_due_at > datetime.now(UTC) + timedelta(days=2)
    live.contact(attributes={"plan": "pro"})  # woken by the live path
    live.settle()
    enrollment, _ = nudge(live)
    assert enrollment.next_due_at is not None and enrollment.next_due_at <= datetime.now(UTC)
    results = {r["journey"]: r for r in tick_all(live.runtime)}
    assert results["upgrade_nudge"]["sent"] == 1
    enrollment, sent = nudge(live)
    assert enrollment.status == "completed" and sent == ["thanks"]


def test_wait_for_segment_times_out_to_its_branch(live: Live, project: Path) -> None:
    start_nudge(live, project)
    tick_all(live.runtime, names=["upgrade_nudge"], now=datetime.now(UTC) + timedelta(days=2))
    assert nudge(live)[1] == []
    later = datetime.now(UTC) + timedelta(days=3, minutes=1)
    tick_all(live.runtime, names=["upgrade_nudge"], now=later)
    assert nudge(live)[1] == ["nudge"]


def test_wait_for_segment_out(live: Live, project: Path) -> None:
    start_nudge(live, project, WAITER.replace("segment: pro,", "segment: pro, until: out,"))
    enrollment, sent = nudge(live)
    assert (enrollment.status, sent) == ("completed", ["thanks"])


# -- the property: the live path and the full refresh agree --------------------------------------

PROPERTY_SEGMENTS = {
    "p_pro": {"all": [{"attribute": "plan", "eq": "pro"}, {"consent": {"channel": "email"}}]},
    "p_carts": {
        "any": [
            {"event": "a", "count": {"gte": 2}},
            {"event": "b", "where": {"x": {"gt": 5}}},
        ]
    },
    "p_spend": {"orders": {"total_spend": {"gte": 100}}},
    "p_quiet": {"all": [{"not": {"attribute": "vip", "exists": True}}, {"orders": {"count": 0}}]},
    "p_month": {"all": [{"event": "a", "within": "30 days"}, {"attribute": "plan", "ne": "pro"}]},
}

op = st.one_of(
    st.tuples(st.just("attr"), st.integers(0, 2), st.sampled_from(["pro", "free", None])),
    st.tuples(st.just("vip"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("consent"), st.integers(0, 2), st.booleans()),
    st.tuples(
        st.just("event"), st.integers(0, 2), st.sampled_from(["a", "b", "c"]), st.integers(0, 9)
    ),
    st.tuples(st.just("drain"), st.integers(0, 2)),  # the loop runs here (else: when it can)
    st.tuples(
        st.just("order"),
        st.integers(0, 2),
        st.integers(0, 3),
        st.sampled_from([30, 80]),
        st.sampled_from(["placed", "cancelled"]),
    ),
)


def test_live_and_full_refresh_agree_on_random_streams(
    settings: Settings, store: Any, project: Path, tmp_path: Path
) -> None:
    from tidings.segments.membership import current_members, evaluate

    for name, rule in PROPERTY_SEGMENTS.items():
        body = {"name": name, "live": True, "rule": rule}
        (project / "segments" / f"{name}.yaml").write_text(json.dumps(body))
    runtime = Runtime.from_settings(settings, db=store)
    runtime.load_journeys()
    app = create_app(settings, db=store, runtime_factory=lambda: runtime)
    key = create_key(store, name="shop")
    counter = iter(range(10**6))
    catalog = runtime.engine._catalog()

    @hsettings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(op, min_size=1, max_size=12))
    def check(stream: list[tuple[Any, ...]]) -> None:
        run = next(counter)
        ext = [f"R{run}-{i}" for i in range(3)]
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {key.secret}"
            people = [{"external_id": e, "email": f"{e.lower()}@example.com"} for e in ext]
            assert client.post("/v1/contacts", json=people).status_code == 200
            for n, step in enumerate(stream):
                who = ext[step[1]]
                if step[0] == "drain":
                    drain(runtime.engine)
                    continue
                match step[0]:
                    case "attr":
                        body: Any = {"external_id": who, "attributes": {"plan": step[2]}}
                        response = client.post("/v1/contacts", json=body)
                    case "vip":
                        body = {
                            "external_id": who,
                            "attributes": {"vip": True if step[2] else None},
                        }
                        response = client.post("/v1/contacts", json=body)
                    case "consent":
                        body = {"external_id": who, "consent_email": step[2]}
                        response = client.post("/v1/contacts", json=body)
                    case "event":
                        body = {
                            "external_id": who,
                            "name": step[2],
                            "properties": {"x": step[3], "n": n},
                        }
                        response = client.post("/v1/events", json=body)
                    case _:
                        body = {
                            "external_id": who,
                            "order_id": f"{who}-O{step[2]}",
                            "total": str(step[3]),
                            "currency": "EUR",
                            "status": step[4],
                            "placed_at": datetime.now(UTC).isoformat(),
                        }
                        response = client.post("/v1/orders", json=body)
                assert response.status_code == 200, response.text
        drain(runtime.engine)  # what the app's loop had not taken yet
        with Session(store) as session:
            ids = set(session.scalars(select(Contact.id).where(Contact.external_id.in_(ext))))
            for name in PROPERTY_SEGMENTS:
                live_members = set(current_members(name, session=session)) & ids
                full = set(evaluate(name, session=session, catalog=catalog)) & ids
                assert live_members == full, (name, stream)

    check()
    assert all(r.missed == 0 for r in sweep(runtime.engine))


# -- the simulator and the plan ------------------------------------------------------------------

TRIAL = """
name: trial_upgrade
trigger: {type: event, event: trial.started}
steps:
  - {id: wait_pro, type: wait_for_segment, segment: pro, timeout: 3 days, on_timeout: nudge}
  - {id: thanks, type: email, template: welcome, next: done}
  - {id: nudge, type: email, template: welcome}
  - {id: done, type: exit}
"""
TRIAL_SCENARIO = """
start: 2026-12-01T09:00:00Z
days: 5
tick: 1 hour
contacts:
  - {id: ann, email: ann@example.com, first_name: Ann}
  - {id: bob, email: bob@example.com, first_name: Bob}
timeline:
  - {at: 2026-12-01T09:00:00Z, contact: ann, event: trial.started}
  - {at: 2026-12-01T09:00:00Z, contact: bob, event: trial.started}
  - {at: 2026-12-02T10:17:00Z, contact: ann, attributes: {plan: pro}}
expect:
  ann: {sent: [thanks], reached: completed}
  bob: {sent: [nudge], reached: completed}
"""


def test_simulate_plays_wait_for_segment(settings: Settings, project: Path) -> None:
    from tidings.journeys.simulate import load_scenario, simulate

    journey = project / "journeys" / "trial_upgrade.yaml"
    journey.write_text(TRIAL)
    scenario = project / "trial.scenario.yaml"
    scenario.write_text(TRIAL_SCENARIO)
    played = simulate(settings, journey, load_scenario(scenario))
    assert played.mismatches == []
    [(step, when)] = played.contacts["ann"].sent
    # woken by the attribute change, sent at that moment's tick (not at the 3-day timeout)
    assert step == "thanks" and when == datetime(2026, 12, 2, 10, 17, tzinfo=UTC)
    [(step, when)] = played.contacts["bob"].sent
    # the first tick after the timeout (ticks run hourly from 10:17)
    assert step == "nudge" and when == datetime(2026, 12, 4, 9, 17, tzinfo=UTC)


def test_validation_names_the_wait_for_segment_key(live: Live, project: Path) -> None:
    from tidings.errors import InputError
    from tidings.journeys.loader import load_file

    bad = project / "journeys" / "bad.yaml"
    bad.write_text(TRIAL.replace("3 days", "3 dayz"))
    with pytest.raises(InputError) as raised:
        load_file(bad)
    assert "bad.yaml:5" in str(raised.value) and "timeout" in str(raised.value)
    assert "dayz" in str(raised.value)
    bad.write_text(TRIAL.replace("segment: pro,", "segment: proo,"))
    with pytest.raises(InputError) as raised:
        load_file(bad, references=live.runtime.references())
    text = str(raised.value)
    assert "bad.yaml:5" in text and "steps[0].segment" in text and "'pro'" in text


def test_plan_follows_wait_for_segment(live: Live, project: Path) -> None:
    from tidings.journeys.planning import plan_journey

    journey = project / "journeys" / "pro_nudge.yaml"
    journey.write_text(
        WAITER.replace(
            "name: upgrade_nudge\ntrigger: {type: api}",
            "name: pro_nudge\ntrigger: {type: segment, segment: carts}",
        )
    )
    live.contact(**BASE, attributes={"plan": "pro"})
    events = [{"external_id": "C1", "name": "cart.updated", "properties": {"n": n}} for n in (1, 2)]
    assert live.client.post("/v1/events", json=events).status_code == 200
    planned = plan_journey(live.runtime, journey)
    steps = {p.step: p for p in planned.steps}
    assert planned.entering == 1
    assert (steps["thanks"].sent, steps["nudge"].sent) == (1, 0)  # in "pro" already: goes on


def test_workers_racing_lose_and_repeat_nothing(live: Live) -> None:
    """Four threads change contacts and run the live path for them at once: the stays end up
    exactly what a full evaluation says, with never two open at a time (PostgreSQL takes the
    segment's lock; SQLite serialises writers)."""
    import random
    import threading

    from sqlalchemy import func, insert

    from tidings.segments.membership import current_members, evaluate

    with live.runtime.db.begin() as conn:
        conn.execute(insert(Contact), [{"email": f"r{i}@example.com"} for i in range(40)])
        ids = list(conn.execute(select(Contact.id)).scalars())
    live_update(live.runtime.engine, ids, Change.contact())
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        rnd = random.Random(n)
        try:
            for _ in range(15):
                some = rnd.sample(ids, 5)
                plan = rnd.choice(["pro", "free"])
                with live.runtime.db.begin() as conn:
                    conn.execute(
                        update(Contact)
                        .where(Contact.id.in_(some))
                        .values(attributes={"plan": plan})
                    )
                live_update(live.runtime.engine, some, Change.contact(frozenset({"plan"})))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    catalog = live.runtime.engine._catalog()
    with Session(live.runtime.db) as session:
        assert set(current_members("pro", session=session)) == set(
            evaluate("pro", session=session, catalog=catalog)
        )
        m = SegmentMembership
        open_twice = session.scalar(
            select(func.count()).select_from(
                select(m.contact_id)
                .where(m.segment == "pro", m.exited_at.is_(None))
                .group_by(m.contact_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    assert open_twice == 0
    assert [r.missed for r in sweep(live.runtime.engine) if r.segment == "pro"] == [0]


def test_an_update_contact_step_moves_live_segments(live: Live, project: Path) -> None:
    from tidings.journeys.triggers import Target, trigger_journey

    (project / "journeys" / "upgrade.yaml").write_text(
        "name: upgrade\ntrigger: {type: api}\n"
        "steps:\n  - {id: set_plan, type: update_contact, set: {plan: pro}}\n"
    )
    live.runtime.load_journeys()
    live.contact(**BASE, attributes={"plan": "free"})
    assert live.stays("pro") == []
    assert trigger_journey(live.runtime, "upgrade", [Target("C1")]).enrolled == 1
    assert live.stays("pro") == [(True, False)]  # in the call, not at the next tick
    assert [r.missed for r in sweep(live.runtime.engine) if r.segment == "pro"] == [0]


# -- the queue: exactly once, several loops, the plan off the hot path ---------------------------


def stop_app_loop(live: Live) -> None:
    state = live.client.app.state.web  # type: ignore[attr-defined]
    state.live.stop()
    state.live = None  # writes wake no loop now


def test_a_change_survives_a_failed_evaluation(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that fails after taking changes (its transaction rolls back) leaves them
    queued: the next loop evaluates them, once."""
    from tidings.segments import live as live_module

    assert live.runtime.settings.live_loop
    stop_app_loop(live)  # this test plays the loop itself
    live.contact(**BASE, attributes={"plan": "pro"})
    assert pending(live.runtime.db) == 1

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the worker died here")

    with monkeypatch.context() as patched:
        patched.setattr(live_module, "refresh_stays", crash)
        with pytest.raises(RuntimeError):
            drain(live.runtime.engine)
    assert pending(live.runtime.db) == 1  # not lost
    stats = drain(live.runtime.engine)
    assert (stats.changes, stats.entered, stats.enrolled) == (1, 1, 1)
    assert pending(live.runtime.db) == 0
    assert drain(live.runtime.engine).changes == 0  # not repeated
    assert live.stays("pro") == [(True, False)]


def test_a_rolled_back_write_queues_nothing(live: Live) -> None:
    from tidings.segments.live import plan, record

    live.contact(**BASE)
    live.settle()
    current = plan(live.runtime.engine)
    with pytest.raises(RuntimeError), Session(live.runtime.db) as session, session.begin():
        assert record(session, current, [(1, Change.contact(frozenset({"plan"})))]) == 1
        raise RuntimeError("the write failed")
    assert pending(live.runtime.db) == 0
    with Session(live.runtime.db) as session, session.begin():  # nothing live reads it
        assert record(session, current, [(1, Change.event("page.viewed"))]) == 0


def test_loops_side_by_side_take_each_change_once(live: Live) -> None:
    """Four threads drain one queue of 400 changes at once (PostgreSQL: SKIP LOCKED; SQLite:
    one writer at a time): every change evaluated once, the stays exactly a full evaluation's."""
    import threading

    from sqlalchemy import insert

    from tidings.segments.live import plan, record
    from tidings.segments.membership import current_members, evaluate

    stop_app_loop(live)
    with live.runtime.db.begin() as conn:
        conn.execute(
            insert(Contact),
            [
                {"email": f"q{i}@example.com", "attributes": {"plan": "pro" if i % 3 else "free"}}
                for i in range(400)
            ],
        )
        ids = list(conn.execute(select(Contact.id)).scalars())
    current = plan(live.runtime.engine)
    with Session(live.runtime.db) as session, session.begin():
        for cid in ids:  # one row each: 400 rows to share
            record(session, current, [(cid, Change.contact(frozenset({"plan"})))])
    taken: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            taken.append(drain(live.runtime.engine, limit=25).changes)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(taken) == len(ids) and pending(live.runtime.db) == 0
    catalog = live.runtime.engine._catalog()
    with Session(live.runtime.db) as session:
        members = current_members("pro", session=session)
        assert sorted(members) == evaluate("pro", session=session, catalog=catalog)
        assert len(members) == len(set(members))


def test_a_large_batch_is_one_statement_per_segment(live: Live) -> None:
    """A batch of thousands of changes (more than SQLite's chunk): the stays follow exactly,
    entries and exits; on PostgreSQL each segment's evaluation and writes are one statement
    (the contacts as one array parameter), however many contacts."""
    from sqlalchemy import event, insert

    from tidings.segments.live import CHUNK, plan, record, step
    from tidings.segments.membership import current_members, evaluate

    stop_app_loop(live)
    db = live.runtime.db
    n = CHUNK * 2 + 500
    with db.begin() as conn:
        conn.execute(
            insert(Contact),
            [
                {"email": f"b{i}@example.com", "attributes": {"plan": "pro" if i % 3 else "free"}}
                for i in range(n)
            ],
        )
        ids = list(conn.execute(select(Contact.id).order_by(Contact.id)).scalars())
    current = plan(live.runtime.engine)
    plan_change = Change.contact(frozenset({"plan"}))
    writes: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "segment_memberships" in statement and "enrollments" not in statement:
            writes.append(statement)  # (the journey "pro" triggers enrolls the entries apart)

    def one_step() -> Any:
        with Session(db) as session, session.begin():
            record(session, current, [(cid, plan_change) for cid in ids])
        event.listen(db, "before_cursor_execute", seen)
        try:
            return step(live.runtime.engine, limit=n)
        finally:
            event.remove(db, "before_cursor_execute", seen)

    got = one_step()
    assert (got.changes, got.segments, got.entered, got.exited) == (n, 1, n - len(ids[::3]), 0)
    if db.dialect.name == "postgresql":
        assert len(writes) == 1
    with db.begin() as conn:  # a third leave, a third (the free ones) come in
        conn.execute(update(Contact).where(Contact.id.in_(ids)).values(attributes={"plan": "pro"}))
        conn.execute(
            update(Contact).where(Contact.id.in_(ids[1::3])).values(attributes={"plan": "free"})
        )
    writes.clear()
    got = one_step()
    assert (got.changes, got.entered, got.exited) == (n, len(ids[::3]), len(ids[1::3]))
    if db.dialect.name == "postgresql":
        assert len(writes) == 1
    with Session(db) as session:
        members = current_members("pro", session=session)
        catalog = live.runtime.engine._catalog()
        assert members == evaluate("pro", session=session, catalog=catalog)
    assert all(r.missed == 0 for r in sweep(live.runtime.engine))


def test_drain_takes_larger_batches_behind_a_backlog(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full batches double the next one, up to BACKLOG_FACTOR times the setting; every change
    is still taken once."""
    from sqlalchemy import insert

    from tidings.segments import live as live_module
    from tidings.segments.live import BACKLOG_FACTOR, plan, record

    stop_app_loop(live)
    with live.runtime.db.begin() as conn:
        conn.execute(insert(Contact), [{"email": f"d{i}@example.com"} for i in range(150)])
        ids = list(conn.execute(select(Contact.id)).scalars())
    current = plan(live.runtime.engine)
    with Session(live.runtime.db) as session, session.begin():
        record(session, current, [(cid, Change.contact(frozenset({"plan"}))) for cid in ids])
    sizes: list[int] = []
    real_step = live_module.step

    def counted(engine: Any, *, limit: int | None = None, now: Any = None) -> Any:
        sizes.append(limit or 0)
        return real_step(engine, limit=limit, now=now)

    monkeypatch.setattr(live_module, "step", counted)
    got = drain(live.runtime.engine, limit=10)
    assert BACKLOG_FACTOR == 4
    assert sizes[:4] == [10, 20, 40, 40] and all(s == 40 for s in sizes[3:])
    assert got.changes == len(ids) and pending(live.runtime.db) == 0
    sizes.clear()
    assert drain(live.runtime.engine, limit=10).changes == 0 and sizes == [10]


def test_the_plan_is_not_read_per_write(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within ``live_plan_seconds`` the live plan is reused: an API write reads no journeys
    for it; registering a journey in this process makes it read them again at once."""
    from tidings.segments.live import plan

    engine = live.runtime.engine
    plan(engine, fresh=True)
    calls: list[int] = []
    real = type(engine).versions

    def counted(self: Any, name: str | None = None) -> Any:
        calls.append(1)
        return real(self, name)

    monkeypatch.setattr(type(engine), "versions", counted)
    before = plan(engine)
    assert plan(engine) is before and calls == []
    engine.set_status("pro_welcome", "paused")
    paused = plan(engine)
    assert calls == [1] and "pro" not in paused.triggers
    engine.set_status("pro_welcome", "active")
    assert "pro" in plan(engine).triggers


def test_the_app_loop_follows_writes_without_help(live: Live) -> None:
    """No drain called: the web app's own background loop, woken by the write."""
    live.contact(**BASE, attributes={"plan": "pro"})
    deadline = time.monotonic() + 10
    while live.stays("pro") != [(True, False)]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_file_import_moves_live_segments_at_once(
    live: Live, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tidings contacts import` / `orders import` commit batch by batch; the contacts they
    touched are queued for the live segments and evaluated in the call, so the segment-triggered
    journey enrols them at once and the tick's full refresh finds nothing missed."""
    from typer.testing import CliRunner

    from tidings.cli import app
    from tidings.config import get_settings

    stop_app_loop(live)  # only the command may evaluate the queue here
    tick_all(live.runtime)  # registers pro_welcome: "pro" is live from here on
    for name, value in settings.model_dump().items():
        if value is not None and name in {"database_url", "project_dir", "outbox_dir"}:
            monkeypatch.setenv(f"TIDINGS_{name.upper()}", str(value))
    monkeypatch.setenv("TIDINGS_SECRET_KEY", "test-secret")
    people = tmp_path / "people.csv"
    people.write_text(
        "external_id,email,consent_email,plan\n"
        "C1,c1@example.com,yes,pro\nC2,c2@example.com,yes,free\nC3,c3@example.com,yes,pro\n"
    )
    orders = tmp_path / "orders.csv"
    placed = datetime.now(UTC).isoformat()
    orders.write_text(
        "order_id,external_id,total,currency,status,placed_at\n"
        f"O1,C2,10,EUR,placed,{placed}\nO2,C2,12,EUR,placed,{placed}\n"
    )
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        for kind, path in (("contacts", people), ("orders", orders)):
            result = runner.invoke(app, [kind, "import", str(path)])
            assert result.exit_code == 0, result.output
    finally:
        get_settings.cache_clear()
    assert pending(live.runtime.db) == 0  # evaluated in the call, not left to a loop
    with Session(live.runtime.db) as session:
        members = session.execute(
            select(SegmentMembership.segment, Contact.external_id)
            .join(Contact, Contact.id == SegmentMembership.contact_id)
            .where(SegmentMembership.exited_at.is_(None))
            .order_by(SegmentMembership.segment, Contact.external_id)
        ).all()
        enrolled = session.scalar(select(func.count()).select_from(Enrollment))
    assert [tuple(m) for m in members] == [("buyers", "C2"), ("pro", "C1"), ("pro", "C3")]
    assert enrolled == 2  # pro_welcome, at the import
    assert all(r.missed == 0 for r in sweep(live.runtime.engine))


# -- each segment's statement built once ----------------------------------------------------------

MOVING_RULES: dict[str, dict[str, Any]] = {
    "window": {"event": "a", "within": "2 hours"},
    "since": {"event": "a", "count": {"gte": 2}, "within": "1 day"},
    "last": {"last_event": "a", "where": {"x": {"gt": 1}}},
    "orders": {"orders": {"count": {"gte": 1}, "within": "1 hour"}},
    "held": {"has_been": {"attribute": "plan", "eq": "pro", "for": "1 hour"}},
}


def test_a_moving_statement_answers_as_one_built_for_that_now(store: Any) -> None:
    """``compile_core(moving=...)``: the times a rule compares with are bound parameters, so
    one statement serves every ``now`` and gives what a statement built for it gives."""
    from sqlalchemy import insert

    from tidings.crm.models import AttributeChange, Event, Order
    from tidings.segments.compile import compile_core
    from tidings.segments.sqlparts import moving_params

    base = datetime(2026, 11, 1, tzinfo=UTC)
    with store.begin() as conn:
        ids = list(
            conn.execute(
                insert(Contact).returning(Contact.id, sort_by_parameter_order=True),
                [{"email": f"m{i}@example.com", "created_at": base} for i in range(6)],
            ).scalars()
        )
        conn.execute(
            insert(Event),
            [
                {
                    "contact_id": cid,
                    "name": "a",
                    "properties": {"x": k},
                    "occurred_at": base + timedelta(minutes=50 * i + 7 * k),
                    "source": "test",
                    "idempotency_key": f"m-{cid}-{k}",
                }
                for i, cid in enumerate(ids)
                for k in range(i % 3 + 1)
            ],
        )
        conn.execute(
            insert(Order),
            [
                {
                    "order_id": f"m-{cid}",
                    "contact_id": cid,
                    "total": 10,
                    "currency": "EUR",
                    "status": "completed",
                    "placed_at": base + timedelta(minutes=40 * i),
                    "updated_at": base,
                }
                for i, cid in enumerate(ids)
            ],
        )
        conn.execute(
            insert(AttributeChange),
            [
                {
                    "contact_id": cid,
                    "key": "plan",
                    "value": "pro",
                    "changed_at": base + timedelta(minutes=30 * i),
                }
                for i, cid in enumerate(ids)
            ],
        )
    dialect = store.dialect.name
    for name, rule in MOVING_RULES.items():
        moving: dict[str, float] = {}
        once = compile_core(core_of(rule), dialect=dialect, now=base, moving=moving)
        assert moving, name
        answers = set()
        for minutes in (0, 45, 100, 170, 400, 2000):
            now = base + timedelta(minutes=minutes)
            with store.connect() as conn:
                built = set(conn.execute(compile_core(core_of(rule), dialect=dialect, now=now)))
                reused = set(conn.execute(once, moving_params(moving, now)))
            assert reused == built, (name, minutes)
            answers.add(frozenset(built))
        assert len(answers) > 1, name  # the answer does move with now


def test_a_rule_that_compares_a_time_as_a_value_is_built_per_batch() -> None:
    from tidings.segments.compile import compile_core
    from tidings.segments.loader import Catalog
    from tidings.segments.membership import prepare
    from tidings.segments.sqlparts import Unmoving

    rule = {"attribute": "signup", "older_than": "30 days"}
    with pytest.raises(Unmoving):
        compile_core(core_of(rule), dialect="postgresql", moving={})
    catalog = Catalog({"old": Segment.model_validate({"name": "old", "rule": rule})})
    assert prepare("old", catalog=catalog) is None


def test_a_segment_registered_again_gets_its_new_statement(live: Live) -> None:
    """The statement is kept per segment and rule: the same rule reuses it, a changed rule
    (the YAML edited, the catalog loaded again) builds a new one, and the live path follows
    the new rule at once."""
    from tidings.segments.live import plan, record, step
    from tidings.segments.membership import current_members, prepare

    engine = live.runtime.engine
    catalog = engine._catalog()
    first = prepare("pro", catalog=catalog)
    assert first is not None and prepare("pro", catalog=catalog) is first
    stop_app_loop(live)
    live.contact(**BASE, attributes={"plan": "gold"})
    catalog.segments["pro"] = Segment.model_validate(
        {"name": "pro", "rule": {"attribute": "plan", "eq": "gold"}}
    )
    second = prepare("pro", catalog=catalog)
    assert second is not None and second is not first
    with Session(live.runtime.db) as session, session.begin():
        cid = session.scalars(select(Contact.id).where(Contact.external_id == "C1")).one()
        record(session, plan(engine), [(cid, Change.contact(frozenset({"plan"})))])
    assert step(engine).entered == 1
    with Session(live.runtime.db) as session:
        assert current_members("pro", session=session) == [cid]
    assert all(r.missed == 0 for r in sweep(engine))


def tidings_process(
    settings: Settings, project: Path, tmp_path: Path, *args: str
) -> subprocess.Popen[bytes]:
    """``tidings ARGS`` in a process of its own on this test's store and project, polling the
    live queue every 0.1 s, without Redis, with the loop setting left to the command."""
    env = {
        **os.environ,
        "TIDINGS_DATABASE_URL": settings.database_url,
        "TIDINGS_PROJECT_DIR": str(project),
        "TIDINGS_OUTBOX_DIR": str(tmp_path / "outbox"),
        "TIDINGS_SECRET_KEY": "test-secret",
        "TIDINGS_LIVE_POLL_SECONDS": "0.1",
    }
    env.pop("TIDINGS_REDIS_URL", None)
    env.pop("TIDINGS_LIVE_LOOP", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_tidings_live_runs_the_loop_in_a_process_of_its_own(
    live: Live, settings: Settings, project: Path, tmp_path: Path
) -> None:
    """`tidings live` beside a web app that runs no loop (TIDINGS_LIVE_LOOP=false): it takes
    what the app's writes queued, steps while changes arrive, and stops on SIGTERM."""
    import signal

    stop_app_loop(live)
    proc = tidings_process(settings, project, tmp_path, "live")
    try:
        for plan_value in ("pro", "free", "pro"):
            live.contact(**BASE, attributes={"plan": plan_value})
            live.settle(timeout=60)  # only the other process empties the queue here
        assert live.stays("pro") == [(True, True), (True, False)]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()


def test_serve_live_process_runs_the_loop_beside_the_workers(
    settings: Settings, store: Any, project: Path, tmp_path: Path
) -> None:
    """`tidings serve --live-process`: one `tidings live` child beside the web app (whose
    workers run no loop); a write through the API moves the segment, and stopping the server
    stops the child."""
    import http.client
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    key = create_key(store, name="shop")
    Runtime.from_settings(settings, db=store).load_journeys()  # pro_welcome makes "pro" live
    proc = tidings_process(
        settings, project, tmp_path, "serve", "--port", str(port), "--live-process"
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                ready = conn.getresponse().status == 200
                conn.close()
                if ready:
                    break
            except OSError:
                time.sleep(0.1)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        lines = [Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0") for c in children]
        assert [c for c in lines if b"live" in c], lines
        body = json.dumps({"external_id": "C1", **BASE, "attributes": {"plan": "pro"}})
        headers = {"Authorization": f"Bearer {key.secret}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/contacts", body=body, headers=headers)
        assert conn.getresponse().status == 200
        conn.close()
        deadline = time.monotonic() + 30
        while True:
            with Session(store) as session:
                if session.scalar(select(func.count()).select_from(SegmentMembership)):
                    break
            assert time.monotonic() < deadline, "the live process did not take the change"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert b"Finished server process" in out
    for child in children:
        assert (
            not Path(f"/proc/{child}").exists()
            or b"zombie" in Path(f"/proc/{child}/status").read_bytes().lower()
        ), "the live process outlived serve"
