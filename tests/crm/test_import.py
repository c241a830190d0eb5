"""Import of contacts, events and orders on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from tidings.config import Settings
from tidings.crm import bulk, importer
from tidings.crm.db import make_engine, upgrade
from tidings.crm.importer import import_contacts, import_events, import_orders
from tidings.crm.models import Consent, ConsentChange, Contact, Event, Order
from tidings.crm.readers import ERROR, read_records
from tidings.crm.types import utcnow
from tidings.errors import InputError

DATA = Path(__file__).parent / "data"
MESSY = DATA / "messy_contacts.csv"


def _contacts(engine: Engine) -> dict[str, dict[str, Any]]:
    with Session(engine) as session:
        rows = session.scalars(select(Contact).order_by(Contact.id)).all()
    return {
        (c.external_id or c.email or ""): {
            "email": c.email,
            "phone": c.phone,
            "first_name": c.first_name,
            "last_name": c.last_name,
            "locale": c.locale,
            "timezone": c.timezone,
            "attributes": c.attributes,
        }
        for c in rows
    }


def _consents(engine: Engine) -> dict[tuple[str | None, str], str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Contact.external_id, Contact.email, Consent.channel, Consent.status).join(
                Consent, Consent.contact_id == Contact.id
            )
        ).all()
    return {(ext or email, channel): status for ext, email, channel, status in rows}


def test_messy_file_counts_reasons_and_state(store: Engine) -> None:
    report = import_contacts(MESSY, engine=store)

    # rejected: a row naming nobody, an unreadable consent, a broken line
    assert (report.read, report.accepted, report.rejected) == (15, 12, 3)
    assert (report.inserted, report.updated, report.unchanged) == (10, 0, 0)
    problems = {(e.line, e.column) for e in report.errors}
    assert problems == {(11, None), (13, "consent_email"), (14, None)}
    reasons = {e.line: e.reason for e in report.errors}
    assert "neither external_id nor email" in reasons[11]
    assert "has 2 fields where the header has 14" in reasons[14]
    # a bad optional field is left out of a row that is imported (an email too, beside an id)
    assert report.warned == 4
    assert {(w.line, w.column) for w in report.warnings} == {
        (3, "email"),
        (9, "timezone"),
        (10, "phone"),
        (12, "locale"),
    }
    warned = {w.line: w.reason for w in report.warnings}
    assert "Mars/Olympus" in warned[9] and "IANA" in warned[9]
    assert "imported without it" in warned[10]

    contacts = _contacts(store)
    assert set(contacts) == {
        "C001",
        "C002",
        "C003",
        "dan@example.com",
        "C004",
        "C005",
        "C006",
        "C007",
        "C010",
        "C011",
    }
    assert contacts["C002"]["email"] is None and contacts["C002"]["phone"] == "+16502530001"
    assert (contacts["C005"]["email"], contacts["C005"]["timezone"]) == ("eve@example.com", None)
    assert (contacts["C006"]["email"], contacts["C006"]["phone"]) == ("frank@example.com", None)
    assert contacts["C007"]["locale"] is None
    assert contacts["C001"] == {
        "email": "ann.lee@example.com",
        "phone": "+14155552671",
        "first_name": "Ann",
        "last_name": "Lee-Smith",  # the later row in the file wins
        "locale": "en_US",
        "timezone": "America/Los_Angeles",
        "attributes": {
            "plan": "pro",
            "zip": "02134",  # leading zero kept: text, not a number
            "signup_date": "2024-01-15",
            "lifetime_value": 1234.5,
            "vip": True,
        },
    }
    assert contacts["C003"]["phone"] == "+493012345678"
    assert contacts["C003"]["timezone"] == "Europe/Berlin"
    assert contacts["C003"]["attributes"] == {"plan": "pro", "vip": False}
    assert contacts["dan@example.com"]["first_name"] == "Daniel"  # merged by email
    assert contacts["C004"]["email"] == "ann.lee@example.com"  # same email, other external id
    assert contacts["C010"]["last_name"] == "O'Neil; Jr"
    assert contacts["C011"]["email"] == "kim@example.com"

    assert _consents(store) == {
        ("C001", "email"): "granted",
        ("C001", "sms"): "revoked",
        ("C002", "email"): "granted",
        ("C003", "email"): "granted",
        ("C003", "sms"): "granted",
        ("dan@example.com", "email"): "granted",
        ("C010", "email"): "revoked",
    }
    with store.connect() as conn:
        audit = conn.execute(select(ConsentChange.source, ConsentChange.status)).all()
    assert len(audit) == 7
    assert {source for source, _ in audit} == {"import:messy_contacts.csv"}


def test_reimport_changes_nothing(store: Engine) -> None:
    import_contacts(MESSY, engine=store)
    before = _contacts(store)
    with store.connect() as conn:
        stamps = conn.execute(select(Contact.id, Contact.updated_at)).all()
    again = import_contacts(MESSY, engine=store)
    assert (again.inserted, again.updated, again.unchanged, again.rejected) == (0, 0, 10, 3)
    assert _contacts(store) == before
    with store.connect() as conn:
        assert conn.execute(select(Contact.id, Contact.updated_at)).all() == stamps
        assert conn.scalar(select(func.count()).select_from(ConsentChange)) == 7


def test_batch_size_does_not_change_the_result(store: Engine, tmp_path: Path) -> None:
    import_contacts(MESSY, engine=store, settings=Settings(import_batch_size=2))
    batched = _contacts(store)
    consents = _consents(store)
    reference = make_engine(f"sqlite:///{tmp_path / 'ref.db'}")
    upgrade(reference)
    import_contacts(MESSY, engine=reference)
    assert batched == _contacts(reference)
    assert consents == _consents(reference)


def test_update_and_consent_change_are_recorded(store: Engine, tmp_path: Path) -> None:
    import_contacts(MESSY, engine=store)
    change = tmp_path / "change.csv"
    change.write_text("external_id,consent_sms,plan\nC001,yes,enterprise\nC003,1,pro\n")
    report = import_contacts(change, engine=store)
    assert (report.inserted, report.updated, report.unchanged) == (0, 1, 1)
    assert _consents(store)[("C001", "sms")] == "granted"
    assert _contacts(store)["C001"]["attributes"]["plan"] == "enterprise"
    with store.connect() as conn:
        trail = conn.execute(
            select(ConsentChange.previous_status, ConsentChange.status, ConsentChange.source)
            .where(ConsentChange.channel == "sms")
            .order_by(ConsentChange.id)
        ).all()
    assert trail[-1] == ("revoked", "granted", "import:change.csv")


def test_jsonl_contacts_with_nested_attributes(store: Engine, tmp_path: Path) -> None:
    path = tmp_path / "contacts.jsonl"
    lines = [
        {"external_id": 7, "email": "x@example.com", "attributes": {"score": 3, "tags": ["a"]}},
        {"external_id": "8", "email": "nope"},
        "not an object",
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    report = import_contacts(path, engine=store)
    assert (report.inserted, report.rejected, report.warned) == (2, 2, 1)
    assert [e.line for e in report.errors] == [3, 4]
    assert [(w.line, w.column) for w in report.warnings] == [(2, "email")]
    assert _contacts(store)["7"]["attributes"] == {"score": 3, "tags": ["a"]}
    assert _contacts(store)["8"]["email"] is None


def test_events_import_is_idempotent(store: Engine, tmp_path: Path) -> None:
    import_contacts(MESSY, engine=store)
    events = tmp_path / "events.csv"
    events.write_text(
        "external_id,email,name,occurred_at,sku,qty\n"
        "C001,,product.viewed,2026-03-01T10:00:00Z,SKU-1,2\n"
        ",dan@example.com,order.placed,2026-03-02 12:30,SKU-2,1\n"
        "C404,,product.viewed,2026-03-01T10:00:00Z,SKU-1,1\n"
        "C001,,,2026-03-01T10:00:00Z,,\n"
        "C001,,cart.updated,yesterday,,\n"
        "C001,,product.viewed,2026-03-01T10:00:00Z,SKU-1,2\n"
    )
    first = import_events(events, engine=store)
    assert (first.inserted, first.unchanged, first.rejected) == (2, 1, 3)
    assert {(e.line, e.column) for e in first.errors} == {
        (4, "external_id"),
        (5, "name"),
        (6, "occurred_at"),
    }
    assert len(first.touched) == 2  # C001 and dan: the contacts of the events stored
    again = import_events(events, engine=store)
    assert (again.inserted, again.unchanged) == (0, 3)
    assert again.touched == set()  # nothing stored: no live segment needs a look
    with store.connect() as conn:
        stored = [
            tuple(row)
            for row in conn.execute(select(Event.name, Event.properties).order_by(Event.id))
        ]
    assert stored == [
        ("product.viewed", {"sku": "SKU-1", "qty": 2}),
        ("order.placed", {"sku": "SKU-2", "qty": 1}),
    ]


def test_orders_upsert_by_order_id(store: Engine, tmp_path: Path) -> None:
    import_contacts(MESSY, engine=store)
    orders = tmp_path / "orders.csv"
    header = "order_id,external_id,email,total,currency,status,placed_at,channel\n"
    orders.write_text(
        header + "O-1,C001,,49.90,usd,placed,2026-03-01T10:00:00Z,web\n"
        'O-2,,carla@example.org,"1,000.00",EUR,paid,2026-03-02,app\n'
        "O-3,C001,,12.00,EUD,placed,2026-03-03,web\n"
        "O-4,C001,,12.00,EUR,lost,2026-03-03,web\n"
    )
    first = import_orders(orders, engine=store)
    assert (first.inserted, first.rejected) == (1, 3)
    assert {(e.line, e.column) for e in first.errors} == {
        (3, "total"),
        (4, "currency"),
        (5, "status"),
    }
    assert import_orders(orders, engine=store).unchanged == 1
    orders.write_text(header + "O-1,C001,,49.90,USD,shipped,2026-03-01T10:00:00Z,web\n")
    assert import_orders(orders, engine=store).updated == 1
    with Session(store) as session:
        order = session.scalars(select(Order)).one()
    assert (order.status, order.total, order.currency) == ("shipped", Decimal("49.90"), "USD")
    assert order.attributes == {"channel": "web"}


def test_file_level_errors_name_the_file(tmp_path: Path) -> None:
    dupe = tmp_path / "dupe.csv"
    dupe.write_text("email,Email\n")
    with pytest.raises(InputError, match=r"dupe.csv:1: column 'Email' appears twice"):
        list(read_records(dupe))
    with pytest.raises(InputError, match="cannot tell the format"):
        list(read_records(tmp_path / "contacts.xlsx"))
    bad_bytes = tmp_path / "latin1.csv"
    bad_bytes.write_bytes(b"email,first_name\na@example.com,Jos\xe9\nb@example.com,Bo\n")
    records = list(read_records(bad_bytes))
    assert records[0].values == {"__error__": "is not valid UTF-8 (save the file as UTF-8)"}
    assert records[1].values == {"email": "b@example.com", "first_name": "Bo"}


def test_validation_in_worker_processes_gives_the_same_result(
    store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The messy file checked by two worker processes, two records a chunk (so chunks come
    back out of step), written in batches of three: the same report and the same store as
    checked in process."""
    monkeypatch.setattr(importer, "CHUNK", 2)
    parallel = Settings(import_workers=2, import_batch_size=3)
    assert importer._workers(MESSY, parallel) == 2
    report = import_contacts(MESSY, engine=store, settings=parallel)

    reference = make_engine(f"sqlite:///{tmp_path / 'ref.db'}")
    upgrade(reference)
    in_process = Settings(import_workers=1, import_batch_size=3)
    expected = import_contacts(MESSY, engine=reference, settings=in_process)
    assert importer._workers(MESSY, Settings(import_workers=1)) == 0
    assert report.to_dict() == expected.to_dict()
    assert _contacts(store) == _contacts(reference)
    assert _consents(store) == _consents(reference)


