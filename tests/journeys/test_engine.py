"""The journey engine on SQLite and PostgreSQL: steps, policy, idempotency, versions."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.orm import Session

from tidings.channels.outbox import OutboxChannel
from tidings.config import Settings
from tidings.crm.models import Assignment, Consent, Contact, Enrollment, Event, Message, Suppression
from tidings.crm.models import Journey as JourneyRow
from tidings.journeys.dispatch import Dispatcher
from tidings.journeys.engine import JourneyEngine
from tidings.journeys.loader import load_text
from tidings.templates.render import Renderer

# A Wednesday, 10:00 UTC: outside the default quiet hours everywhere used below.
T0 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
SETTINGS = Settings(frequency_cap="off", quiet_hours="off", secret_key="test-secret")


def add_contacts(engine: Engine, people: list[dict[str, Any]]) -> dict[str, int]:
    """Insert contacts (with consents); returns external_id -> id."""
    with Session(engine) as session, session.begin():
        ids = {}
        for person in people:
            person = dict(person)
            consents = person.pop("consent", {"email": "granted", "sms": "granted"})
            person.setdefault("created_at", T0)
            contact = Contact(updated_at=person["created_at"], **person)
            session.add(contact)
            session.flush()
            ids[person["external_id"]] = contact.id
            for channel, status in consents.items():
                session.add(
                    Consent(
                        contact_id=contact.id,
                        channel=channel,
                        purpose="marketing",
                        status=status,
                        source="test",
                        updated_at=T0,
                    )
                )
    return ids


def people(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "external_id": f"P{i}",
            "email": f"p{i}@example.com",
            "phone": f"+1415555{i:04d}",
            "first_name": f"Pat{i}",
            "timezone": "Europe/Berlin",
            **extra,
        }
        for i in range(n)
    ]


def journey(text: str) -> Any:
    return load_text(text, source="test.yaml")


WELCOME = """
name: welcome_test
trigger: {type: api}
steps:
  - {id: hello, type: email, template: welcome}
  - {id: pause, type: wait, duration: 2 days}
  - {id: ping, type: sms, template: order_shipped}
"""


@pytest.fixture
def engine_for(store: Engine):
    def make(settings: Settings = SETTINGS) -> JourneyEngine:
        return JourneyEngine(db=store, settings=settings)

    return make


def messages(store: Engine) -> list[tuple[str | None, str | None, str, str | None]]:
    with Session(store) as session:
        return [
            (c, step, status, error)
            for c, step, status, error in session.execute(
                select(Contact.external_id, Message.step_id, Message.status, Message.error)
                .join(Contact, Contact.id == Message.contact_id)
                .order_by(Contact.external_id, Message.id)
            )
        ]


def test_steps_wait_and_send_in_order(store: Engine, engine_for, tmp_path: Path) -> None:
    ids = add_contacts(store, people(3))
    eng = engine_for()
    version = eng.register(journey(WELCOME))
    assert len(eng.enroll_contacts(version, ids.values(), entry_key="api:1", now=T0)) == 3
    assert eng.enroll_contacts(version, ids.values(), entry_key="api:2", now=T0) == []  # never

    stats = eng.tick("welcome_test", now=T0)
    assert (stats.processed, stats.messages) == (3, 3)
    assert eng.tick("welcome_test", now=T0 + timedelta(days=1)).processed == 0
    stats = eng.tick("welcome_test", now=T0 + timedelta(days=2))
    assert (stats.processed, stats.messages, stats.completed) == (3, 3, 3)
    assert [m[1] for m in messages(store)] == ["hello", "ping"] * 3

    outbox = OutboxChannel(folder=tmp_path / "outbox")
    renderer = Renderer(settings=SETTINGS)
    dispatcher = Dispatcher(
        db=store, renderer=renderer, channels={"email": outbox, "sms": outbox}, settings=SETTINGS
    )
    with Session(store) as session:  # the SMS template needs the order it is about
        session.execute(
            update(Enrollment).values(
                context={
                    "trigger": {
                        "name": "order.shipped",
                        "properties": {
                            "order": {"number": "7", "tracking_url": "https://t.example/7"}
                        },
                    }
                }
            )
        )
        session.commit()
    sent = dispatcher.dispatch(now=T0 + timedelta(days=2))
    assert (sent.claimed, sent.sent, sent.failed) == (6, 6, 0)
    assert {m[2] for m in messages(store)} == {"sent"}
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert len([f for f in files if f.endswith(".eml")]) == 3
    sms = [
        json.loads(p.read_text())
        for p in (tmp_path / "outbox").glob("*.json")
        if json.loads(p.read_text()).get("channel") == "sms"
    ]
    assert len(sms) == 3 and "order #7 is on its way" in sms[0]["body"]
    assert dispatcher.dispatch(now=T0 + timedelta(days=3)).claimed == 0  # nothing twice


def test_policy_holds_and_defers(store: Engine, engine_for) -> None:
    folks = people(5)
    folks[1]["consent"] = {"email": "revoked"}
    folks[2]["email"] = None
    folks[4]["timezone"] = "Asia/Tokyo"  # 19:00 there at T0 ... quiet from 18:00
    ids = add_contacts(store, folks)
    with Session(store) as session, session.begin():
        session.add(
            Suppression(channel="email", address="p3@example.com", reason="bounce", source="test")
        )
    eng = engine_for(
        Settings(frequency_cap="1 per 7 days", quiet_hours="18:00-08:00", secret_key="x")
    )
    version = eng.register(
        journey("""
