"""Export and erasure (crm/erasure.py) on SQLite and PostgreSQL: everything stored about a
person comes out, then goes, the counts stay, and a re-import is refused as suppressed."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text, update

from tests.analytics.seeding import EXPERIMENT, T0, seed_store
from tidings.analytics.attribution_run import run_attribution
from tidings.analytics.experiment_report import experiment_report
from tidings.analytics.report import journey_report
from tidings.config import Settings, get_settings
from tidings.crm.consent import ConsentWish, set_consents, suppress
from tidings.crm.erasure import POLICY, erase_contact, export_contact
from tidings.crm.importer import import_contacts, import_events, import_orders
from tidings.crm.models import (
    Attribution,
    Base,
    Contact,
    Conversion,
    Enrollment,
    Erasure,
    ErasureSuppression,
    Message,
    MessageEvent,
    OptInRequest,
    SegmentChange,
    SegmentMembership,
    TestSend,
    TopicSubscription,
)
from tidings.crm.suppression import Hasher, Identity, check_identity, release
from tidings.segments.inputs import Change
from tidings.segments.live import encode

UNTIL = datetime(2027, 1, 1, tzinfo=UTC)
PHONE = "+14155550123"
NAME = "Zebediah"
SECRET_STREET = "12 Quiet Lane"


def referring_tables(metadata: Any = Base.metadata) -> set[str]:
    """Every table that refers to a contact: a contact_id column, or a foreign key chain to a
    table that has one (message_events -> messages -> contacts)."""
    tables = metadata.tables
    found = {"contacts"}
    grew = True
    while grew:
        grew = False
        for name, table in tables.items():
            if name in found:
                continue
            if "contact_id" in table.c or any(
                fk.column.table.name in found for fk in table.foreign_keys
            ):
                found.add(name)
                grew = True
    return found


def test_every_table_that_refers_to_a_contact_is_exported_and_erased() -> None:
    """Add a table with a contact_id (or a key to one that has it) and this fails until
    crm/erasure.py says what export and erasure do with it."""
    from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table

    # suppressions hold addresses, not ids: named in POLICY by hand
    assert referring_tables() | {"suppressions"} == set(POLICY)
    # the check can fail: new tables referring to a contact, directly or not, are found
    extra = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(extra)
    Table("loyalty_points", extra, Column("id", Integer), Column("contact_id", Integer))
    Table(
        "page_views",
        extra,
        Column("id", Integer),
        Column("event_id", Integer, ForeignKey("events.id")),
    )
    assert referring_tables(extra) - set(POLICY) == {"loyalty_points", "page_views"}


def _dump(db: Engine) -> str:
    """Every row of every table, as text: what a person's data must be absent from."""
    out = []
    with db.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                out.append(json.dumps(dict(row), default=str))
    return "\n".join(out)


def _pick(db: Engine) -> tuple[int, str, str]:
    """A seeded contact with an order conversion that attribution credits to its messages."""
    with db.begin() as conn:
        run_attribution(conn, until=UNTIL)
        cid = conn.execute(
            select(Conversion.contact_id)
            .join(Attribution, Attribution.conversion_id == Conversion.id)
            .where(Conversion.order_id.is_not(None))
            .order_by(Conversion.contact_id)
            .limit(1)
        ).scalar_one()
        ext, email = conn.execute(
            select(Contact.external_id, Contact.email).where(Contact.id == cid)
        ).one()
    return cid, ext, email


