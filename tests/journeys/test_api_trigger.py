"""`type: api` journeys fired by a call (``trigger_journey``), and failures said plainly."""

from __future__ import annotations

import json
import shutil
import smtplib
import socket
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.channels.helpers import FAST
from tests.conftest import FIXTURE_PROJECT
from tests.journeys.test_engine import T0, add_contacts, people
from tidings.channels.outbox import OutboxChannel
from tidings.channels.smtp import SmtpChannel
from tidings.config import Settings
from tidings.crm.models import Enrollment, Message
from tidings.journeys.runtime import Runtime
from tidings.journeys.triggers import (
    Target,
    TriggerRefused,
    UnknownContacts,
    post_event,
    segment_targets,
    trigger_journey,
)

LAUNCH = """\
name: launch
description: A launch SMS with each contact's own code, fired by ops.
trigger: {type: api}
settings: {reentry: always}
steps:
  - {id: code, type: sms, template: launch}
"""
NEWS = """\
name: news
trigger: {type: api}
settings: {reentry: always}
steps:
  - {id: hello, type: email, template: welcome}
"""


def api_project(root: Path) -> Path:
    """The fixture project plus two `type: api` journeys and an SMS template reading data."""
    project = root / "project"
    shutil.copytree(FIXTURE_PROJECT, project)
    (project / "journeys" / "launch.yaml").write_text(LAUNCH)
    (project / "journeys" / "news.yaml").write_text(NEWS)
    (project / "templates" / "sms" / "launch.sms.j2").write_text(
        "Code {{ data.code }} / {{ code }} for the {{ launch }} launch.\n"
    )
    return project


def make_runtime(store_url: str, tmp_path: Path, **channels: object) -> Runtime:
    settings = Settings(
        project_dir=api_project(tmp_path),
        database_url=store_url,
        outbox_dir=str(tmp_path / "outbox"),
        secret_key="test-secret",
        frequency_cap="off",
        quiet_hours="off",
    )
    outbox = OutboxChannel(folder=tmp_path / "outbox")
    built = Runtime.from_settings(settings, channels={"email": outbox, "sms": outbox, **channels})
    built.load_journeys()
    assert not built.problems, built.problems
    return built


@pytest.fixture
def runtime(store_url: str, tmp_path: Path) -> Runtime:
    return make_runtime(store_url, tmp_path)


def sms_bodies(tmp_path: Path) -> list[str]:
    files = sorted((tmp_path / "outbox").glob("*.json"))
    records = [json.loads(p.read_text()) for p in files]
    return sorted(str(r["body"]).strip() for r in records if r.get("channel") == "sms")


def enrollments(runtime: Runtime) -> int:
    with Session(runtime.db) as session:
        return int(session.scalar(select(func.count()).select_from(Enrollment)) or 0)


def test_trigger_enrols_and_sends_at_once_with_each_contacts_data(
    runtime: Runtime, tmp_path: Path
) -> None:
    ids = add_contacts(runtime.db, people(3))
    targets = [Target("P0", data={"code": "A1"}), Target("p1@example.com", data={"code": "B2"})]
    outcome = trigger_journey(
        runtime, "launch", targets, data={"launch": "spring", "code": "X"}, key="k1", now=T0
    )
    assert (outcome.named, outcome.enrolled, outcome.already) == (2, 2, 0)
    assert (outcome.sent, outcome.failed, outcome.retry) == (2, 0, 0)
    assert outcome.contact_ids == [ids["P0"], ids["P1"]]
    assert sms_bodies(tmp_path) == [
        "Code A1 / A1 for the spring launch.",
        "Code B2 / B2 for the spring launch.",
    ]
    again = trigger_journey(runtime, "launch", targets, data={"launch": "spring"}, key="k1", now=T0)
    assert (again.enrolled, again.already, again.sent) == (0, 2, 0)  # same key: nobody twice
    by_id = trigger_journey(
        runtime, "launch", [Target(f"#{ids['P2']}")], data={"launch": "x", "code": "C3"}, now=T0
    )
    assert (by_id.enrolled, by_id.sent) == (1, 1)


