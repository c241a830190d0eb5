"""Import contacts, events and orders from CSV or JSON Lines files.

Streaming: records are read one at a time, checked (by a pool of worker processes for a large
file, ``import_workers``) and written in batches of ``import_batch_size`` rows, each batch in
one transaction, so memory stays flat whatever the file size and an interrupted import can
simply be run again. A batch is written set-based (``crm.bulk``): on PostgreSQL its rows are
COPYed into a staging table and each table gets one statement per batch; SQLite takes one
executemany per table. Matching happens in Python on what two index lookups return, so both
stores give the same result. The header is checked before any row (``crm.columns``): a
misspelt or missing column stops the import. Every bad row is reported with its line, column
and reason and skipped; good rows are imported; importing the same file twice changes nothing.
A bad optional field (a phone that does not parse) is left out with a warning on its line, and
the rest of the row is imported: a row is rejected only when it names nobody (neither an
external_id nor a valid email) or a required field is bad.

>>> from tidings.crm.db import make_engine, upgrade
>>> engine = make_engine("sqlite:///:memory:"); upgrade(engine)
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "c.csv"
>>> _ = path.write_text("email,phone\\nann@example.com,123\\nbad,+14155552671\\n")
>>> report = import_contacts(path, engine=engine)
>>> print(report.inserted, report.rejected, str(report.errors[0])[:35])
1 1 line 3, column email: invalid email
>>> print(report.warned, str(report.warnings[0])[:35])
1 line 2, column phone: invalid phone
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection, Engine, Table, insert, select, union_all, update

from tidings.config import Settings, get_settings
from tidings.crm.bulk import (
    Statistics,
    batch_commit,
    durable,
    is_postgres,
    next_ids,
    upsert,
    upsert_returning,
)
from tidings.crm.columns import CONTACTS, EVENTS, ORDERS, Columns
from tidings.crm.consent import (
    ConsentKey,
    ConsentWish,
    consent_changes,
    stored_consents,
    write_changes,
)
from tidings.crm.db import among, update_rows
from tidings.crm.lookup import Found
from tidings.crm.models import Channel, Contact, Event, Order, Purpose
from tidings.crm.normalize import (
    FieldError,
    consent_status,
    normalize_currency,
    normalize_email,
    normalize_locale,
    normalize_phone,
    normalize_timezone,
    parse_amount,
    parse_timestamp,
    typed_value,
)
from tidings.crm.optin import OptInPolicy, apply_consents
from tidings.crm.readers import ERROR, Record, read_records
from tidings.crm.suppression import Identity, any_suppressed, suppressed_rows
from tidings.crm.types import utcnow

MAX_REPORTED_ERRORS = 1000
CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "locale", "timezone")
CONSENT_COLUMNS = {"consent_email": Channel.EMAIL, "consent_sms": Channel.SMS}
ORDER_STATUSES = frozenset(
    {
        "pending",
        "placed",
        "paid",
        "processing",
        "shipped",
        "delivered",
        "completed",
        "cancelled",
        "refunded",
        "returned",
        "failed",
    }
)
CONTACT_KNOWN = frozenset(CONTACTS.known)
EVENT_KNOWN = frozenset(EVENTS.known)
ORDER_KNOWN = frozenset(ORDERS.known)
EVENT_NAMESPACE = uuid.UUID("6f1c2f9e-52a4-4c1e-9a51-5d1a0b3c7e11")

contacts_t: Table = Contact.__table__  # type: ignore[assignment]
events_t: Table = Event.__table__  # type: ignore[assignment]
orders_t: Table = Order.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did. Rows are lines of the file; records are contacts, events or orders."""

    kind: str
    path: str
    read: int = 0
    rejected: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    warned: int = 0  # accepted rows of which a field was left out
    confirmations: list[int] = field(default_factory=list)
    """Double opt-in confirmation emails queued in the outbox (crm/optin.py)."""
    suppressed: int = 0  # rows naming an erased person: not imported (crm/suppression.py)
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)
    suppressions: list[RowError] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    """Contacts whose data this import changed (for the live segments, segments.live)."""

    @property
    def accepted(self) -> int:
        return self.read - self.rejected - self.suppressed

    def suppress(self, line: int, column: str | None, reason: str) -> None:
        self.suppressed += 1
        if len(self.suppressions) < MAX_REPORTED_ERRORS:
            self.suppressions.append(RowError(line, column, reason))

    def reject(self, line: int, problems: Iterable[tuple[str | None, str]]) -> None:
        self.rejected += 1
        for column, reason in problems:
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append(RowError(line, column, reason))

    def warn(self, line: int, problems: Iterable[tuple[str | None, str]]) -> None:
        self.warned += 1
        for column, reason in problems:
            if len(self.warnings) < MAX_REPORTED_ERRORS:
                self.warnings.append(RowError(line, column, reason))

    def merge(self, other: ImportReport) -> None:
        """Add what ``other`` (the writing side of the same import) counted; problems in line
        order."""
        self.rejected += other.rejected
        self.suppressed += other.suppressed
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.confirmations += other.confirmations
        self.touched |= other.touched
        self.errors = sorted(self.errors + other.errors, key=lambda e: e.line)
        del self.errors[MAX_REPORTED_ERRORS:]
        self.suppressions = sorted(self.suppressions + other.suppressions, key=lambda e: e.line)
        del self.suppressions[MAX_REPORTED_ERRORS:]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "rows": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "warned": self.warned,
            "confirmations": len(self.confirmations),
            "suppressed": self.suppressed,
            "errors": [
                {"line": e.line, "column": e.column, "reason": e.reason} for e in self.errors
            ],
            "errors_truncated": self.rejected > 0 and len(self.errors) >= MAX_REPORTED_ERRORS,
            "warnings": [
                {"line": e.line, "column": e.column, "reason": e.reason} for e in self.warnings
            ],
            "warnings_truncated": len(self.warnings) >= MAX_REPORTED_ERRORS,
            "suppressions": [
                {"line": e.line, "column": e.column, "reason": e.reason} for e in self.suppressions
            ],
        }


