"""The erasure suppression check on import batches: what it adds to a batch's write.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/suppression.py \\
        [--erased 100000] [--batches 20] [--url postgresql+psycopg://...]

On a fresh PostgreSQL database it erases nothing but writes ``--erased`` keyed-hash
suppressions (as erasures leave them), then imports ``--batches`` batches of 2,000 contact rows
(``TIDINGS_IMPORT_BATCH_SIZE``), 1% of them naming a suppressed email, through the importer's
own batch write (``_apply_contacts``, which calls ``suppressed_rows``). It first asserts what
happened (every suppressed row reported, none stored; every other row stored), then times the
check alone (``suppressed_rows`` on the same batches) against the whole batch write measured
in the same run, and prints the ratio. Goal: the check costs under 5% of a batch's write.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.databases import scratch_database  # noqa: E402
from tidings.config import Settings  # noqa: E402
from tidings.crm.db import make_engine, upgrade  # noqa: E402
from tidings.crm.importer import ContactRow, ImportReport, _apply_contacts  # noqa: E402
from tidings.crm.models import Contact, Erasure, ErasureSuppression  # noqa: E402
from tidings.crm.suppression import Identity, hasher, suppressed_rows  # noqa: E402
from tidings.crm.types import utcnow  # noqa: E402

BATCH = 2000
GOAL = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--erased", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "TIDINGS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    with scratch_database(args.url) as url:
        return run(url, args.erased, args.batches)


def run(url: str, erased: int, batches: int) -> int:
    db = make_engine(url)
    upgrade(db)
    settings = Settings(database_url=url, suppression_key="bench-key")
    hashed = hasher(settings)
    now = utcnow()
    with db.begin() as conn:
        log = conn.execute(
            insert(Erasure).values(actor="bench", erased_at=now, counts={}).returning(Erasure.id)
        ).scalar_one()
        for start in range(0, erased, 10_000):
            conn.execute(
                insert(ErasureSuppression),
                [
                    {
                        "digest": hashed.digest("email", f"gone{i}@example.com"),
                        "kind": "email",
                        "key_id": hashed.key_id,
                        "erasure_id": log,
                        "created_at": now,
                    }
                    for i in range(start, min(erased, start + 10_000))
                ],
            )
    plan: list[list[ContactRow]] = []
    gone = 0
    for b in range(batches):
        rows = []
        for i in range(BATCH):
            n = b * BATCH + i
            if i % 100 == 0:  # 1% name an erased person
                email, gone = f"gone{n % erased}@example.com", gone + 1
            else:
                email = f"p{n}@example.com"
            rows.append(
                ContactRow(i + 2, f"X{n}", {"email": email}, {"n": n}, {"email": "granted"})
            )
        plan.append(rows)

    report = ImportReport(kind="contacts", path="bench")
    write = 0.0
    for rows in plan:
        started = time.perf_counter()
        with db.begin() as conn:
            _apply_contacts(conn, rows, report, source="bench", settings=settings)
        write += time.perf_counter() - started
        report.read += len(rows)
    with db.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(Contact)).scalar_one()
        leaked = conn.execute(
            select(func.count()).select_from(Contact).where(Contact.email.like("gone%"))
        ).scalar_one()
    total = batches * BATCH
    assert report.suppressed == gone and leaked == 0, (report.suppressed, gone, leaked)
    assert stored == total - gone and report.inserted == total - gone, (stored, report.inserted)

    check = 0.0
    for rows in plan:
        identities = [Identity(r.external_id, r.values.get("email")) for r in rows]
        started = time.perf_counter()
        with db.connect() as conn:
            hits = suppressed_rows(conn, identities, settings=settings)
        check += time.perf_counter() - started
        assert len(hits) == BATCH // 100
    db.dispose()
    ratio = check / write
    print(
        f"{erased:,} suppressions, {batches} batches of {BATCH:,} rows ({gone} suppressed, "
        f"{stored:,} stored): batch write {write / batches * 1000:.1f} ms, of which the "
        f"suppression check {check / batches * 1000:.2f} ms = {ratio:.1%} (goal < {GOAL:.0%})"
    )
    if ratio > GOAL:
        print(f"MISSED the goal: the check costs {ratio:.1%} of a batch's write")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
