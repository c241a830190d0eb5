"""Subscription topics: a journey with ``topic:`` reaches only subscribed contacts, a segment
``topic:`` rule selects the same people, and channels/topics.yaml errors point at the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from tests.conftest import FIXTURE_PROJECT
from tests.journeys.test_engine import add_contacts, people
from tidings.channels.outbox import OutboxChannel
from tidings.config import Settings
from tidings.crm.models import Journey as JourneyRow
from tidings.crm.models import Message, TopicSubscription
from tidings.crm.topics import parse_topics
from tidings.errors import InputError
from tidings.journeys.loader import load_text
from tidings.journeys.runtime import Runtime
from tidings.journeys.triggers import Target, trigger_journey
from tidings.segments.compile import compile_core
from tidings.segments.loader import load_catalog
from tidings.yamlfile import InputErrors

OFFERS = """\
name: offers_blast
topic: offers
trigger: {type: api}
steps:
  - {id: hello, type: email, template: welcome}
"""
NEWSLETTER = """\
name: monthly
topic: newsletter
trigger: {type: api}
steps:
  - {id: hello, type: email, template: welcome}
"""


@pytest.fixture
def runtime(store_url: str, tmp_path: Path) -> Runtime:
    project = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, project)
    (project / "journeys" / "offers_blast.yaml").write_text(OFFERS)
    (project / "journeys" / "monthly.yaml").write_text(NEWSLETTER)
    (project / "segments" / "offer_takers.yaml").write_text(
        "name: offer_takers\nrule: {topic: offers}\n"
    )
    (project / "segments" / "newsletter_readers.yaml").write_text(
        "name: newsletter_readers\nrule: {topic: {name: newsletter, channel: email}}\n"
    )
    settings = Settings(
        project_dir=project,
        database_url=store_url,
        outbox_dir=str(tmp_path / "outbox"),
        secret_key="test-secret",
        frequency_cap="off",
        quiet_hours="off",
    )
    outbox = OutboxChannel(folder=tmp_path / "outbox")
    built = Runtime.from_settings(settings, channels={"email": outbox, "sms": outbox})
    built.load_journeys()
    assert not built.problems, built.problems
    return built


def _choose(runtime: Runtime, choices: list[tuple[int, str, str]]) -> None:
    with runtime.db.begin() as conn:
        for cid, topic, status in choices:
            conn.execute(
                insert(TopicSubscription).values(
                    contact_id=cid, channel="email", topic=topic, status=status, source="test"
                )
            )


def _outcome(runtime: Runtime, journey: str) -> dict[int, tuple[str, str | None]]:
    with runtime.db.connect() as conn:
        rows = conn.execute(
            select(Message.contact_id, Message.status, Message.error)
            .join(JourneyRow, JourneyRow.id == Message.journey_id)
            .where(JourneyRow.name == journey)
        ).all()
    return {r.contact_id: (r.status, r.error) for r in rows}


def test_a_topic_only_narrows_marketing_consent(runtime: Runtime) -> None:
    everyone = people(5)
    everyone[3]["consent"] = {"email": "revoked"}
    everyone[4]["consent"] = {"email": "pending"}
    ids = add_contacts(runtime.db, everyone)
    p0, p1, p2, p3, p4 = (ids[f"P{i}"] for i in range(5))
    # P0 chose offers; P1 made no choice; P2 left the newsletter; P3 chose offers but has no
    # marketing consent; P4's consent awaits confirmation (double opt-in)
    _choose(runtime, [(p0, "offers", "granted"), (p2, "newsletter", "revoked")])
    _choose(runtime, [(p3, "offers", "granted"), (p4, "offers", "granted")])
    targets = [Target(f"P{i}") for i in range(5)]
    trigger_journey(runtime, "offers_blast", targets)
    trigger_journey(runtime, "monthly", targets)
    offers = _outcome(runtime, "offers_blast")
    assert offers[p0][0] == "sent"
    assert offers[p1] == ("held", "topic_unsubscribed")  # opt-in: out until chosen
    assert offers[p2] == ("held", "topic_unsubscribed")
    assert offers[p3] == ("held", "no_consent")  # the topic cannot widen consent
    assert offers[p4] == ("held", "no_consent")  # pending is not granted
    monthly = _outcome(runtime, "monthly")
    assert monthly[p0][0] == monthly[p1][0] == "sent"  # opt-out: in until they leave
    assert monthly[p2] == ("held", "topic_unsubscribed")
    assert monthly[p3] == ("held", "no_consent")
    with runtime.db.connect() as conn:
        topics = {m.get("topic") for m in conn.scalars(select(Message.meta))}
    assert topics == {"offers", "newsletter"}  # the unsubscribe link knows the topic

    # the segment rule selects exactly who the journey can reach
    catalog = load_catalog(runtime.settings.segments_dir)
    dialect = runtime.db.dialect.name
    with runtime.db.connect() as conn:
        takers = set(conn.scalars(compile_core(catalog.core("offer_takers"), dialect=dialect)))
        readers = set(
            conn.scalars(compile_core(catalog.core("newsletter_readers"), dialect=dialect))
        )
    assert takers == {p0}
    assert readers == {p0, p1}


def test_topic_errors_name_file_line_and_key(tmp_path: Path) -> None:
    with pytest.raises(InputErrors) as caught:
        parse_topics(
            "newsletter:\n  channels: [email]\n  default: opt-out\n"
            "offers:\n  channels: [email, fax]\n  default: opt_in\n  colour: red\n"
            "Bad-Name:\n  default: opt-in\n",
            source="channels/topics.yaml",
        )
    text = str(caught.value)
    assert "channels/topics.yaml:8:1: Bad-Name: a topic name is lower case" in text
    assert "channels/topics.yaml:5:" in text and "offers.channels[1]" in text
    assert "channels/topics.yaml:6:" in text and "offers.default" in text
    assert "channels/topics.yaml:7:" in text and "unknown key 'colour'" in text
    with pytest.raises(InputError, match=r"topics.yaml:3:1: .*default' is required"):
        parse_topics("a:\n  channels: [email]\nb: {}\n", source="topics.yaml")


def test_a_journey_naming_an_unknown_or_wrong_channel_topic_is_refused(
    runtime: Runtime,
) -> None:
    refs = runtime.references()
    with pytest.raises(
        InputError,
        match=r"j.yaml:2:1: topic: no subscription topic named "
        r"'ofers' .*did you mean 'offers'",
    ):
        load_text(OFFERS.replace("topic: offers", "topic: ofers"), source="j.yaml", references=refs)
    sms = NEWSLETTER.replace("type: email, template: welcome", "type: sms, template: order_shipped")
    with pytest.raises(
        InputError, match=r"steps\[0\].type: topic 'newsletter' is not offered on sms"
    ):
        load_text(sms, source="j.yaml", references=refs)
    with pytest.raises(InputError, match="a transactional journey has no topic"):
        load_text(OFFERS + "settings: {transactional: true}\n", source="j.yaml")


def test_a_segment_naming_an_unknown_topic_is_refused(tmp_path: Path) -> None:
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "topics.yaml").write_text("offers: {default: opt-in}\n")
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "s.yaml").write_text("name: s\nrule:\n  topic: ofers\n")
    with pytest.raises(InputError, match=r"s.yaml:3:3: topic: no subscription topic named 'ofers'"):
        load_catalog(tmp_path / "segments")
