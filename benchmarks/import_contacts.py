"""Contact import: throughput and memory on a large file, against a raw-insert baseline.

    .venv/bin/python benchmarks/import_contacts.py [--rows 1000000] [--url postgresql+psycopg://...]

For each size (a tenth of --rows, then --rows) it writes a CSV, imports it with
`tidings contacts import` in a fresh process on a fresh PostgreSQL database, and records wall
time and peak RSS of that process. The baseline, in the same run, is the same rows inserted with
one `executemany` per 2,000 rows and no validation (the ceiling for this table on this server).
Prints rows/s, the ratio to the baseline, and peak RSS at both sizes (flat memory = streaming).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from tidings.crm.db import make_engine, upgrade
from tidings.crm.models import Contact
from tidings.crm.types import utcnow

ROOT = Path(__file__).resolve().parents[1]
TIDINGS = Path(sys.executable).with_name("tidings")
HEADER = [
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "timezone",
    "consent_email",
    "plan",
    "signup_date",
]


def write_file(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for n in range(rows):
            writer.writerow(
                [
                    f"X{n}",
                    f"person{n}@example.com",
                    f"+1415{n % 10_000_000:07d}",
                    "Pat",
                    f"Doe{n % 1000}",
                    "Europe/Berlin",
                    "yes" if n % 3 else "no",
                    ("free", "pro")[n % 2],
                    f"2025-{1 + n % 12:02d}-{1 + n % 28:02d}",
                ]
            )


class Database:
    def __init__(self, url: str) -> None:
        self.base = make_url(url)
        self.admin = create_engine(self.base, isolation_level="AUTOCOMMIT")

    def fresh(self) -> str:
        name = f"tidings_bench_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = self.base.set(database=name).render_as_string(hide_password=False)
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url

    def drop(self, url: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


def run_tidings(path: Path, url: str) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of `tidings contacts import` in its own process."""
    env = {**os.environ, "TIDINGS_DATABASE_URL": url}
    script = (
        "import resource, runpy, sys; sys.argv=['tidings','contacts','import',sys.argv[1]];\n"
        "try:\n    runpy.run_module('tidings', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    seconds = time.perf_counter() - start
    rss = float(out.rsplit("RSS", 1)[1])
    return seconds, rss


def baseline(path: Path, url: str) -> float:
    engine = make_engine(url)
    now = utcnow()
    start = time.perf_counter()
    with path.open(encoding="utf-8") as handle, engine.begin() as conn:
        reader = csv.DictReader(handle)
        batch = []
        for row in reader:
            batch.append(
                {
                    "external_id": row["external_id"],
                    "email": row["email"],
                    "phone": row["phone"],
                    "first_name": row["first_name"],
                    "last_name": row["last_name"],
                    "timezone": row["timezone"],
                    "attributes": {"plan": row["plan"], "signup_date": row["signup_date"]},
                    "created_at": now,
                    "updated_at": now,
                }
            )
            if len(batch) == 2000:
                conn.execute(insert(Contact), batch)
                batch.clear()
        if batch:
            conn.execute(insert(Contact), batch)
    seconds = time.perf_counter() - start
    engine.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "TIDINGS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    db = Database(args.url)
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for rows in (args.rows // 10, args.rows):
            path = Path(tmp) / f"contacts_{rows}.csv"
            write_file(path, rows)
            url = db.fresh()
            seconds, rss = run_tidings(path, url)
            db.drop(url)
            url = db.fresh()
            base = baseline(path, url)
            db.drop(url)
            results.append((rows, seconds, rss, base))
            print(
                f"{rows:>9,} rows: tidings {rows / seconds:>8,.0f} rows/s ({seconds:.1f} s, "
                f"peak RSS {rss:.0f} MiB); raw executemany {rows / base:>8,.0f} rows/s; "
                f"ratio {base / seconds:.2f}",
                flush=True,
            )
    (small_rows, _, small_rss, _), (large_rows, _, large_rss, _) = results
    print(f"peak RSS x{large_rss / small_rss:.2f} for x{large_rows // small_rows} rows")


if __name__ == "__main__":
    main()