name: policy_test
trigger: {type: api}
steps:
  - {id: one, type: email, template: welcome}
  - {id: two, type: email, template: welcome}
""")
    )
    eng.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    stats = eng.tick("policy_test", now=T0)
    assert stats.deferred == 1
    assert dict(stats.held) == {
        "no_consent": 2,
        "no_address": 2,
        "suppressed": 2,
        "frequency_cap": 1,
    }
    assert messages(store) == [
        ("P0", "one", "queued", None),
        ("P0", "two", "held", "frequency_cap"),
        ("P1", "one", "held", "no_consent"),
        ("P1", "two", "held", "no_consent"),
        ("P2", "one", "held", "no_address"),
        ("P2", "two", "held", "no_address"),
        ("P3", "one", "held", "suppressed"),
        ("P3", "two", "held", "suppressed"),
    ]
    with Session(store) as session:
        due = session.scalar(
            select(Enrollment.next_due_at).where(Enrollment.contact_id == ids["P4"])
        )
    assert due == datetime(2026, 3, 4, 23, 0, tzinfo=UTC)  # 08:00 in Tokyo
    stats = eng.tick("policy_test", now=due)
    assert stats.messages == 1  # sent once quiet hours are over; the cap holds the second
    assert messages(store)[-2:] == [
        ("P4", "one", "queued", None),
        ("P4", "two", "held", "frequency_cap"),
    ]


def test_a_crashed_tick_rerun_creates_no_second_message(store: Engine, engine_for) -> None:
    ids = add_contacts(store, people(4))
    eng = engine_for()
    version = eng.register(journey(WELCOME))
    eng.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    eng.tick("welcome_test", now=T0)
    with Session(store) as session, session.begin():  # as if the enrollment update was lost
        session.execute(update(Enrollment).values(step_id="hello", next_due_at=T0, context={}))
    stats = eng.tick("welcome_test", now=T0)
    assert stats.processed == 4
    with Session(store) as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 4


def test_branch_split_wait_for_event_and_goal(store: Engine, engine_for) -> None:
    folks = people(6)
    for person in folks[:3]:
        person["attributes"] = {"plan": "pro"}
    ids = add_contacts(store, folks)
    eng = engine_for()
    version = eng.register(
        journey("""
name: cart_test
trigger: {type: api}
settings:
  goal: {event: order.placed, within: 7 days}
steps:
  - id: which
    type: branch
    branches:
      - when: {attribute: plan, eq: pro}
        next: waiting
    otherwise: done
  - id: waiting
    type: wait_for_event
    event: cart.viewed
    timeout: 1 day
    on_timeout: reminder
  - {id: thanks, type: email, template: welcome, next: done}
  - {id: reminder, type: email, template: abandoned_cart}
  - {id: done, type: exit}
""")
    )
    eng.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    stats = eng.tick("cart_test", now=T0)
    assert stats.completed == 3  # not pro: straight to done
    with Session(store) as session, session.begin():
        session.execute(
            insert(Event),
            [
                {
                    "contact_id": ids["P0"],
                    "name": "cart.viewed",
                    "occurred_at": T0 + timedelta(hours=1),
                    "source": "t",
                    "idempotency_key": "e1",
                    "properties": {},
                },
                {
                    "contact_id": ids["P1"],
                    "name": "order.placed",
                    "occurred_at": T0 + timedelta(hours=2),
                    "source": "t",
                    "idempotency_key": "e2",
                    "properties": {"value": 30},
                },
            ],
        )
    stats = eng.tick("cart_test", now=T0 + timedelta(days=1))
    assert stats.exited == 1  # P1 reached the goal: no reminder
    got = [(c, step) for c, step, _, _ in messages(store)]
    assert got == [("P0", "thanks"), ("P2", "reminder")]


def test_experiment_assignment_and_holdout(store: Engine, engine_for) -> None:
    ids = add_contacts(store, people(200))
    eng = engine_for()
    version = eng.register(
        journey("""