Problems = list[tuple[str | None, str]]
"""(column, reason) pairs: what rejects a row, or what was left out of it."""


class RowRejected(Exception):
    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def _text(value: Any) -> str | None:
    """A cell as trimmed text; empty cells are ``None`` (they leave stored values alone)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _split(record: Record, known: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Known columns (matched case-insensitively) and the rest, typed, as extra properties."""
    found: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for column, value in record.values.items():
        key = _key(column)
        if key in known:
            found[key] = value
        elif isinstance(value, str):
            if value.strip():
                extra[column.strip()] = typed_value(value)
        elif isinstance(value, Mapping) and key in {"attributes", "properties"}:
            extra.update({str(k): v for k, v in value.items()})
        else:
            extra[column.strip()] = typed_value(value)
    return found, extra


@lru_cache(maxsize=4096)
def _key(column: str) -> str:
    return column.strip().lower()


def _leave_out(name: str, exc: FieldError, problems: Problems, warnings: Problems | None) -> None:
    """An optional field that fails: a warning when the caller collects them (files), else a
    problem that rejects the row (the API answers 422 and the caller fixes the request)."""
    if warnings is None:
        problems.append((name, str(exc)))
    else:
        warnings.append((name, f"{exc}; imported without it"))


def _identity(
    found: Mapping[str, Any], problems: Problems, warnings: Problems | None
) -> tuple[str | None, str | None]:
    """The row's external_id and normalized email. An invalid email rejects the row when it is
    the only identity; beside an external_id it is an optional field (``_leave_out``)."""
    external_id = _text(found.get("external_id"))
    email = _text(found.get("email"))
    if email is not None:
        try:
            email = normalize_email(email)
        except FieldError as exc:
            if external_id is None:
                problems.append(("email", str(exc)))
                return None, None
            _leave_out("email", exc, problems, warnings)
            email = None
    if external_id is None and email is None:
        problems.append((None, "row has neither external_id nor email: give one of them"))
    return external_id, email


Outcome = tuple[int, Any, Problems | None, Problems]
"""What checking one record gave: (line, row or None, problems that reject it, warnings)."""

#: Records a validation worker checks at a time.
CHUNK = 1000
#: Chunks handed to the workers and not yet taken back (bounds memory: files of any size).
IN_FLIGHT = 8
#: Files from this size are validated in worker processes when ``import_workers`` is 0 (auto).
PARALLEL_FROM_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class _Checker:
    """Checks records of one kind: picklable, so validation workers run the same code."""

    kind: str
    columns: Columns
    allow_extra: bool
    region: str

    def __call__(self, chunk: list[tuple[int, dict[str, Any]]]) -> list[Outcome]:
        parse = PARSERS[self.kind]
        # JSON Lines has no header: each new set of keys is checked like one (and remembered)
        suspicious: dict[frozenset[str], list[tuple[str, str]]] = {}
        outcomes: list[Outcome] = []
        for line, values in chunk:
            if ERROR in values:
                outcomes.append((line, None, [(None, f"the line {values[ERROR]}")], []))
                continue
            if not self.allow_extra:
                keys = frozenset(values)
                if keys not in suspicious:
                    suspicious[keys] = self.columns.suspicious(sorted(keys))
                if suspicious[keys]:
                    problems: Problems = [
                        (c, self.columns.explain(c, k) + " (or pass --allow-extra-columns)")
                        for c, k in suspicious[keys]
                    ]
                    outcomes.append((line, None, problems, []))
                    continue
            warnings: Problems = []
            try:
                row = parse(Record(line, values), self.region, warnings)
            except RowRejected as rejected:
                outcomes.append((line, None, rejected.problems, []))
                continue
            outcomes.append((line, row, None, warnings))
        return outcomes


def _workers(path: Path, settings: Settings) -> int:
    """Validation processes for ``path``: 0 checks in this process.

    Auto: one per CPU beyond two, at most 4, for a large file. A worker costs IPC (a record is
    pickled both ways) and a CPU that PostgreSQL and the writer also need: on two cores the
    worker pipeline moved 100,000 contacts through validation in 6.5-7.6 s, the importing
    process alone in 2.2 s (22 us a row, benchmarks/README.md)."""
    wanted = settings.import_workers
    if wanted == 0:
        large = path.is_file() and path.stat().st_size >= PARALLEL_FROM_BYTES
        wanted = min((os.cpu_count() or 1) - 2, 4) if large else 1
    return 0 if wanted <= 1 else wanted