def _fill_every_table(db: Engine, tmp_path: Path, cid: int, ext: str, email: str) -> Path:
    """Data about the contact in every table, through the importers where there is one."""
    row = tmp_path / "contacts.csv"
    row.write_text(
        "external_id,email,phone,first_name,last_name,consent_email,consent_sms,street\n"
        f"{ext},{email},{PHONE},{NAME},Quux,yes,yes,{SECRET_STREET}\n"
    )
    assert import_contacts(row, engine=db).updated == 1
    events = tmp_path / "events.csv"
    events.write_text(
        "external_id,name,occurred_at,page\n"
        f"{ext},product.viewed,2026-11-03T10:00:00,/shoes?ref={email}\n"
    )
    assert import_events(events, engine=db).inserted == 1
    orders = tmp_path / "orders.csv"
    orders.write_text(
        "order_id,external_id,total,currency,status,placed_at,shipping_address\n"
        f"ZZ-1,{ext},19.90,EUR,paid,2026-11-04T10:00:00,{SECRET_STREET}\n"
    )
    assert import_orders(orders, engine=db).inserted == 1
    with db.begin() as conn:
        set_consents(conn, [ConsentWish(cid, "sms", "marketing", "revoked")], source="twilio:STOP")
        suppress(conn, [("sms", PHONE, "stop", "twilio:STOP", {"From": PHONE})])
        conn.execute(insert(SegmentMembership).values(segment="vip", contact_id=cid, entered_at=T0))
        conn.execute(
            insert(TopicSubscription).values(
                contact_id=cid, channel="email", topic="offers", status="revoked", source="page"
            )
        )
        conn.execute(
            insert(OptInRequest).values(
                contact_id=cid,
                channel="email",
                purpose="marketing",
                source="api:signup",
                expires_at=T0,
                detail={"email": email},
            )
        )
        conn.execute(
            insert(TestSend).values(
                kind="test",
                idempotency_key="t1",
                journey="promo",
                step_id="hello",
                channel="email",
                template="welcome",
                contact_id=cid,
                to_address="qa@shop.example",
                subject=f"[TEST] Hello {NAME}",
            )
        )
        conn.execute(  # a change a live segment has not evaluated yet
            insert(SegmentChange).values(
                contact_id=cid, change=encode(Change.contact(frozenset({"street"}))), recorded_at=T0
            )
        )
        conn.execute(
            update(Enrollment)
            .where(Enrollment.contact_id == cid)
            .values(context={"data": {"name": NAME}}, status="active")
        )
        conn.execute(
            update(Message)
            .where(Message.contact_id == cid)
            .values(subject=f"Hello {NAME}", meta={"context": {"street": SECRET_STREET}})
        )
        conn.execute(
            update(MessageEvent)
            .where(MessageEvent.message_id.in_(select(Message.id).where(Message.contact_id == cid)))
            .values(payload={"email": email, "ip": "203.0.113.9"}, url=None)
        )
        conn.execute(  # an inbound SMS from their phone: no message, the number in the payload
            insert(MessageEvent).values(
                message_id=None,
                provider="twilio",
                provider_event_id="SMinbound1",
                type="inbound",
                occurred_at=T0,
                machine=False,
                payload={"From": PHONE, "Body": f"this is {NAME}"},
            )
        )
        run_attribution(conn, until=UNTIL)
    return row


def _reports(db: Engine) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    with db.begin() as conn:
        journey = journey_report(conn, "promo", now=UNTIL).to_dict()
        experiment = experiment_report(conn, EXPERIMENT, record=False, now=UNTIL).to_dict()
        totals = run_attribution(conn, until=UNTIL).totals
    journey.pop("generated_at", None)
    experiment.pop("generated_at", None)
    return journey, experiment, sorted((t.journey, t.model, t.value) for t in totals)


