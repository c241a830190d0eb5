"""The attribute history (triggers on contacts) and ``has_been``, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, delete, insert, inspect, select, text, update
from typer.testing import CliRunner

from tidings.cli import app
from tidings.config import get_settings
from tidings.crm.db import make_engine, session_scope, upgrade
from tidings.crm.importer import import_contacts
from tidings.crm.models import AttributeChange, Contact
from tidings.segments.loader import parse_segment
from tidings.segments.membership import evaluate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
contacts: Table = Contact.__table__  # type: ignore[assignment]
changes: Table = AttributeChange.__table__  # type: ignore[assignment]


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def history(engine: Engine, contact_id: int) -> list[tuple[str, Any, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(changes.c.key, changes.c.value, changes.c.changed_at)
            .where(changes.c.contact_id == contact_id)
            .order_by(changes.c.changed_at, changes.c.key)
        ).all()
    return [(k, v, t) for k, v, t in rows]


def add(engine: Engine, ext: str, attributes: dict[str, Any], days: float) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(contacts)
                .values(
                    external_id=ext,
                    attributes=attributes,
                    created_at=ago(days),
                    updated_at=ago(days),
                )
                .returning(contacts.c.id)
            ).scalar_one()
        )


def change(engine: Engine, contact_id: int, attributes: dict[str, Any], days: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(contacts)
            .where(contacts.c.id == contact_id)
            .values(attributes=attributes, updated_at=ago(days))
        )


def members(engine: Engine, rule: Any, now: datetime = NOW) -> set[str]:
    segment = parse_segment({"name": "t", "rule": rule})
    with session_scope(engine) as session:
        ids = evaluate(segment, session=session, now=now)
        names = dict(session.execute(select(contacts.c.id, contacts.c.external_id)).tuples().all())
    return {names[i] for i in ids}


def test_every_change_of_a_key_is_recorded_once(store: Engine) -> None:
    cid = add(store, "a", {"plan": "free", "tags": ["x"], "address": {"city": "Oslo"}}, 30)
    change(store, cid, {"plan": "pro", "tags": ["x"], "address": {"city": "Oslo"}}, 10)
    change(store, cid, {"plan": "pro", "tags": ["x"], "address": {"city": "Oslo"}}, 9)  # same
    change(store, cid, {"plan": "pro", "address": {"city": "Rome"}}, 5)  # tags removed
    with store.begin() as conn:  # a writer that sets neither attributes nor updated_at
        conn.execute(update(contacts).where(contacts.c.id == cid).values(churn_risk=0.5))
    assert history(store, cid) == [
        ("address", {"city": "Oslo"}, ago(30)),
        ("plan", "free", ago(30)),
        ("tags", ["x"], ago(30)),
        ("plan", "pro", ago(10)),
        ("address", {"city": "Rome"}, ago(5)),
        ("tags", None, ago(5)),
    ]


def test_a_writer_that_keeps_updated_at_is_dated_by_the_database_clock(store: Engine) -> None:
    cid = add(store, "a", {"plan": "free"}, 30)
    before = datetime.now(UTC)
    with store.begin() as conn:
        conn.execute(
            text("UPDATE contacts SET attributes = :doc WHERE id = :id"),
            {"doc": json.dumps({"plan": "pro"}), "id": cid},
        )
    (key, value, at) = history(store, cid)[-1]
    assert (key, value) == ("plan", "pro")
    assert before - timedelta(seconds=1) <= at <= datetime.now(UTC) + timedelta(seconds=1)


def test_the_importer_and_the_cli_write_history(
    store: Engine, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"external_id": "i1", "attributes": {"plan": "free"}}) + "\n")
    assert import_contacts(path, engine=store).inserted == 1
    path.write_text(json.dumps({"external_id": "i1", "attributes": {"plan": "pro"}}) + "\n")
    monkeypatch.setenv("TIDINGS_DATABASE_URL", store_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["contacts", "import", str(path)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    with store.connect() as conn:
        cid = conn.execute(select(contacts.c.id).where(contacts.c.external_id == "i1")).scalar_one()
    assert [(k, v) for k, v, _ in history(store, cid)] == [("plan", "free"), ("plan", "pro")]


@pytest.fixture
def plans(store: Engine) -> Engine:
    """Who had which plan when (days ago)."""
    ann = add(store, "ann", {"plan": "free"}, 30)
    change(store, ann, {"plan": "pro"}, 10)  # pro for 10 days
    add(store, "bob", {"plan": "pro"}, 30)  # pro for 30 days
    cat = add(store, "cat", {"plan": "pro"}, 20)
    change(store, cat, {"plan": "enterprise"}, 3)  # paid all along, pro only 20 -> 3 days ago
    dan = add(store, "dan", {"plan": "pro"}, 30)
    change(store, dan, {"plan": "free"}, 6)
    change(store, dan, {"plan": "pro"}, 5)  # a break 6..5 days ago
    add(store, "eve", {}, 2)  # new, no plan
    fay = add(store, "fay", {"plan": "pro", "address": {"city": "Oslo"}}, 40)
    change(store, fay, {"address": {"city": "Rome"}}, 8)  # plan removed 8 days ago
    add(store, "gus", {"address": {"city": "Oslo", "zip": "0150"}}, 40)
    return store


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("{attribute: plan, eq: pro, for: 7 days}", {"ann", "bob"}),
        ("{attribute: plan, eq: pro, for: 10 days}", {"ann", "bob"}),  # from the moment on
        ("{attribute: plan, eq: pro, for: 11 days}", {"bob"}),
        ("{attribute: plan, eq: pro, for: 4 days}", {"ann", "bob", "dan"}),
        ("{attribute: plan, in: [pro, enterprise], for: 14 days}", {"bob", "cat"}),
        ("{attribute: plan, ne: pro, for: 7 days}", {"fay", "gus"}),  # eve is 2 days old
        ("{attribute: plan, exists: false, for: 1 day}", {"eve", "fay", "gus"}),
        ("{attribute: plan, exists: true, for: 30 days}", {"ann", "bob", "dan"}),
        ("{attribute: address.city, eq: Oslo, for: 30 days}", {"gus"}),
    ],
)
def test_has_been(plans: Engine, rule: str, expected: set[str]) -> None:
    import yaml

    assert members(plans, {"has_been": yaml.safe_load(rule)}) == expected


def test_has_been_as_of_a_past_moment(plans: Engine) -> None:
    rule = {"has_been": {"attribute": "plan", "eq": "pro", "for": "7 days"}}
    # ann: pro for 6 days then; cat: still pro (enterprise 3 days ago is after that moment)
    assert members(plans, rule, now=ago(4)) == {"bob", "cat"}
    assert members(plans, rule, now=ago(12)) == {"bob", "cat", "dan", "fay"}  # fay: until 8


def test_has_been_combines_with_other_rules(plans: Engine) -> None:
    rule = {
        "all": [
            {"has_been": {"attribute": "plan", "eq": "pro", "for": "7 days"}},
            {"not": {"attribute": "plan", "eq": "pro"}},
        ]
    }
    assert members(plans, rule) == set()


@pytest.fixture
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A store at revision 0009, before the history existed."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.empty_database()
    engine = make_engine(url)
    upgrade(engine, "0009")
    yield engine
    engine.dispose()
    if request.param != "sqlite":
        server.drop(url)


@pytest.mark.parametrize("old_store", ["sqlite", "postgresql"], indirect=True)
def test_the_migration_backfills_from_updated_at(old_store: Engine) -> None:
    with old_store.begin() as conn:
        conn.execute(
            insert(contacts).values(
                external_id="old",
                attributes={"plan": "pro", "age": 40},
                created_at=ago(400),
                updated_at=ago(20),
            )
        )
    upgrade(old_store)
    with old_store.connect() as conn:
        cid = conn.execute(select(contacts.c.id)).scalar_one()
    assert sorted(history(old_store, cid)) == [("age", 40, ago(20)), ("plan", "pro", ago(20))]
    rule = {"has_been": {"attribute": "plan", "eq": "pro", "for": "20 days"}}
    assert members(old_store, rule) == {"old"}
    rule = {"has_been": {"attribute": "plan", "eq": "pro", "for": "21 days"}}
    assert members(old_store, rule) == set()  # not known before its last update
    change(old_store, cid, {"plan": "free", "age": 40}, 1)
    assert history(old_store, cid)[-1] == ("plan", "free", ago(1))


def deleted(engine: Engine, ids: list[int]) -> set[int]:
    """Delete contacts ``ids``; whose history is left."""
    with engine.begin() as conn:
        conn.execute(delete(contacts).where(contacts.c.id.in_(ids)))
    with engine.connect() as conn:
        return set(conn.execute(select(changes.c.contact_id)).scalars())


def test_a_deleted_contact_takes_its_history_along(store: Engine) -> None:
    keep = add(store, "keep", {"plan": "pro"}, 3)
    gone = [add(store, f"g{i}", {"plan": "free", "n": i}, 2) for i in range(3)]
    change(store, gone[0], {"plan": "pro"}, 1)
    assert deleted(store, gone[1:]) == {keep, gone[0]}  # one statement, two contacts
    assert deleted(store, gone[:1]) == {keep}
    assert history(store, keep) == [("plan", "pro", ago(3))]


@pytest.mark.parametrize("old_store", ["sqlite", "postgresql"], indirect=True)
def test_0018_drops_the_foreign_key_and_keeps_the_cascade(old_store: Engine) -> None:
    """Only the triggers write the history: its foreign key re-checked what cannot be wrong."""
    upgrade(old_store, "0017")
    before = add(old_store, "before", {"plan": "pro"}, 5)
    assert inspect(old_store).get_foreign_keys("attribute_changes")
    upgrade(old_store)
    assert inspect(old_store).get_foreign_keys("attribute_changes") == []
    after = add(old_store, "after", {"plan": "free"}, 1)
    assert history(old_store, before) == [("plan", "pro", ago(5))]
    assert deleted(old_store, [before]) == {after}