def _statements(engine: Engine) -> list[tuple[str, int]]:
    """(SQL, number of parameters) of every statement ``engine`` sends from now on."""
    seen: list[tuple[str, int]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        rows = parameters if isinstance(parameters, list) else [parameters]
        seen.append((statement, max((len(p or ()) for p in rows), default=0)))

    event.listen(engine, "before_cursor_execute", record)
    return seen


def _people(path: Path, count: int, start: int = 0, plan: str = "pro", sms: str = "no") -> Path:
    path.write_text(
        "external_id,email,phone,consent_email,consent_sms,plan\n"
        + "".join(
            f"P{n},p{n}@example.com,+1415555{n % 10000:04d},yes,{sms},{plan}\n"
            for n in range(start, start + count)
        )
    )
    return path


def test_keys_with_quotes_backslashes_and_commas_match(store: Engine, tmp_path: Path) -> None:
    """Lookups send their keys as one array literal on PostgreSQL: a key that needs quoting
    in it still finds its contact, and a second import changes nothing."""
    path = tmp_path / "odd.csv"
    path.write_text(
        "external_id,email,plan\n"
        '"A,1",a@example.com,x\n'
        '"B""2",b@example.com,x\n'
        "C\\3,c@example.com,x\n"
        "{D4},d@example.com,x\n"
    )
    first = import_contacts(path, engine=store)
    assert (first.inserted, first.rejected) == (4, 0)
    again = import_contacts(path, engine=store)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 4)
    assert set(_contacts(store)) == {"A,1", 'B"2', "C\\3", "{D4}"}