def _checked(
    path: Path, fmt: str | None, checker: _Checker, settings: Settings
) -> Iterator[list[Outcome]]:
    """The outcomes of the records of ``path``, chunk by chunk, in file order.

    With workers, the file is read here and its chunks are checked by a pool of processes
    (phone, email and time parsing is CPU-bound Python), at most ``IN_FLIGHT`` chunks ahead of
    the writer, so memory stays flat whatever the file size."""

    def check_header(names: list[str], location: str) -> None:
        checker.columns.check_header(names, location, allow_extra=checker.allow_extra)

    def chunks() -> Iterator[list[tuple[int, dict[str, Any]]]]:
        chunk: list[tuple[int, dict[str, Any]]] = []
        for record in read_records(path, fmt, check_header=check_header):
            chunk.append((record.line, record.values))
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    workers = _workers(path, settings)
    if not workers:
        for chunk in chunks():
            yield checker(chunk)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tidings.crm.importer"])
    row_type = ROW_TYPES[checker.kind]

    def taken(result: AsyncResult[list[Outcome]]) -> list[Outcome]:
        return [
            (line, None if row is None else row_type._make(row), problems, warnings)
            for line, row, problems, warnings in result.get()
        ]

    with context.Pool(workers) as pool:
        pending: deque[AsyncResult[list[Outcome]]] = deque()
        for chunk in chunks():
            pending.append(pool.apply_async(_check_in_worker, (checker, chunk)))
            if len(pending) >= IN_FLIGHT:
                yield taken(pending.popleft())
        while pending:
            yield taken(pending.popleft())


def _check_in_worker(checker: _Checker, chunk: list[tuple[int, dict[str, Any]]]) -> list[Outcome]:
    """The checker's outcomes with rows as plain tuples (pickled several times faster)."""
    return [
        (line, None if row is None else tuple(row), problems, warnings)
        for line, row, problems, warnings in checker(chunk)
    ]


def _run(
    path: Path,
    *,
    columns: Columns,
    fmt: str | None,
    engine: Engine,
    settings: Settings,
    allow_extra: bool,
    apply: Callable[[Connection, list[Any], ImportReport], None],
    tables: Sequence[str],
    pipeline: _Pipeline | None = None,
) -> ImportReport:
    """Check the records of ``path`` (in worker processes for large files) and write them in
    batches of ``import_batch_size`` rows, each batch in one transaction.

    Writing runs in a thread of its own, a batch or two behind the reading and checking, so
    the database works while this process reads and the workers check the next rows.

    With a ``pipeline`` (PostgreSQL, and a pool that gives two connections), a batch is
    planned on one connection while the batch before it is written on another, so this
    process's work on a batch overlaps with the server's on the one before."""
    report = ImportReport(kind=columns.kind, path=str(path))
    written = ImportReport(kind=columns.kind, path=str(path))  # the writer's own rejections
    checker = _Checker(columns.kind, columns, allow_extra, settings.default_region)
    batches: queue.Queue[list[Any] | None] = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    def write_each(source: queue.Queue[Any], write: Callable[[Connection, Any], int]) -> None:
        """Write what ``source`` hands until its ``None``, each item in a transaction of its
        own (``write`` says how many rows it wrote), then make all of it durable."""
        try:
            with engine.connect() as conn:
                with conn.begin():
                    statistics = Statistics(conn, tables)
                while (item := source.get()) is not None:
                    size = write(conn, item)
                    with conn.begin():  # keep the planner's row counts true as tables grow
                        statistics.wrote(conn, dict.fromkeys(tables, size))
                durable(conn)  # all batches on disk before the report says they are written
        except BaseException as exc:  # handed to the reading thread, which raises it
            failure.append(exc)
            while source.get() is not None:  # let the one handing finish without blocking
                pass

    def apply_batch(conn: Connection, batch: list[Any]) -> int:
        with conn.begin():
            batch_commit(conn)
            apply(conn, batch, written)
        return len(batch)

    def plan_and_write(pipeline: _Pipeline) -> None:
        plans: queue.Queue[tuple[Any, int] | None] = queue.Queue(maxsize=1)

        def write_plan(conn: Connection, item: tuple[Any, int]) -> int:
            planned, size = item
            with conn.begin():
                batch_commit(conn)
                pipeline.write(conn, planned)
            pipeline.done(planned)
            return size

        writer = threading.Thread(
            target=write_each, args=(plans, write_plan), name="tidings-import-writer", daemon=True
        )
        writer.start()
        try:
            with engine.connect() as conn:
                while (batch := batches.get()) is not None:
                    if failure:
                        continue  # the reading thread raises it; take what it still hands
                    with conn.begin():
                        planned = pipeline.plan(conn, batch, written)
                    plans.put((planned, len(batch)))
        except BaseException as exc:
            failure.append(exc)
            while batches.get() is not None:
                pass
        finally:
            plans.put(None)
            writer.join()

    def hand(batch: list[Any]) -> None:
        batches.put(batch)
        if failure:
            raise failure[0]

    if pipeline is not None and is_postgres(engine) and _two_connections(engine):
        writer = threading.Thread(
            target=plan_and_write, args=(pipeline,), name="tidings-import-planner", daemon=True
        )
    else:
        writer = threading.Thread(
            target=write_each,
            args=(batches, apply_batch),
            name="tidings-import-writer",
            daemon=True,
        )
    writer.start()
    batch: list[Any] = []
    try:
        for outcomes in _checked(path, fmt, checker, settings):
            for line, row, problems, warnings in outcomes:
                report.read += 1
                if problems is not None:
                    report.reject(line, problems)
                    continue
                if warnings:
                    report.warn(line, warnings)
                batch.append(row)
                if len(batch) >= settings.import_batch_size:
                    hand(batch)
                    batch = []
        if batch:
            hand(batch)
    finally:
        batches.put(None)
        writer.join()
    if failure:
        raise failure[0]
    report.merge(written)
    return report


class _Pipeline(Protocol):
    """A batch in two stages on two connections (``_run``): ``plan`` reads, ``write`` writes
    what it planned; ``done`` is called once that write has committed."""

    def plan(self, conn: Connection, rows: list[Any], report: ImportReport) -> Any: ...

    def write(self, conn: Connection, planned: Any) -> None: ...

    def done(self, planned: Any) -> None: ...