name: ab_test
trigger: {type: api}
steps:
  - id: hello
    type: email
    template: welcome
    experiment:
      variants: [{name: A, weight: 1}, {name: B, weight: 1}]
      holdout: 20
""")
    )
    eng.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    stats = eng.tick("ab_test", now=T0)
    with Session(store) as session:
        variants = {
            v: n
            for v, n in session.execute(
                select(Assignment.variant, func.count()).group_by(Assignment.variant)
            )
        }
        by_message = {
            v: n
            for v, n in session.execute(
                select(Message.variant, func.count()).group_by(Message.variant)
            )
        }
    assert sum(variants.values()) == 200
    assert 20 <= variants["holdout"] <= 60 and stats.held["holdout"] == variants["holdout"]
    assert by_message == {"A": variants["A"], "B": variants["B"]}


def test_versions_pause_and_reentry(store: Engine, engine_for) -> None:
    ids = add_contacts(store, people(2))
    eng = engine_for()
    v1 = eng.register(journey(WELCOME))
    eng.enroll_contacts(v1, [ids["P0"]], entry_key="k", now=T0)
    eng.tick("welcome_test", now=T0)
    v2 = eng.register(
        journey(
            WELCOME.replace("duration: 2 days", "duration: 1 day").replace(
                "template: order_shipped}",
                "template: order_shipped, next: bye}\n  - {id: bye, type: exit}",
            )
        )
    )
    assert v2.id != v1.id
    eng.enroll_contacts(v2, [ids["P1"]], entry_key="k", now=T0)
    eng.tick("welcome_test", now=T0)
    assert eng.set_status("welcome_test", "paused") == 2
    assert eng.tick("welcome_test", now=T0 + timedelta(days=3)).processed == 0
    eng.set_status("welcome_test", "active")
    eng.tick("welcome_test", now=T0 + timedelta(days=1, seconds=1))  # v2's shorter wait only
    with Session(store) as session:
        rows = {
            c: r for c, r in session.execute(select(Enrollment.contact_id, Enrollment.exit_reason))
        }
    assert rows == {ids["P0"]: None, ids["P1"]: "exit_step"}


def test_two_workers_never_process_the_same_enrollment(store: Engine, engine_for) -> None:
    if store.dialect.name != "postgresql":
        pytest.skip("SQLite runs one worker; PostgreSQL is the store for a fleet")
    ids = add_contacts(store, people(600))
    version = engine_for().register(journey(WELCOME))
    engine_for().enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    seen: list[list[int]] = [[], []]

    def work(n: int) -> None:
        eng = engine_for()
        versions = {v.id: v for v in eng.versions("welcome_test")}
        while (stats := eng.tick_batch(versions, now=T0, batch_size=50)).processed:
            seen[n].extend(stats.ids)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen[0]) + len(seen[1]) == 600
    assert not set(seen[0]) & set(seen[1])
    assert seen[0] and seen[1], "both workers took a share"
    with Session(store) as session:
        assert session.scalar(select(func.count(func.distinct(Message.contact_id)))) == 600
        assert session.scalar(select(func.count()).select_from(Message)) == 600


def test_a_broadcast_is_claimed_in_index_order_with_statistics(store: Engine, engine_for) -> None:
    """A bulk enrolment and a worker filling the outbox ANALYZE what they wrote: without
    statistics PostgreSQL sorted every due enrolment on each tick's claim and read the hand-over's
    rows through every dead entry of ix_messages_active (benchmarks/README.md)."""
    if store.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner")
    with store.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO contacts (external_id, email, attributes, created_at, updated_at) "
            "SELECT 'B' || i, 'b' || i || '@example.com', '{}', now(), now() "
            "FROM generate_series(1, 6000) AS i"
        )
    eng = engine_for()
    version = eng.register(journey(WELCOME))
    enrolled = eng.enroll_select(
        version,
        select(Contact.id.label("contact_id"), Contact.external_id.label("entry_key")),
        now=T0,
    )
    assert enrolled == 6000

    def tuples(table: str) -> float:
        with store.connect() as conn:
            return float(
                conn.exec_driver_sql(
                    f"SELECT reltuples FROM pg_class WHERE relname = '{table}'"
                ).scalar_one()
            )

    assert tuples("enrollments") == 6000  # -1 until analysed
    with store.connect() as conn:
        plan = "\n".join(
            row[0]
            for row in conn.exec_driver_sql(
                "EXPLAIN SELECT id FROM enrollments WHERE journey_id IN (%(v)s) "
                "AND status = 'active' AND next_due_at <= %(t)s "
                "ORDER BY next_due_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED",
                {"v": version.id, "t": T0},
            )
        )
    assert "ix_enrollments_status_next_due_at_id" in plan and "Sort" not in plan, plan
    versions = {version.id: version}
    for _ in range(6):
        eng.tick_batch(versions, now=T0, batch_size=1000, claim_token="t" * 32)
    assert tuples("messages") >= 5000  # the outbox too, once 5,000 rows were written


def test_workers_starting_at_once_register_one_version(store: Engine, engine_for) -> None:
    """Every worker registers journeys/*.yaml when it starts; started together, they race."""
    start = threading.Barrier(8)
    got: list[int] = []
    errors: list[BaseException] = []

    def register() -> None:
        eng = engine_for()
        start.wait()
        try:
            got.append(eng.register(journey(WELCOME)).id)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(set(got)) == 1 and len(got) == 8
    with Session(store) as session:
        assert session.scalar(select(func.count()).select_from(JourneyRow)) == 1


def test_wait_until_split_update_and_webhook(store: Engine, engine_for) -> None:
    import http.server
    import socketserver

    calls: list[dict[str, Any]] = []
    answers = [500, 200]  # the first call fails: retried later, the second succeeds

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append({"body": body, "key": self.headers["Idempotency-Key"]})
            self.send_response(answers.pop(0) if answers else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folks = people(40, attributes={"renewal_date": "2026-03-20"})
    folks[0]["timezone"] = "America/New_York"
    ids = add_contacts(store, folks)
    eng = engine_for()
    version = eng.register(
        journey(f"""
name: misc_test
trigger: {{type: api}}
steps:
  - id: tag
    type: update_contact
    set: {{stage: "welcomed {{{{ contact.first_name }}}}", score: 3}}
  - id: coin
    type: split
    paths: [{{weight: 1, next: renewal}}, {{weight: 1, next: done}}]
  - id: renewal
    type: wait_until
    attribute: renewal_date
    offset: -3 days
    at: "09:00"
  - id: hook
    type: webhook
    url: http://127.0.0.1:{server.server_address[1]}/hook
    body: {{source: tidings}}
  - id: done
    type: exit
""")
    )
    eng.enroll_contacts(version, ids.values(), entry_key="k", now=T0)
    eng.tick("misc_test", now=T0)
    with Session(store) as session:
        attrs = session.scalar(select(Contact.attributes).where(Contact.id == ids["P0"]))
        rows = {
            c: (step, due)
            for c, step, due in session.execute(
                select(Enrollment.contact_id, Enrollment.step_id, Enrollment.next_due_at)
            )
        }
    assert attrs == {"renewal_date": "2026-03-20", "stage": "welcomed Pat0", "score": 3}
    waiting = {c: due for c, (step, due) in rows.items() if step == "renewal"}
    assert 8 <= len(waiting) <= 32  # both paths of the split are taken
    berlin = datetime(2026, 3, 17, 8, 0, tzinfo=UTC)  # 09:00 CET, 3 days before the 20th
    new_york = datetime(2026, 3, 17, 13, 0, tzinfo=UTC)  # 09:00 EDT
    for contact_id, due in waiting.items():
        assert due == (new_york if contact_id == ids["P0"] else berlin)
    assert eng.tick("misc_test", now=T0).processed == 0  # the split is stable: nothing moves
    eng.tick("misc_test", now=new_york)  # all reach the webhook; the first call gets a 500
    assert len(calls) == len(waiting)
    eng.tick("misc_test", now=new_york + timedelta(minutes=2))  # that one is called again
    keys = [c["key"] for c in calls]
    assert len(calls) == len(waiting) + 1 and keys.count(keys[0]) == 2
    assert {c["body"]["source"] for c in calls} == {"tidings"}
    with Session(store) as session:
        assert (
            session.scalar(
                select(func.count()).select_from(Enrollment).where(Enrollment.status == "active")
            )
            == 0
        )
    server.shutdown()