def test_a_batch_is_the_same_few_statements_whatever_its_size(
    postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL: rows travel by COPY and keys as one array, so a batch of 400 contacts (half
    of them updates) sends the same statements as a batch of 4, none with more than a few
    parameters (no 2,000-value IN list to build, parse and plan)."""
    engine = make_engine(postgres_url)
    import_contacts(_people(tmp_path / "first.csv", 200), engine=engine)
    counts = []
    for name, size in (("small.csv", 4), ("large.csv", 400)):
        seen = _statements(engine)
        plan = name.removesuffix(".csv")
        path = _people(tmp_path / name, size, start=200 - size // 2, plan=plan, sms="yes")
        report = import_contacts(path, engine=engine)
        assert report.inserted + report.updated == size  # new ones, and changed plans
        assert min(report.inserted, report.updated) >= size // 2 - 2
        # once per connection, whichever of the import's two connections it falls to
        once = ("CREATE TEMPORARY TABLE", "SELECT pg_get_serial_sequence")
        counts.append(len([s for s, _ in seen if not s.startswith(once)]))
        assert max(n for _, n in seen) <= 8, [s for s in seen if s[1] > 8][:1]
    assert counts[0] == counts[1]
    engine.dispose()


def test_a_large_load_keeps_the_planner_statistics_current(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table loaded from empty is ANALYZEd as it grows (here from 100 rows on), so
    PostgreSQL never plans a batch's lookups for the empty table it last saw."""
    monkeypatch.setattr(bulk, "ANALYZE_FIRST", 100)
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'contacts'")) < 0
    path = _people(tmp_path / "load.csv", 500)
    import_contacts(path, engine=engine, settings=Settings(import_batch_size=50))
    with engine.connect() as conn:
        known: dict[str, float] = dict(
            conn.execute(  # type: ignore[arg-type]
                text(
                    "SELECT relname, reltuples FROM pg_class "
                    "WHERE relname IN ('contacts', 'consents', 'consent_changes')"
                )
            ).all()
        )
    assert known["contacts"] >= 250, known
    assert known["consents"] >= 500 and known["consent_changes"] >= 500, known
    engine.dispose()


def test_a_rolled_back_batch_leaves_the_connection_usable(
    postgres_url: str, tmp_path: Path
) -> None:
    """A staging table created in a transaction that rolls back (an API request refused
    half-way) is created again by the next write on the same pooled connection."""
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0)
    import_contacts(MESSY, engine=engine)
    row = {"order_id": "O-9", "contact_id": 1, "total": Decimal("1.00"), "currency": "EUR"}
    now = utcnow()
    row |= {"status": "placed", "placed_at": now, "updated_at": now, "attributes": {}}
    with pytest.raises(RuntimeError), engine.begin() as conn:
        bulk.upsert(conn, importer.orders_t, [row], key=("order_id",))
        raise RuntimeError("refused")
    with engine.begin() as conn:
        assert bulk.upsert(conn, importer.orders_t, [row], key=("order_id",)) == 1
    engine.dispose()


