"""What the attribute-history triggers cost writers (docs/segments.md, ``has_been``).

Two fresh stores per database, migrated alike; the baseline one has the triggers dropped.
On each: insert N contacts with 3 attributes (executemany, as the importer does), change one
attribute of every contact in one set-based ``UPDATE`` (as a bulk upsert does), and run an
``UPDATE`` that sets the attributes to what they are (a re-import of an unchanged file). The
benchmark first checks what the triggers wrote (3N rows, then N more, then none), then prints
each step's time with and without the triggers.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/attribute_history.py --rows 200000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from tidings.crm.db import make_engine, upgrade
from tidings.crm.history import drop_triggers
from tidings.crm.models import AttributeChange, Contact

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GOAL = 1.5  # the triggers may make a bulk attribute change at most this much slower

CHANGE = {
    "postgresql": "UPDATE contacts SET attributes = jsonb_set(attributes, '{plan}', '\"pro\"'), "
    "updated_at = :now",
    "sqlite": "UPDATE contacts SET attributes = json_set(attributes, '$.plan', 'pro'), "
    "updated_at = :now",
}
SAME = "UPDATE contacts SET attributes = attributes"
SCORES = "UPDATE contacts SET churn_risk = 0.5"  # the scoring models: attributes untouched


def fresh(dialect: str, directory: Path) -> tuple[Engine, str]:
    if dialect == "sqlite":
        url = f"sqlite:///{directory / uuid.uuid4().hex}.db"
    else:
        name = f"tidings_bench_{uuid.uuid4().hex[:8]}"
        with create_engine(PG, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    return engine, url


def drop(dialect: str, url: str) -> None:
    if dialect == "postgresql":
        name = make_url(url).database
        with create_engine(PG, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def timed(engine: Engine, work: Callable[[Connection], object]) -> float:
    start = time.perf_counter()
    with engine.begin() as conn:
        work(conn)
    return time.perf_counter() - start


def history_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(AttributeChange)).scalar_one())


def run(engine: Engine, rows: int) -> list[float]:
    now = datetime.now(UTC)
    batch = [
        {
            "external_id": f"c{i}",
            "attributes": {"plan": "free", "age": 20 + i % 50, "city": f"city{i % 100}"},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(rows)
    ]
    contacts: Table = Contact.__table__  # type: ignore[assignment]

    def load(conn: Connection) -> None:
        for at in range(0, rows, 2000):
            conn.execute(insert(contacts), batch[at : at + 2000])

    dialect = engine.dialect.name
    times = [timed(engine, load)]
    times.append(timed(engine, lambda c: c.execute(text(CHANGE[dialect]), {"now": now})))
    times.append(timed(engine, lambda c: c.execute(text(SAME))))
    times.append(timed(engine, lambda c: c.execute(text(SCORES))))
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dialects", default="postgresql,sqlite")
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for dialect in args.dialects.split(","):
            with_engine, with_url = fresh(dialect, Path(tmp))
            base_engine, base_url = fresh(dialect, Path(tmp))
            with base_engine.begin() as conn:
                drop_triggers(conn)
            try:
                base = run(base_engine, args.rows)
                triggered = run(with_engine, args.rows)
                written = history_rows(with_engine)
                expected = 4 * args.rows  # 3 keys per contact, then one change each
                if written != expected or history_rows(base_engine) != 0:
                    print(f"FAIL {dialect}: {written} history rows, expected {expected}")
                    return 1
                print(f"{dialect}, {args.rows:,} contacts ({written:,} history rows written)")
                print("  step                          no triggers   triggers   ratio")
                steps = (
                    "insert, 3 attributes",
                    "change 1 attribute (UPDATE)",
                    "UPDATE, no change",
                    "UPDATE of scores only",
                )
                for step, b, t in zip(steps, base, triggered, strict=True):
                    print(f"  {step:28} {b:10.2f} s {t:8.2f} s {t / b:7.2f}")
                ratio = triggered[1] / base[1]
                if ratio > GOAL:
                    failed = True
                    print(f"  MISSED the goal: a bulk change {ratio:.2f}x slower (goal {GOAL}x)")
            finally:
                with_engine.dispose()
                base_engine.dispose()
                drop(dialect, with_url)
                drop(dialect, base_url)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
