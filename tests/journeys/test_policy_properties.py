"""Property tests: whatever the journey and the data, no message is queued for sending to a
contact without consent, to a suppressed or missing address, inside quiet hours, or over the
frequency cap. Each example builds a store (SQLite in memory), runs the real engine over
simulated days, and checks every message it decided to send."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.config import Settings
from tidings.crm.db import make_engine
from tidings.crm.models import Base, Consent, Contact, Message, Suppression
from tidings.journeys.engine import JourneyEngine
from tidings.journeys.schema import Journey

ZONES = ["UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo", "Australia/Sydney"]
START = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)  # a daylight-saving weekend in Europe

contacts_st = st.lists(
    # weighted towards contacts who can receive, so that most examples do send something
    st.fixed_dictionaries(
        {
            "email": st.sampled_from([True, True, True, False]),
            "phone": st.sampled_from([True, True, True, False]),
            "consent_email": st.sampled_from(["granted", "granted", "revoked", None]),
            "consent_sms": st.sampled_from(["granted", "granted", "revoked", None]),
            "transactional_sms": st.sampled_from(["revoked", None, None]),
            "suppressed_email": st.sampled_from([False, False, False, True]),
            "suppressed_sms": st.sampled_from([False, False, False, True]),
            "zone": st.sampled_from(ZONES),
        }
    ),
    min_size=1,
    max_size=8,
)
steps_st = st.lists(
    st.tuples(st.sampled_from(["email", "sms"]), st.integers(min_value=0, max_value=30)),
    min_size=1,
    max_size=4,
)
cap_st = st.one_of(
    st.just("off"),
    st.builds(lambda n, d: f"{n} per {d} days", st.integers(1, 3), st.integers(1, 7)),
)
quiet_st = st.one_of(
    st.just("off"),
    st.builds(lambda a, b: f"{a:02d}:00-{b:02d}:00", st.integers(0, 23), st.integers(0, 23)),
)


def build_journey(steps: list[tuple[str, int]], transactional: bool) -> Journey:
    body: list[dict[str, Any]] = []
    for n, (channel, wait_hours) in enumerate(steps):
        template = "welcome" if channel == "email" else "order_shipped"
        body.append({"id": f"s{n}", "type": channel, "template": template})
        if wait_hours:
            body.append({"id": f"w{n}", "type": "wait", "duration": f"{wait_hours} hours"})
    return Journey.model_validate(
        {
            "name": "prop",
            "trigger": {"type": "api"},
            "settings": {"transactional": transactional},
            "steps": body,
        }
    )


def in_quiet(moment: datetime, zone: str, window: str) -> bool:
    if window == "off":
        return False
    start, end = (time(int(part[:2])) for part in window.split("-"))
    clock = moment.astimezone(ZoneInfo(zone)).time()
    if start == end:
        return False
    return start <= clock < end if start < end else (clock >= start or clock < end)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    people=contacts_st,
    steps=steps_st,
    cap=cap_st,
    quiet=quiet_st,
    transactional=st.booleans(),
    offset=st.integers(0, 47),
)
def test_policy_holds_whatever_the_journey(
    people: list[dict[str, Any]],
    steps: list[tuple[str, int]],
    cap: str,
    quiet: str,
    transactional: bool,
    offset: int,
) -> None:
    db = make_engine("sqlite:///:memory:")
    Base.metadata.create_all(db)
    now = START + timedelta(hours=offset)
    with Session(db) as session, session.begin():
        for n, person in enumerate(people):
            contact = Contact(
                external_id=f"c{n}",
                timezone=person["zone"],
                email=f"c{n}@example.com" if person["email"] else None,
                phone=f"+1415555{n:04d}" if person["phone"] else None,
            )
            session.add(contact)
            session.flush()
            person["id"] = contact.id
            for channel in ("email", "sms"):
                status = person[f"consent_{channel}"]
                if status:
                    session.add(
                        Consent(
                            contact_id=contact.id,
                            channel=channel,
                            purpose="marketing",
                            status=status,
                            source="t",
                        )
                    )
                address = contact.email if channel == "email" else contact.phone
                if person[f"suppressed_{channel}"] and address:
                    session.add(
                        Suppression(channel=channel, address=address, reason="t", source="t")
                    )
            if person["transactional_sms"]:
                session.add(
                    Consent(
                        contact_id=contact.id,
                        channel="sms",
                        purpose="transactional",
                        status="revoked",
                        source="t",
                    )
                )
    engine = JourneyEngine(
        db=db, settings=Settings(frequency_cap=cap, quiet_hours=quiet, secret_key="p")
    )
    version = engine.register(build_journey(steps, transactional))
    engine.enroll_contacts(version, [p["id"] for p in people], entry_key="p", now=now)
    clock = now
    for _ in range(12):  # a few days of ticks, at each due time
        engine.tick("prop", now=clock)
        clock += timedelta(hours=7)

    by_id = {p["id"]: p for p in people}
    with Session(db) as session:
        queued = session.execute(
            select(
                Message.contact_id,
                Message.channel,
                Message.purpose,
                Message.created_at,
                Message.to_address,
            ).where(Message.status == "queued")
        ).all()
    marketing: dict[int, list[datetime]] = {}
    for contact_id, channel, purpose, created, address in queued:
        person = by_id[contact_id]
        assert address, "sent to no address"
        assert not person[f"suppressed_{channel}"], "sent to a suppressed address"
        if purpose == "marketing":
            assert person[f"consent_{channel}"] == "granted", "marketing without consent"
            assert not in_quiet(created, person["zone"], quiet), "sent inside quiet hours"
            marketing.setdefault(contact_id, []).append(created)
        else:
            assert transactional
            assert not (channel == "sms" and person["transactional_sms"]), "sent after STOP"
    if cap != "off":
        most, days = int(cap.split()[0]), int(cap.split()[2])
        for times in marketing.values():
            times.sort()
            for i, first in enumerate(times):
                window = [t for t in times[i:] if t < first + timedelta(days=days)]
                assert len(window) <= most, "over the frequency cap"