def _trail(engine: Engine) -> list[tuple[str | None, str, str | None, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Contact.external_id,
                Contact.email,
                ConsentChange.channel,
                ConsentChange.previous_status,
                ConsentChange.status,
            )
            .join(Contact, Contact.id == ConsentChange.contact_id)
            .order_by(ConsentChange.id)
        ).all()
    return [(ext or email, channel, old, new) for ext, email, channel, old, new in rows]


CHAINED = (
    "external_id,email,consent_email,consent_sms,plan\n"
    "A1,a@example.com,yes,,free\n"  # new
    "A1,b@example.com,,yes,pro\n"  # the next batch changes its email
    ",b@example.com,no,,team\n"  # found by the email the batch before gave it
    ",a@example.com,yes,,free\n"  # its old email: now nobody's, a new contact
    "A1,,yes,,team\n"  # consent back, plan unchanged
    "A1,,no,,team\n"  # and away again in the very next batch
    ",b@example.com,no,no,team\n"  # only the SMS consent changes
    "B2,a@example.com,yes,,free\n"  # external id given to the contact found by email
    "B2,,yes,,free\n"  # unchanged
    ",c@example.com,no,,x\n"
    ",C@example.com,yes,,y\n"  # the same person, another case, next batch
)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_batches_planned_ahead_of_their_writes_store_what_one_by_one_does(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """PostgreSQL plans a batch while the one before is still being written: each batch must
    see what the batches before it write (a contact created, its email changed, a consent
    granted and revoked in consecutive batches) exactly as the one-connection path does."""
    path = tmp_path / "chained.csv"
    path.write_text(CHAINED)
    first = tmp_path / "first.csv"
    first.write_text("external_id,email,consent_email\nS1,c@example.com,no\n")
    settings = Settings(import_batch_size=batch)
    results = []
    planned: list[int] = []
    plan = importer._ContactPipeline.plan

    def counted(self: Any, *args: Any) -> Any:
        planned.append(1)
        return plan(self, *args)

    monkeypatch.setattr(importer._ContactPipeline, "plan", counted)
    reference = make_engine(f"sqlite:///{tmp_path / 'ref.db'}")
    upgrade(reference)
    for engine in (make_engine(postgres_url), reference):
        import_contacts(first, engine=engine)
        report = import_contacts(path, engine=engine, settings=settings)
        again = import_contacts(path, engine=engine, settings=settings)
        counts = (report.inserted, report.updated, report.unchanged, report.rejected)
        results.append(
            (counts, again.updated, _contacts(engine), _consents(engine), _trail(engine))
        )
        engine.dispose()
    assert len(planned) > 11 // batch  # PostgreSQL took the planned path, SQLite did not
    assert results[0] == results[1]


def test_event_keys_are_the_ones_earlier_versions_stored() -> None:
    """An imported event's key is stored: computed faster now, it must stay the uuid5 of the
    same JSON, or a file imported again would store its events twice."""

    def spelt_out(ext: str | None, email: str | None, name: str, at: Any, props: Any) -> str:
        who = f"x:{ext}" if ext else f"e:{email}"
        body = json.dumps([who, name, at.isoformat(), props], sort_keys=True, default=str)
        return "import:" + str(uuid.uuid5(importer.EVENT_NAMESPACE, body))

    rnd = random.Random(5)
    values = [1, -2.5, 'caf\u00e9 "q"', True, None, [1, "a"], {"z": 1, "a": 2}, 10**30]
    values += [float("inf"), Decimal("9.99"), datetime(2026, 1, 1)]
    for _ in range(2000):
        props = {f"k{rnd.randint(0, 9)}": rnd.choice(values) for _ in range(rnd.randint(0, 4))}
        zone = timezone(timedelta(hours=rnd.randint(-5, 5)))
        args = (
            rnd.choice([None, "C\u20ac1", "C2"]),
            rnd.choice([None, "a@b.example"]),
            rnd.choice(["order.placed", "viewed \u2603"]),
            datetime(2026, 1, 1, 12, rnd.randint(0, 59), tzinfo=zone),
            props,
        )
        assert importer._event_key(*args) == spelt_out(*args)


def test_csv_records_carry_the_line_they_start_on(tmp_path: Path) -> None:
    """Blank rows are skipped, a quoted cell may span lines, a bad byte spoils only its
    record: every error names the line a person would look at."""
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"external_id,note\n"  # 1
        b"A1,one\n"  # 2
        b"\n"  # 3 (blank)
        b'A2,"two\n'  # 4
        b'lines"\n'  # 5
        b" , \n"  # 6 (blank cells)
        b'A3,"bad \xff\n'  # 7
        b'byte"\n'  # 8
        b"A4,short,extra\n"  # 9
        b"A5,five\r\n"  # 10
    )
    records = [(r.line, r.values) for r in read_records(path, None)]
    assert [line for line, _ in records] == [2, 4, 7, 9, 10]
    assert records[1][1] == {"external_id": "A2", "note": "two\nlines"}
    assert "UTF-8" in records[2][1][ERROR]
    assert "3 fields" in records[3][1][ERROR]
    assert records[4][1] == {"external_id": "A5", "note": "five"}