def _two_connections(engine: Engine) -> bool:
    """Whether the engine's pool can give an import two connections at once."""
    size = getattr(engine.pool, "size", None)
    if not callable(size):
        return True  # a pool that opens connections on demand
    overflow = int(getattr(engine.pool, "_max_overflow", 0))
    return overflow < 0 or int(size()) + overflow >= 2


# --------------------------------------------------------------------------------------------
# contacts


class ContactRow(NamedTuple):
    line: int
    external_id: str | None
    values: dict[str, str]
    attributes: dict[str, Any]
    consents: dict[str, str]

    @property
    def email(self) -> str | None:
        return self.values.get("email")


def _parse_contact(record: Record, region: str, warnings: Problems | None = None) -> ContactRow:
    """A contact row; without ``warnings`` a bad optional field rejects it (the API)."""
    found, attributes = _split(record, CONTACT_KNOWN)
    problems: Problems = []
    external_id, email = _identity(found, problems, warnings)
    values: dict[str, str] = {"email": email} if email else {}
    phone = _text(found.get("phone"))
    if phone is not None:
        try:
            values["phone"] = normalize_phone(phone, region=region)
        except FieldError as exc:  # optional: the contact is imported without it
            _leave_out("phone", exc, problems, warnings)
    for name, check in _CONTACT_CHECKS:
        raw = _text(found.get(name))
        if raw is not None:
            try:
                values[name] = check(raw)
            except FieldError as exc:
                _leave_out(name, exc, problems, warnings)
    # Consent is a legal record: a value that cannot be read rejects the row for a person to
    # look at, rather than being dropped (which would keep whatever consent is stored).
    consents: dict[str, str] = {}
    for column, channel in CONSENT_COLUMNS.items():
        try:
            status = consent_status(found.get(column))
        except FieldError as exc:
            problems.append((column, str(exc)))
            continue
        if status is not None:
            consents[channel.value] = status.value
    if problems:
        raise RowRejected(problems)
    return ContactRow(record.line, external_id, values, attributes, consents)


def _name(value: str) -> str:
    return " ".join(value.split())[:200]


_CONTACT_CHECKS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("timezone", normalize_timezone),
    ("locale", normalize_locale),
    ("first_name", _name),
    ("last_name", _name),
)


@dataclass(slots=True)
class _Target:
    """A contact a batch writes: a stored one (``stored`` holds its row) or a new one. The
    batch's rows for it are merged in file order: the later row wins, attributes add up."""

    id: int | None
    external_id: str | None
    email: str | None
    stored: dict[str, Any] | None = None
    patch: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    consents: dict[str, str] = field(default_factory=dict)

    def final(self) -> dict[str, Any]:
        """The contact as it is to be stored: its stored row, then what the rows set."""
        old = self.stored or dict.fromkeys(UPSERTED_FIELDS)
        return {
            **{f: old[f] for f in UPSERTED_FIELDS},
            **self.patch,
            "attributes": {**(old["attributes"] or {}), **self.attributes},
        }


UPSERTED_FIELDS = ("external_id", "attributes", *CONTACT_FIELDS)


def _match(rows: list[ContactRow], stored: list[dict[str, Any]]) -> tuple[list[_Target], set[int]]:
    """Pair each row with the contact it means, in file order: the contact with its
    external_id, else the contact with its email unless that one already carries another
    external id; a row matching nobody is a new contact, which later rows of the batch can
    match in turn. Returns the targets (stored first, by id) and the ids of those matched."""
    by_ext: dict[str, _Target] = {}
    by_email: dict[str, _Target] = {}
    targets: list[_Target] = []

    def register(target: _Target) -> None:
        if target.external_id:
            by_ext.setdefault(target.external_id, target)
        if target.email:
            by_email.setdefault(target.email, target)

    for contact in sorted(stored, key=lambda r: int(r["id"])):
        target = _Target(contact["id"], contact["external_id"], contact["email"], stored=contact)
        targets.append(target)
        register(target)
    matched: set[int] = set()
    for row in rows:
        email = row.values.get("email")
        found = by_ext.get(row.external_id) if row.external_id else None
        if found is None and email:
            candidate = by_email.get(email)
            # An email match is the same person unless it already carries another external id.
            if candidate and (row.external_id is None or candidate.external_id is None):
                found = candidate
        if found is None:
            found = _Target(None, None, None)
            targets.append(found)
        elif found.id is not None:
            matched.add(found.id)
        if row.external_id:
            found.external_id = found.patch["external_id"] = row.external_id
        found.patch.update(row.values)
        found.email = found.patch.get("email", found.email)
        found.attributes.update(row.attributes)
        found.consents.update(row.consents)
        register(found)
    return targets, matched


def leave_out_suppressed(
    conn: Connection,
    rows: list[Any],
    identify: Callable[[list[Any]], list[Identity]],
    report: ImportReport,
    settings: Settings | None = None,
) -> list[Any]:
    """The rows of a batch that do not name an erased person; the others are reported as
    suppressed on their line (crm/suppression.py). ``identify(rows)[i]`` is who ``rows[i]``
    names, normalised: asked, and hashed, only if anyone is suppressed now."""
    if not rows or not any_suppressed(conn):
        return rows
    hits = suppressed_rows(conn, identify(rows), settings=settings)
    if not hits:
        return rows
    for index, hit in sorted(hits.items()):
        report.suppress(rows[index].line, hit.kind, hit.reason())
    return [row for index, row in enumerate(rows) if index not in hits]