def test_unknown_contacts_refuse_the_whole_call(runtime: Runtime) -> None:
    add_contacts(runtime.db, people(1))
    with pytest.raises(UnknownContacts) as refused:
        trigger_journey(runtime, "launch", [Target("P0"), Target("nobody"), Target("#999999")])
    assert [(i, t.ref) for i, t in refused.value.unknown] == [(1, "nobody"), (2, "#999999")]
    assert "2 contact(s) not found: 'nobody', '#999999'" in str(refused.value)
    assert enrollments(runtime) == 0


def test_only_active_api_journeys_can_be_triggered(runtime: Runtime) -> None:
    add_contacts(runtime.db, people(1))
    with pytest.raises(TriggerRefused) as event_journey:
        trigger_journey(runtime, "order_status", [Target("P0")])
    assert event_journey.value.status == 422
    assert "only `type: api` journeys" in str(event_journey.value)
    with pytest.raises(TriggerRefused) as unknown:
        trigger_journey(runtime, "no_such_journey", [Target("P0")])
    assert unknown.value.status == 404
    runtime.engine.set_status("launch", "paused")
    with pytest.raises(TriggerRefused) as paused:
        trigger_journey(runtime, "launch", [Target("P0")])
    assert paused.value.status == 409 and "journey 'launch' is paused" in str(paused.value)
    assert enrollments(runtime) == 0


def test_segment_targets_are_its_members_now(runtime: Runtime) -> None:
    ids = add_contacts(runtime.db, people(2))  # created at T0: new sign-ups at T0
    targets = segment_targets(runtime, "new_signups", now=T0)
    assert sorted(t.ref for t in targets) == sorted(f"#{i}" for i in ids.values())


def test_a_send_that_fails_says_why_and_for_whom(runtime: Runtime) -> None:
    add_contacts(runtime.db, people(1))
    outcome = post_event(  # the README's example: the SMS template needs a tracking_url
        runtime,
        contact_id=_id(runtime, "P0"),
        name="order.shipped",
        properties={"order": {"number": "1"}},
        now=T0,
    )
    assert (outcome.sent, outcome.failed) == (0, 1)
    [failure] = outcome.failures
    assert failure["status"] == "failed" and failure["count"] == 1
    assert "has no attribute 'tracking_url'" in failure["reason"]
    assert failure["contacts"] == ["P0"]


def _id(runtime: Runtime, external_id: str) -> int:
    from tidings.crm.models import Contact

    with Session(runtime.db) as session:
        return int(session.scalar(select(Contact.id).where(Contact.external_id == external_id)))


def refusing_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_relay_that_is_down_fails_fast_and_says_so(store_url: str, tmp_path: Path) -> None:
    port = refusing_port()
    smtp = SmtpChannel(host="127.0.0.1", port=port, security="none", timeout=5.0, retry=FAST)
    tries: list[int] = []
    connect = smtp._connect

    def counted() -> smtplib.SMTP:
        tries.append(1)
        return connect()

    smtp._connect = counted  # type: ignore[method-assign]
    runtime = make_runtime(store_url, tmp_path, email=smtp)
    add_contacts(runtime.db, people(20))
    outcome = trigger_journey(runtime, "news", [Target(f"P{i}") for i in range(20)], now=T0)
    assert (outcome.enrolled, outcome.sent, outcome.retry) == (20, 0, 20)
    assert len(tries) == FAST.max_attempts  # one round of retries, not one per message
    [failure] = outcome.failures
    assert failure == {
        "status": "retry",
        "reason": f"smtp: relay 127.0.0.1:{port} refused the connection",
        "count": 20,
        "contacts": ["P0", "P1", "P2", "P3", "P4"],
    }
    with Session(runtime.db) as session:  # back in the queue, to be tried again later
        assert set(session.scalars(select(Message.status))) == {"queued"}
