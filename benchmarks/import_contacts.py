"""Contact import: rows/s and peak memory on realistic files, against a COPY of the same rows.

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/import_contacts.py \\
        [--rows 1000000] [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]

For each size (a tenth of --rows, then --rows) it writes a CSV of realistic contacts and, on a
fresh PostgreSQL database seeded with the contacts the file updates, runs
``tidings contacts import FILE --json`` in its own process (wall time, peak RSS of the largest
process: the importer or one of its validation workers). The file:

* 88% new contacts, 10% updates of stored contacts (two in three matched by external_id, one in
  three by email written in another case: a changed last name, plan and email consent), 2% bad
  rows (an invalid email and no external_id, or an unreadable consent): all rejected;
* a valid phone on 80% of the rows (E.164 mostly, some national US and German formats), an
  email consent on every row and an SMS consent on every row with a phone (each one lands in
  the audit trail), names, locale, timezone and three attributes.

The import must have done exactly that (the report's counts, then contacts, phones, consents
and audit rows counted in the store) before any speed is printed; then the same file is
imported again and must change nothing. The baseline, in the same run: the accepted rows,
already normalised, COPYed into the contacts table of a fresh database (the ceiling for the
table). Goals: >= 25,000 rows/s and >= 0.5 of COPY at --rows, rows/s at --rows within 10% of
rows/s at a tenth of it, peak RSS < 500 MB. The last lines say which goals were missed (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.databases import Database, libpq  # noqa: E402

DEFAULT_URL = os.environ.get(
    "TIDINGS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HEADER = [
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "locale",
    "timezone",
    "consent_email",
    "consent_sms",
    "plan",
    "signup_date",
    "lifetime_value",
]
COPY_COLUMNS = (
    "external_id, email, phone, first_name, last_name, locale, timezone, attributes, "
    "created_at, updated_at"
)
FIRST = ["Ann", "Bob", "Carla", "Dan", "Eve", "Frank", "Gina", "Hank", "Ivy", "Jo", "Kim", "Lee"]
LAST = ["Lee", "Stone", "Neumann", "Brown", "Adams", "Ng", "Ruiz", "Moss", "Park", "Smith"]
# (as written in the file, as stored)
LOCALES = [("en_US", "en_US"), ("en-GB", "en_GB"), ("de", "de"), ("fr_FR", "fr_FR")]
ZONES = [
    ("America/New_York", "America/New_York"),
    ("europe/berlin", "Europe/Berlin"),
    ("America/Los_Angeles", "America/Los_Angeles"),
    ("Europe/London", "Europe/London"),
]
# Area codes in use; exchanges 200-999 except N11 are valid for phonenumbers in these.
AREAS = [415, 650, 212, 312, 617, 206, 303, 512, 305, 404, 702, 718]


def us_phone(n: int) -> tuple[int, int, int]:
    area = AREAS[n % len(AREAS)]
    exchange = 200 + (n // len(AREAS)) % 800
    if exchange % 100 == 11:  # N11 codes (211, 311, ...) are not exchanges
        exchange += 1
    return area, exchange, (n * 7919) % 10_000


def phone(n: int) -> tuple[str, str]:
    """A valid phone as written in the file, and its E.164 form."""
    area, exchange, line = us_phone(n)
    e164 = f"+1{area}{exchange}{line:04d}"
    kind = n % 20
    if kind == 0:  # a national US format
        return f"({area}) {exchange}-{line:04d}", e164
    if kind == 1:  # a German number, international format with spaces
        return f"+49 30 {n % 100_000_000:08d}", f"+4930{n % 100_000_000:08d}"
    return e164, e164


def copy_line(values: Iterable[Any]) -> str:
    """One line of COPY's text format."""
    return "\t".join(copy_text(v) for v in values) + "\n"


def copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    text_ = str(value)
    return (
        text_.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


@dataclass
class Expected:
    rows: int = 0
    bad: int = 0
    new: int = 0
    updated: int = 0
    phones: int = 0  # contacts with a phone after the import
    consents: int = 0  # consent rows after the import
    audit: int = 0  # audit rows after the import
    seeded: list[tuple[str | None, str]] = field(default_factory=list)
    seeded_count: int = 0  # contacts seeded by number (events, orders)
    events: int = 0  # events the import must add (orders)
    seeded_orders: list[tuple[str, int]] = field(default_factory=list)


def write_files(path: Path, copy_path: Path, rows: int, seed: int = 7) -> Expected:
    """The CSV to import, the same accepted rows normalised for COPY, and what must result."""
    rnd = random.Random(seed)
    expected = Expected(rows=rows)
    seeded = rows // 10
    # contacts the file updates: one in three known by email only
    expected.seeded = [
        (None if k % 3 == 0 else f"C{k:08d}", f"person{k}@example.net") for k in range(seeded)
    ]
    expected.consents = seeded  # each seeded contact has a revoked email consent
    now = datetime.now(UTC).isoformat()
    with (
        path.open("w", encoding="utf-8") as out,
        copy_path.open("w", encoding="utf-8") as base,
    ):
        out.write(",".join(HEADER) + "\n")
        for i in range(rows):
            first, last = FIRST[i % len(FIRST)], LAST[(i // 7) % len(LAST)]
            locale = LOCALES[i % len(LOCALES)]
            zone = ZONES[(i // 3) % len(ZONES)]
            has_phone = i % 5 != 0
            written, e164 = phone(i) if has_phone else ("", None)
            consent_email = rnd.choice(("yes", "no", "true", "0"))
            consent_sms = rnd.choice(("yes", "no")) if has_phone else ""
            plan = rnd.choice(("free", "pro", "team"))
            signup = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}"
            value = f"{rnd.randrange(0, 500_000) / 100:.2f}"
            if i % 50 == 7:  # a bad row
                expected.bad += 1
                if (i // 50) % 2:
                    ext, email = "", f"not-an-email-{i}"
                else:
                    ext, email, consent_email = f"N{i:09d}", f"bad{i}@example.com", "maybe"
                stored_ext, stored_email = None, None
            elif i % 10 == 3:  # an update of a seeded contact
                k = i // 10
                stored_ext, stored_email = expected.seeded[k]
                ext = stored_ext or ""
                email = stored_email if stored_ext else f"Person{k}@Example.NET"
                consent_email = "yes"  # revoked before: a change, audited
                expected.updated += 1
                expected.audit += 1
            else:
                stored_ext, stored_email = (
                    f"N{i:09d}",
                    f"{first.lower()}.{last.lower()}{i}@example.com",
                )
                ext, email = stored_ext, stored_email
                expected.new += 1
                expected.consents += 1
                expected.audit += 1
            if stored_email is None:
                out.write(
                    ",".join([ext, email, written, first, last, locale[0], zone[0]])
                    + f",{consent_email},{consent_sms},{plan},{signup},{value}\n"
                )
                continue
            if has_phone:
                expected.phones += 1
                expected.consents += 1  # the SMS consent is new for every contact
                expected.audit += 1
            out.write(
                ",".join([ext, email, written, first, last, locale[0], zone[0]])
                + f",{consent_email},{consent_sms},{plan},{signup},{value}\n"
            )
            attributes = json.dumps(
                {"plan": plan, "signup_date": signup, "lifetime_value": float(value)}
            )
            base.write(
                copy_line(
                    (
                        stored_ext,
                        stored_email,
                        e164,
                        first,
                        last,
                        locale[1],
                        zone[1],
                        attributes,
                        now,
                        now,
                    )
                )
            )
    return expected


def copy_lines(url: str, table: str, columns: str, lines: Iterator[str] | Path) -> float:
    """COPY text-format lines into ``table`` in one transaction; returns the seconds it took."""
    with psycopg.connect(libpq(url)) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            if isinstance(lines, Path):
                with lines.open("rb") as handle:
                    while block := handle.read(1 << 20):
                        copy.write(block)
            else:
                for line in lines:
                    copy.write(line)
        conn.commit()
        return time.perf_counter() - start


def sql(url: str, query: str) -> Any:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


def seed_contacts(url: str, expected: Expected) -> None:
    """The contacts the file updates (phone-less, plan free, email consent revoked)."""
    now = datetime.now(UTC).isoformat()

    def lines() -> Iterator[str]:
        for ext, email in expected.seeded:
            attributes = '{"plan": "free"}'
            values = (ext, email, None, "Old", "Name", "en_US", None, attributes, now, now)
            yield copy_line(values)

    copy_lines(url, "contacts", COPY_COLUMNS, lines())
    with psycopg.connect(libpq(url)) as conn:
        conn.execute(
            "INSERT INTO consents (contact_id, channel, purpose, status, source, updated_at) "
            "SELECT id, 'email', 'marketing', 'revoked', 'seed', now() FROM contacts"
        )
        conn.execute("ANALYZE")


def run_cli(kind: str, path: Path, url: str) -> tuple[float, float, float, dict[str, Any]]:
    """Seconds, CPU seconds of the importer and its workers (not of PostgreSQL), peak RSS
    (MiB, largest process) and the JSON report of ``tidings KIND import``."""
    env = {**os.environ, "TIDINGS_DATABASE_URL": url}
    script = (
        "import resource, runpy, sys\n"
        "sys.argv = ['tidings', sys.argv[1], 'import', sys.argv[2], '--json']\n"
        "try:\n    runpy.run_module('tidings', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "own = resource.getrusage(resource.RUSAGE_SELF)\n"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime\n"
        "print('CPU', cpu, 'RSS', max(own.ru_maxrss, kids.ru_maxrss) / 1024)"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, kind, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    out = done.stdout
    if "RSS" not in out:
        raise SystemExit(f"the import failed:\n{out}\n{done.stderr}")
    body, usage = out.rsplit("CPU", 1)
    cpu, rss = usage.split("RSS")
    return seconds, float(cpu), float(rss), json.loads(body)


def check(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise SystemExit(f"FAILED: {what}: got {got!r}, expected {want!r}")


def verify_contacts(url: str, report: dict[str, Any], expected: Expected) -> None:
    seeded = len(expected.seeded)
    accepted = expected.rows - expected.bad
    check("rows read", report["rows"], expected.rows)
    check("rows rejected", report["rejected"], expected.bad)
    check("errors reported", len(report["errors"]), min(expected.bad, 1000))
    check("contacts inserted", report["inserted"], expected.new)
    check("contacts updated", report["updated"], expected.updated)
    check("warnings", report["warned"], 0)
    check("contacts in the store", sql(url, "SELECT count(*) FROM contacts"), seeded + expected.new)
    check("accepted rows", report["accepted"], accepted)
    check(
        "contacts with a phone",
        sql(url, "SELECT count(*) FROM contacts WHERE phone IS NOT NULL"),
        expected.phones,
    )
    check(
        "updated contacts",
        sql(
            url,
            "SELECT count(*) FROM contacts "
            "WHERE attributes ? 'signup_date' AND first_name <> 'Old'",
        ),
        expected.new + expected.updated,
    )
    check("consents in the store", sql(url, "SELECT count(*) FROM consents"), expected.consents)
    check("audit rows", sql(url, "SELECT count(*) FROM consent_changes"), expected.audit)
    check(
        "email consents granted by the updates",
        sql(
            url,
            "SELECT count(*) FROM consents c JOIN contacts k ON k.id = c.contact_id "
            "WHERE k.email LIKE '%@example.net' AND c.channel = 'email' AND c.status = 'granted'",
        ),
        expected.updated,
    )


def snapshot(url: str) -> tuple[Any, ...]:
    return (
        sql(url, "SELECT count(*) FROM contacts"),
        sql(url, "SELECT max(updated_at) FROM contacts"),
        sql(url, "SELECT count(*) FROM consents"),
        sql(url, "SELECT count(*) FROM consent_changes"),
        sql(url, "SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM contacts c"),
    )


@dataclass
class Result:
    rows: int
    seconds: float
    rss: float
    again: float
    copy: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def ratio(self) -> float:
        return self.copy / self.seconds


def goals(
    results: list[Result], *, rate: float, ratio: float = 0.5, rss: float = 500, flat: float = 0.1
) -> int:
    """Print which goals were met; returns the number missed."""
    small, large = results[0], results[-1]
    checks = [
        (f"rows/s at {large.rows:,} >= {rate:,.0f}", large.rate >= rate, f"{large.rate:,.0f}"),
        (f"ratio to COPY >= {ratio}", large.ratio >= ratio, f"{large.ratio:.2f}"),
        (
            f"rows/s at {large.rows:,} within {flat:.0%} of rows/s at {small.rows:,}",
            large.rate >= (1 - flat) * small.rate,
            f"{large.rate / small.rate:.2f}x",
        ),
        (f"peak RSS < {rss:.0f} MB", max(r.rss for r in results) < rss, f"{large.rss:.0f} MiB"),
    ]
    missed = 0
    for what, ok, value in checks:
        print(f"goal {what}: {'met' if ok else 'MISSED'} ({value})")
        missed += not ok
    return missed


def measure(
    rows_list: list[int],
    db: Database,
    tmp: Path,
    *,
    kind: str,
    prepare: Callable[[Path, Path, int], Expected],
    seed: Callable[[str, Expected], None],
    verify: Callable[[str, dict[str, Any], Expected], None],
    table: str,
    columns: str,
    seed_baseline: Callable[[str, Expected], None] | None = None,
) -> list[Result]:
    results = []
    for rows in rows_list:
        path, copy_path = tmp / f"{kind}_{rows}.csv", tmp / f"{kind}_{rows}.copy"
        expected = prepare(path, copy_path, rows)
        url = db.fresh()
        seed(url, expected)
        seconds, cpu, rss, report = run_cli(kind, path, url)
        verify(url, report, expected)
        before = snapshot_for(kind, url)
        again, _, _, second = run_cli(kind, path, url)
        check("re-import: inserted", second["inserted"], 0)
        check("re-import: updated", second["updated"], 0)
        check("re-import: rejected", second["rejected"], expected.bad)
        check("re-import: the store", snapshot_for(kind, url), before)
        db.drop(url)
        url = db.fresh()
        if seed_baseline is not None:
            seed_baseline(url, expected)
        copy = copy_lines(url, table, columns, copy_path)
        db.drop(url)
        result = Result(rows, seconds, rss, again, copy, cpu)
        results.append(result)
        print(
            f"{rows:>10,} rows: tidings {result.rate:>8,.0f} rows/s ({seconds:.1f} s, "
            f"{cpu:.1f} CPU s in the importer and its workers, peak RSS "
            f"{rss:.0f} MiB; unchanged re-import {again:.1f} s); COPY of the accepted rows "
            f"{(rows - expected.bad) / copy:>8,.0f} rows/s ({copy:.1f} s); "
            f"ratio {result.ratio:.2f}",
            flush=True,
        )
        path.unlink()
        copy_path.unlink()
    return results


def snapshot_for(kind: str, url: str) -> tuple[Any, ...]:
    if kind == "contacts":
        return snapshot(url)
    return (
        sql(url, f"SELECT count(*) FROM {kind}"),
        sql(url, "SELECT count(*) FROM events"),
        sql(url, f"SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {kind} t"),
    )


def run(
    kind: str,
    *,
    rows: int,
    rate: int,
    prepare: Callable[..., Expected],
    seed: Callable[[str, Expected], None],
    verify: Callable[[str, dict[str, Any], Expected], None],
    table: str,
    columns: str,
    seed_baseline: Callable[[str, Expected], None] | None = None,
    contacts: int | None = None,
) -> None:
    """The command line of an import benchmark: measure at --rows / 10 and --rows, exit 1 when
    a goal is missed. With ``contacts`` (the default of --contacts), ``prepare`` also gets the
    number of contacts the rows refer to."""
    parser = argparse.ArgumentParser(description=f"{kind} import benchmark")
    parser.add_argument("--rows", type=int, default=rows)
    if contacts is not None:
        parser.add_argument("--contacts", type=int, default=contacts)
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()

    def prepared(path: Path, copy_path: Path, n: int) -> Expected:
        if contacts is None:
            return prepare(path, copy_path, n)
        return prepare(path, copy_path, n, args.contacts)

    with tempfile.TemporaryDirectory() as tmp:
        results = measure(
            [args.rows // 10, args.rows],
            Database(args.url),
            Path(tmp),
            kind=kind,
            prepare=prepared,
            seed=seed,
            verify=verify,
            table=table,
            columns=columns,
            seed_baseline=seed_baseline,
        )
    sys.exit(1 if goals(results, rate=rate) else 0)


if __name__ == "__main__":
    run(
        "contacts",
        rows=1_000_000,
        rate=25_000,
        prepare=write_files,
        seed=seed_contacts,
        verify=verify_contacts,
        table="contacts",
        columns=COPY_COLUMNS,
    )