def _identities(rows: list[ContactRow]) -> list[Identity]:
    return [Identity(r.external_id, r.values.get("email"), r.values.get("phone")) for r in rows]


def _named(rows: list[ContactRow]) -> tuple[set[str], set[str]]:
    """The external ids and the emails a batch's rows name."""
    return (
        {r.external_id for r in rows if r.external_id},
        {r.values["email"] for r in rows if "email" in r.values},
    )


def _changed(targets: list[_Target]) -> list[tuple[_Target, dict[str, Any]]]:
    """The stored contacts the batch changes, each with its row as it is to be stored."""
    changed = []
    for target in targets:
        if target.stored is not None:
            final = target.final()
            if any(final[f] != target.stored[f] for f in UPSERTED_FIELDS):
                changed.append((target, final))
    return changed


def _number(conn: Connection, new: list[_Target]) -> None:
    """New contacts' ids, from the sequence (PostgreSQL): known before the rows are written."""
    for target, new_id in zip(new, next_ids(conn, contacts_t, len(new)), strict=True):
        target.id = new_id


def _contact_rows(
    new: list[_Target], changed: list[tuple[_Target, dict[str, Any]]], now: datetime
) -> list[dict[str, Any]]:
    """The rows of the new and the changed contacts, for ``_upsert_contacts``."""
    stamps = {"created_at": now, "updated_at": now}
    return [
        {"id": t.id, **final, **stamps} for t, final in [*((t, t.final()) for t in new), *changed]
    ]