def test_export_erase_reimport_and_the_reports_still_add_up(store: Engine, tmp_path: Path) -> None:
    seed_store(store)
    cid, ext, email = _pick(store)
    csv_row = _fill_every_table(store, tmp_path, cid, ext, email)
    (tmp_path / "outbox").mkdir()
    with store.connect() as conn:
        some_message = conn.execute(
            select(Message.id).where(Message.contact_id == cid).limit(1)
        ).scalar_one()
    (tmp_path / "outbox" / f"{some_message}.eml").write_text(f"To: {email}\n\nHi {NAME}")

    # article 15/20: everything, one section per table, the person's data in it
    document = export_contact(store, cid)
    assert document["format"] == "tidings.contact-export/1"
    assert document["contact"]["phone"] == PHONE
    assert document["contact"]["attributes"]["street"] == SECRET_STREET
    empty = {name for name, rows in document["tables"].items() if not rows}
    assert empty == {"erasures", "erasure_suppressions"}  # nothing erased yet
    text_of = json.dumps(document)
    for secret in (email, PHONE, NAME, SECRET_STREET, "203.0.113.9", "/shoes?ref="):
        assert secret in text_of
    assert {o["order_id"] for o in document["tables"]["orders"]} >= {"ZZ-1"}
    assert document["tables"]["message_events"][-1]["payload"]["From"] == PHONE

    before = _reports(store)
    contacts_before = _count(store, Contact)
    settings = get_settings().model_copy(update={"outbox_dir": tmp_path / "outbox"})
    result = erase_contact(
        store, cid, actor="cli:test", reason="customer request", settings=settings
    )
    assert not result.already
    counts = result.counts
    assert counts["contacts"] == {"anonymised": 1}
    assert counts["consents"]["deleted"] == 2 and counts["consent_changes"]["deleted"] >= 3
    assert counts["suppressions"] == {"deleted": 1}
    assert counts["segment_memberships"] == {"deleted": 1}
    assert counts["events"]["deleted"] >= 1  # the product view and the order's own events
    assert counts["orders"] == {"deleted": 1, "anonymised": 1}  # ZZ-1 gone, the converted kept
    assert counts["enrollments"]["exited"] == 1
    assert counts["messages"]["anonymised"] >= 1
    assert counts["messages"]["outbox_files_deleted"] == 1
    assert counts["message_events"]["deleted"] == 1  # the inbound SMS
    assert counts["conversions"]["kept"] >= 1 and counts["attributions"]["kept"] >= 5
    assert counts["erasure_suppressions"] == {"kept": 3}
    assert not (tmp_path / "outbox" / f"{some_message}.eml").exists()

    # nothing personal is left anywhere in the store
    dump = _dump(store)
    for secret in (email, PHONE, NAME, SECRET_STREET, "203.0.113.9", "ref=", f'"{ext}"', "ZZ-1"):
        assert secret not in dump, secret
    # the anonymous row stays, and every figure is what it was
    assert _count(store, Contact) == contacts_before
    assert _reports(store) == before

    # the log: when, who, what
    with store.connect() as conn:
        log = conn.execute(select(Erasure)).mappings().one()
    assert (log["contact_id"], log["actor"], log["reason"]) == (cid, "cli:test", "customer request")
    assert log["counts"] == counts

    # idempotent: a second erasure finds nothing, logs nothing, changes no figure
    again = erase_contact(store, cid, actor="cli:test")
    assert again.already and again.erasure_id == result.erasure_id
    assert _count(store, Erasure) == 1 and _reports(store) == before

    # the export of what is left says it is erased and holds no personal data
    after = export_contact(store, cid)
    assert after["erased"] and after["contact"]["email"] is None
    assert [e["actor"] for e in after["tables"]["erasures"]] == ["cli:test"]

    # the same CSV row again: reported as suppressed, not imported, nobody new
    report = import_contacts(csv_row, engine=store)
    assert (report.read, report.suppressed, report.inserted, report.updated) == (1, 1, 0, 0)
    assert report.accepted == 0 and report.rejected == 0
    (problem,) = report.suppressions
    assert problem.line == 2 and "erased" in problem.reason
    assert f"erasure #{result.erasure_id}" in problem.reason
    assert report.to_dict()["suppressed"] == 1
    assert _count(store, Contact) == contacts_before
    # by email only, by phone only: the same
    other = tmp_path / "by_email.csv"
    other.write_text(f"email,phone\n{email.upper()},\nnew@example.com,{PHONE}\n")
    report = import_contacts(other, engine=store)
    assert (report.suppressed, report.inserted) == (2, 0)
    assert [p.column for p in report.suppressions] == ["email", "phone"]
    # events and orders naming them are suppressed too, not "import the contact first"
    events = tmp_path / "late_events.csv"
    events.write_text(f"email,name,occurred_at\n{email},page.viewed,2026-12-01T00:00:00\n")
    report = import_events(events, engine=store)
    assert (report.suppressed, report.rejected, report.inserted) == (1, 0, 0)
    assert _dump(store).count(email) == 0