def _upsert_contacts(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """New contacts inserted, changed ones updated (``created_at`` kept), one statement."""
    upsert(conn, contacts_t, rows, key=("id",), update=(*UPSERTED_FIELDS, "updated_at"))


def _touch(conn: Connection, ids: set[int], now: datetime) -> None:
    """A consent change alone also marks the contact as updated."""
    if ids:
        conn.execute(
            update(contacts_t).where(among(conn, contacts_t.c.id, ids)).values(updated_at=now)
        )


def _count(
    report: ImportReport,
    *,
    new: set[int],
    changed: set[int],
    consent_only: set[int],
    matched: set[int],
) -> None:
    report.inserted += len(new)
    report.updated += len(changed | consent_only)
    report.touched |= new | changed | consent_only
    report.unchanged += len(matched - changed - consent_only)


def _stored_contacts(conn: Connection, rows: list[ContactRow]) -> list[dict[str, Any]]:
    """The stored contacts a batch may mean: by external_id or by email (two index lookups)."""
    ext_ids, emails = _named(rows)
    columns = [contacts_t.c.id, *(contacts_t.c[f] for f in UPSERTED_FIELDS)]
    lookups = []
    if ext_ids:
        lookups.append(select(*columns).where(among(conn, contacts_t.c.external_id, ext_ids)))
    if emails:
        lookups.append(select(*columns).where(among(conn, contacts_t.c.email, emails)))
    if not lookups:
        return []
    result = conn.execute(union_all(*lookups))
    keys = list(result.keys())
    # fetched at once, as tuples: iterating a result fetches row by row, and a RowMapping
    # builds its keys for every row (a fifth of an unchanged re-import's time)
    return list({row[0]: dict(zip(keys, row, strict=True)) for row in result.all()}.values())


def _apply_contacts(
    conn: Connection,
    rows: list[ContactRow],
    report: ImportReport,
    *,
    source: str,
    optin: OptInPolicy | None = None,
    settings: Settings | None = None,
) -> None:
    """Write a batch of contacts: rows naming an erased person are left out (reported), new
    and changed contacts go in one upsert, their consents in one, the consent audit trail in
    one (PostgreSQL; SQLite: executemany). A grant that needs confirmation (``optin``) becomes
    pending and queues its confirmation email."""
    now = utcnow()
    rows = leave_out_suppressed(conn, rows, _identities, report, settings)
    if not rows:
        return
    targets, matched = _match(rows, _stored_contacts(conn, rows))
    new = [t for t in targets if t.id is None]
    changed = _changed(targets)
    if is_postgres(conn):
        _number(conn, new)
        _upsert_contacts(conn, _contact_rows(new, changed, now))
    else:
        if new:
            ids = conn.execute(
                insert(contacts_t).returning(contacts_t.c.id, sort_by_parameter_order=True),
                [{**t.final(), "created_at": now, "updated_at": now} for t in new],
            ).scalars()
            for target, new_id in zip(new, ids, strict=True):
                target.id = new_id
        update_rows(
            conn,
            contacts_t,
            [{"id": t.id, **final, "updated_at": now} for t, final in changed],
        )
    marketing = Purpose.MARKETING.value  # an enum member's value is a slow lookup
    wishes = [
        ConsentWish(t.id, channel, marketing, status)
        for t in targets
        if t.id is not None
        for channel, status in t.consents.items()
    ]
    new_ids = {t.id for t in new if t.id is not None}
    changed_ids = {t.id for t, _ in changed if t.id is not None}
    outcome = apply_consents(conn, wishes, source=source, policy=optin, now=now, fresh=new_ids)
    report.confirmations += outcome.messages
    consent_only = outcome.changed - changed_ids - new_ids
    _touch(conn, consent_only, now)
    _count(report, new=new_ids, changed=changed_ids, consent_only=consent_only, matched=matched)


@dataclass(frozen=True, slots=True)
class _ContactWrites:
    """A planned batch of contacts (``_ContactPipeline``), for the writing connection."""

    seq: int
    contacts: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    consent_only: set[int]
    now: datetime


@dataclass(frozen=True, slots=True)
class _Pending:
    """What one planned batch will store once written (``_ContactPipeline``): each contact's
    row, found by id, external id and email, and its audit rows (each consent's new status),
    by contact."""

    seq: int
    contacts: dict[int, dict[str, Any]]
    by_external_id: dict[str, int]
    by_email: dict[str, int]
    consents: dict[int, list[dict[str, Any]]]

    @classmethod
    def of(cls, seq: int, contacts: list[dict[str, Any]], audit: list[dict[str, Any]]) -> _Pending:
        consents: dict[int, list[dict[str, Any]]] = {}
        for row in audit:
            consents.setdefault(row["contact_id"], []).append(row)
        return cls(
            seq,
            {c["id"]: c for c in contacts},
            {c["external_id"]: c["id"] for c in contacts if c["external_id"]},
            {c["email"]: c["id"] for c in contacts if c["email"]},
            consents,
        )


class _ContactPipeline:
    """Contacts on PostgreSQL in two stages (``_run``): a batch is planned on one connection
    (erasure check, lookups, matching, new ids, consent audit rows) while the batch before it
    is written on another. The plan does not wait for that write: what the batches planned
    and not yet committed will store (``pending``) is laid over what the lookups find, so a
    batch is planned as the serial path (``_apply_contacts``) plans it after the write. Only
    when no consent needs double opt-in (that writes while it plans).

    >>> pipeline = _ContactPipeline(source="import:a.csv", settings=settings)  # doctest: +SKIP
    """

    def __init__(self, *, source: str, settings: Settings) -> None:
        self.source = source
        self.settings = settings
        self.seq = 0
        self.committed = 0  # the last batch written and committed (set by the writing thread)
        self.pending: deque[_Pending] = deque()
        """What the batches planned and not yet committed will store, oldest first."""

    def plan(
        self, conn: Connection, rows: list[ContactRow], report: ImportReport
    ) -> _ContactWrites:
        now = utcnow()
        self.seq += 1
        visible = self.committed  # read before the lookups: batches they are sure to see
        while self.pending and self.pending[0].seq <= visible:
            self.pending.popleft()
        rows = leave_out_suppressed(conn, rows, _identities, report, self.settings)
        targets, matched = _match(rows, self._stored(conn, rows))
        new = [t for t in targets if t.id is None]
        _number(conn, new)
        updates = _changed(targets)
        contacts = _contact_rows(new, updates, now)
        changed = {t.id for t, _ in updates if t.id is not None}
        marketing = Purpose.MARKETING.value
        wanted: dict[ConsentKey, tuple[str, dict[str, Any]]] = {
            (t.id, channel, marketing): (status, {})
            for t in targets
            if t.id is not None
            for channel, status in t.consents.items()
        }
        fresh = {t.id for t in new if t.id is not None}
        current = self._consents(conn, {key[0] for key in wanted} - fresh)
        audit, consented = consent_changes(wanted, current, source=self.source, now=now)
        consent_only = consented - changed - fresh
        _count(report, new=fresh, changed=changed, consent_only=consent_only, matched=matched)
        self.pending.append(_Pending.of(self.seq, contacts, audit))
        return _ContactWrites(self.seq, contacts, audit, consent_only, now)

    def write(self, conn: Connection, planned: _ContactWrites) -> None:
        """The serial path's writes: contacts, then their consents and audit trail."""
        _upsert_contacts(conn, planned.contacts)
        write_changes(conn, planned.audit)
        _touch(conn, planned.consent_only, planned.now)

    def done(self, planned: _ContactWrites) -> None:
        self.committed = planned.seq

    def _stored(self, conn: Connection, rows: list[ContactRow]) -> list[dict[str, Any]]:
        """``_stored_contacts`` as it will be once the pending batches are written: a contact
        they write is taken as they write it, found by its new external id or email, and
        left out when it no longer has the ones the rows name."""
        found = {contact["id"]: contact for contact in _stored_contacts(conn, rows)}
        if not self.pending:
            return list(found.values())
        ext_ids, emails = _named(rows)
        for batch in self.pending:  # in batch order: a later batch's row for a contact wins
            written = batch.contacts
            ids = [i for i in found if i in written]
            ids += [i for e in ext_ids if (i := batch.by_external_id.get(e)) is not None]
            ids += [i for e in emails if (i := batch.by_email.get(e)) is not None]
            for contact_id in ids:
                found[contact_id] = written[contact_id]
        return [c for c in found.values() if c["external_id"] in ext_ids or c["email"] in emails]

    def _consents(self, conn: Connection, ids: set[int]) -> dict[ConsentKey, str]:
        """The stored consent statuses of ``ids``, as they will be once the pending batches
        are written."""
        current = stored_consents(conn, ids)
        for batch in self.pending:
            for contact_id in ids & batch.consents.keys():
                for row in batch.consents[contact_id]:
                    current[(contact_id, row["channel"], row["purpose"])] = row["status"]
        return current


def import_contacts(
    path: Path,
    *,
    engine: Engine,
    settings: Settings | None = None,
    fmt: str | None = None,
    allow_extra_columns: bool = False,
) -> ImportReport:
    """Upsert contacts by ``external_id``, else by normalized email."""
    source = f"import:{path.name}"
    settings = settings or get_settings()
    optin = OptInPolicy.from_settings(settings)
    pipeline = None
    if optin is None or not optin.requires(source, Channel.EMAIL.value, Purpose.MARKETING.value):
        pipeline = _ContactPipeline(source=source, settings=settings)
    return _run(
        path,
        columns=CONTACTS,
        fmt=fmt,
        engine=engine,
        settings=settings,
        allow_extra=allow_extra_columns,
        apply=lambda conn, rows, report: _apply_contacts(
            conn, rows, report, source=source, optin=optin, settings=settings
        ),
        tables=("contacts", "consents", "consent_changes"),
        pipeline=pipeline,
    )


# --------------------------------------------------------------------------------------------
# events and orders: both point at a contact by external_id or email


class _Owned(NamedTuple):
    line: int
    external_id: str | None
    email: str | None
    values: dict[str, Any]


def _owners(rows: list[_Owned]) -> list[Identity]:
    return [Identity(r.external_id, None if r.external_id else r.email) for r in rows]


def _resolve_contacts(
    conn: Connection, rows: list[_Owned], report: ImportReport, settings: Settings | None = None
) -> list[tuple[_Owned, int]]:
    """Pair each row with its contact id; rows naming no known contact are rejected, or
    reported as suppressed when they name an erased person."""
    found = Found.of(
        conn,
        external_ids={r.external_id for r in rows if r.external_id},
        emails={r.email for r in rows if r.email and not r.external_id},
    )
    resolved = []
    unknown: list[_Owned] = []
    for row in rows:
        if row.external_id:
            cid = found.by_external_id.get(row.external_id)
        else:
            cid = found.by_email.get(row.email or "")
        if cid is None:
            unknown.append(row)
        else:
            resolved.append((row, cid))
    if unknown:
        for row in leave_out_suppressed(conn, unknown, _owners, report, settings):
            if row.external_id:
                missing = "external_id", f"no contact has external_id {row.external_id!r}"
            else:
                missing = "email", f"no contact has email {row.email!r}"
            report.reject(row.line, [(missing[0], missing[1] + ": import the contact first")])
    return resolved


def _parse_event(record: Record, region: str, warnings: Problems | None = None) -> _Owned:
    found, properties = _split(record, EVENT_KNOWN)
    problems: Problems = []
    external_id, email = _identity(found, problems, warnings)
    name = _text(found.get("name"))
    if name is None:
        problems.append(("name", "event name is empty: give e.g. order.placed"))
    occurred = _text(found.get("occurred_at"))
    occurred_at = None
    if occurred is None:
        problems.append(("occurred_at", "occurred_at is empty: give an ISO 8601 time"))
    else:
        try:
            occurred_at = parse_timestamp(occurred)
        except FieldError as exc:
            problems.append(("occurred_at", str(exc)))
    if problems:
        raise RowRejected(problems)
    assert name is not None and occurred_at is not None
    key = _text(found.get("idempotency_key"))
    values = {
        "name": name,
        "occurred_at": occurred_at,
        "properties": properties,
        "idempotency_key": key or _event_key(external_id, email, name, occurred_at, properties),
    }
    return _Owned(record.line, external_id, email, values)


def _event_key(
    external_id: str | None,
    email: str | None,
    name: str,
    occurred_at: datetime,
    properties: dict[str, Any],
) -> str:
    """A key derived from what the event is, so the same event imported twice is stored once.

    Keys are stored: they must not change between versions, or a file imported again would
    store its events twice. So this is ``uuid.uuid5(EVENT_NAMESPACE, json.dumps(..,
    sort_keys=True, default=str))`` exactly, with one encoder for all rows (``json.dumps``
    builds one per call) and the UUID's text built from the SHA-1 without a ``UUID`` object:
    a third of an event import's time went here (test_import: equal to the spelt-out form).

    >>> key = _event_key("C1", None, "order.placed", datetime(2026, 1, 1), {"sku": "A"})
    >>> key == "import:" + str(uuid.uuid5(EVENT_NAMESPACE, json.dumps(
    ...     ["x:C1", "order.placed", "2026-01-01T00:00:00", {"sku": "A"}],
    ...     sort_keys=True, default=str)))
    True
    """
    who = f"x:{external_id}" if external_id else f"e:{email}"
    body = _KEY_JSON.encode([who, name, occurred_at.isoformat(), properties])
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + body.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"import:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_KEY_JSON = json.JSONEncoder(sort_keys=True, default=str)
_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


def _apply_events(
    conn: Connection,
    rows: list[_Owned],
    report: ImportReport,
    *,
    source: str,
    settings: Settings | None = None,
) -> None:
    """Append a batch of events in one statement; one already stored (same key) is left."""
    now = utcnow()
    pending: dict[str, dict[str, Any]] = {}
    resolved = _resolve_contacts(conn, rows, report, settings)
    for row, contact_id in resolved:
        key = row.values["idempotency_key"]
        pending[key] = {
            "contact_id": contact_id,
            "name": row.values["name"],
            "properties": row.values["properties"],
            "occurred_at": row.values["occurred_at"],
            "source": source,
            "idempotency_key": key,
            "received_at": now,
        }
    owners = upsert_returning(
        conn, events_t, list(pending.values()), "contact_id", key=("idempotency_key",)
    )
    written = len(owners)
    report.inserted += written
    report.touched.update(owners)
    report.unchanged += len(resolved) - written  # already stored, or twice in this batch


def import_events(
    path: Path,
    *,
    engine: Engine,
    settings: Settings | None = None,
    fmt: str | None = None,
    allow_extra_columns: bool = False,
) -> ImportReport:
    """Append events; an event already stored (same idempotency key) is skipped."""
    source = f"import:{path.name}"
    settings = settings or get_settings()
    return _run(
        path,
        columns=EVENTS,
        fmt=fmt,
        engine=engine,
        settings=settings,
        allow_extra=allow_extra_columns,
        apply=lambda conn, rows, report: _apply_events(
            conn, rows, report, source=source, settings=settings
        ),
        tables=("events",),
    )


def _parse_order(record: Record, region: str, warnings: Problems | None = None) -> _Owned:
    found, attributes = _split(record, ORDER_KNOWN)
    problems: Problems = []
    external_id, email = _identity(found, problems, warnings)
    values: dict[str, Any] = {"attributes": attributes}
    order_id = _text(found.get("order_id"))
    if order_id is None:
        problems.append(("order_id", "order_id is empty"))
    values["order_id"] = order_id
    for name, parser in _ORDER_PARSERS:
        raw = _text(found.get(name))
        if raw is None:
            problems.append((name, f"{name} is empty"))
            continue
        try:
            values[name] = parser(raw)
        except FieldError as exc:
            problems.append((name, str(exc)))
    if problems:
        raise RowRejected(problems)
    return _Owned(record.line, external_id, email, values)


def _order_status(value: str) -> str:
    status = value.strip().lower()
    if status not in ORDER_STATUSES:
        raise FieldError(
            f"unknown order status {value!r}: use one of " + ", ".join(sorted(ORDER_STATUSES))
        )
    return status


_ORDER_PARSERS: tuple[tuple[str, Callable[[str], Any]], ...] = (
    ("total", parse_amount),
    ("currency", normalize_currency),
    ("placed_at", parse_timestamp),
    ("status", _order_status),
)


ORDER_FIELDS = ("contact_id", "total", "currency", "status", "placed_at", "attributes")


def _apply_orders(
    conn: Connection,
    rows: list[_Owned],
    report: ImportReport,
    *,
    settings: Settings | None = None,
) -> None:
    now = utcnow()
    pending: dict[str, dict[str, Any]] = {}
    for row, contact_id in _resolve_contacts(conn, rows, report, settings):
        pending[row.values["order_id"]] = {**row.values, "contact_id": contact_id}
    stored = {
        r["order_id"]: r
        for r in conn.execute(
            select(
                orders_t.c.id, orders_t.c.order_id, *[orders_t.c[f] for f in ORDER_FIELDS]
            ).where(among(conn, orders_t.c.order_id, pending))
        ).mappings()
    }
    fresh: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for order_id, values in pending.items():
        old = stored.get(order_id)
        order: dict[str, Any] = {
            "order_id": order_id,
            "updated_at": now,
            **{f: values[f] for f in ORDER_FIELDS},
        }
        if old is None:
            fresh.append(order)
        elif any(_differs(old[f], values[f]) for f in ORDER_FIELDS):
            changed.append(order)
    # a new order that a concurrent writer stored first is left as it is, as before
    upsert(conn, orders_t, fresh, key=("order_id",))
    upsert(conn, orders_t, changed, key=("order_id",), update=(*ORDER_FIELDS, "updated_at"))
    events = [
        event
        for order_id, values in pending.items()
        for event in order_events(order_id, values, previous=_status(stored.get(order_id)), now=now)
    ]
    upsert(conn, events_t, events, key=("idempotency_key",))
    report.inserted += len(fresh)
    report.updated += len(changed)
    report.touched |= {order["contact_id"] for order in (*fresh, *changed)}
    report.unchanged += len(pending) - len(fresh) - len(changed)


PLACED = {"pending", "placed"}


def _status(order: Any) -> str | None:
    return None if order is None else str(order["status"])


def order_events(
    order_id: str, values: dict[str, Any], *, previous: str | None, now: datetime
) -> list[dict[str, Any]]:
    """An order as events, whichever way it arrives (file or API), so waits, goals, triggers
    and segments see it: ``order.placed`` when it is new (at ``placed_at``), and
    ``order.<status>`` whenever its status changes to something past placed. Each has a key
    derived from the order and the status: importing the same file again adds nothing."""
    status = values["status"]
    properties = {
        "order_id": order_id,
        "value": str(values["total"]),
        "currency": values["currency"],
        "status": status,
    }
    base = {"contact_id": values["contact_id"], "source": "orders", "received_at": now}
    events = []
    if previous is None:
        events.append(
            {
                **base,
                "name": "order.placed",
                "properties": properties,
                "occurred_at": values["placed_at"],
                "idempotency_key": f"order:{order_id}:placed",
            }
        )
    if status != previous and status not in PLACED:
        events.append(
            {
                **base,
                "name": f"order.{status}",
                "properties": properties,
                "occurred_at": now if previous is not None else values["placed_at"],
                "idempotency_key": f"order:{order_id}:{status}",
            }
        )
    return events


def _differs(stored: Any, new: Any) -> bool:
    if isinstance(new, Decimal):
        return Decimal(stored) != new
    return bool(stored != new)


def import_orders(
    path: Path,
    *,
    engine: Engine,
    settings: Settings | None = None,
    fmt: str | None = None,
    allow_extra_columns: bool = False,
) -> ImportReport:
    """Upsert orders by ``order_id``: a changed status or total updates the stored order."""
    settings = settings or get_settings()
    return _run(
        path,
        columns=ORDERS,
        fmt=fmt,
        engine=engine,
        settings=settings,
        allow_extra=allow_extra_columns,
        apply=lambda conn, rows, report: _apply_orders(conn, rows, report, settings=settings),
        tables=("orders", "events"),
    )


ROW_TYPES: dict[str, Any] = {"contacts": ContactRow, "events": _Owned, "orders": _Owned}
PARSERS: dict[str, Callable[[Record, str, Problems | None], Any]] = {
    "contacts": _parse_contact,
    "events": _parse_event,
    "orders": _parse_order,
}
IMPORTERS: dict[str, Callable[..., ImportReport]] = {
    "contacts": import_contacts,
    "events": import_events,
    "orders": import_orders,
}