def _count(db: Engine, model: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_a_consent_again_lifts_the_suppression_and_a_new_contact_starts(
    store: Engine, tmp_path: Path
) -> None:
    with store.begin() as conn:
        cid = conn.execute(
            insert(Contact)
            .values(external_id="X1", email="ann@example.com", phone=PHONE, attributes={})
            .returning(Contact.id)
        ).scalar_one()
    erase_contact(store, cid, actor="cli:test")
    with store.connect() as conn:
        assert check_identity(conn, Identity(email="ann@example.com")) is not None
    with store.begin() as conn:
        assert release(conn, [Identity("X1", "ann@example.com")], by="api:shop") == 2
        assert release(conn, [Identity("X1", "ann@example.com")], by="api:shop") == 0
    with store.connect() as conn:
        assert check_identity(conn, Identity(email="ann@example.com")) is None
        assert check_identity(conn, Identity(phone=PHONE)) is not None  # not named: stays
        released = conn.execute(
            select(ErasureSuppression.released_by).where(
                ErasureSuppression.released_at.is_not(None)
            )
        ).scalars()
        assert set(released) == {"api:shop"}
    row = tmp_path / "c.csv"
    row.write_text("external_id,email\nX1,ann@example.com\n")
    report = import_contacts(row, engine=store)
    assert (report.inserted, report.suppressed) == (1, 0)
    with store.connect() as conn:
        new = conn.execute(select(Contact.id).where(Contact.external_id == "X1")).scalar_one()
    assert new != cid  # a new person record; the erased one stays anonymous
    # erased again later: the released suppression is in force again
    erase_contact(store, new, actor="cli:test")
    assert import_contacts(row, engine=store).suppressed == 1


def test_an_import_hashes_nobody_until_someone_is_erased(
    store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that suppresses nobody is not hashed against; each batch asks again, so a person
    erased since is caught."""
    hashed: list[str] = []
    digest = Hasher.digest

    def counted(self: Hasher, kind: str, value: str) -> str:
        hashed.append(kind)
        return digest(self, kind, value)

    monkeypatch.setattr(Hasher, "digest", counted)
    rows = tmp_path / "c.csv"
    rows.write_text(
        "external_id,email,phone\nX1,ann@example.com,\nX2,bo@example.com,+14155550124\n"
    )
    assert import_contacts(rows, engine=store).inserted == 2
    assert [kind for kind in hashed if kind != "key-id"] == []
    with store.connect() as conn:
        ann = conn.execute(select(Contact.id).where(Contact.external_id == "X1")).scalar_one()
    erase_contact(store, ann, actor="cli:test")
    report = import_contacts(rows, engine=store)
    assert (report.suppressed, report.inserted, report.unchanged) == (1, 0, 1)
    assert {"external_id", "email"} <= set(hashed)


def test_the_hash_is_keyed_and_another_key_does_not_recognise_it(
    store: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with store.begin() as conn:
        cid = conn.execute(
            insert(Contact).values(email="kim@example.com", attributes={}).returning(Contact.id)
        ).scalar_one()
    one = Settings(database_url="sqlite://", suppression_key="key-one")
    erase_contact(store, cid, actor="cli:test", settings=one)
    with store.connect() as conn:
        (digest,) = conn.execute(select(ErasureSuppression.digest)).scalars()
    assert digest == Hasher("key-one").digest("email", "kim@example.com")
    standard = hmac.new(b"key-one", b"email\x1fkim@example.com", hashlib.sha256).hexdigest()
    assert digest == standard  # RFC 2104 HMAC-SHA256, whatever the implementation
    assert "kim" not in _dump(store)
    two = Settings(database_url="sqlite://", suppression_key="key-two")
    with store.connect() as conn, caplog.at_level("WARNING"):
        assert check_identity(conn, Identity(email="kim@example.com"), settings=one)
        assert check_identity(conn, Identity(email="kim@example.com"), settings=two) is None
    assert "another TIDINGS_SUPPRESSION_KEY" in caplog.text


def test_an_erased_contact_is_in_no_segment(store: Engine) -> None:
    from tidings.segments.compile import compile_core
    from tidings.segments.core import Const

    with store.begin() as conn:
        ids = [
            conn.execute(
                insert(Contact)
                .values(email=f"s{i}@example.com", attributes={})
                .returning(Contact.id)
            ).scalar_one()
            for i in range(3)
        ]
    erase_contact(store, ids[0], actor="cli:test")
    query = compile_core(Const(True), dialect=store.dialect.name, now=T0)
    with store.connect() as conn:
        members = set(conn.execute(query).scalars())
        everyone = set(conn.execute(text("SELECT id FROM contacts")).scalars())
    assert ids[0] in everyone and members == set(ids[1:])
