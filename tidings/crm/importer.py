"""Import contacts, events and orders from CSV or JSON Lines files.

Streaming: records are read one at a time and written in batches of ``import_batch_size`` rows,
each batch in one transaction, so memory stays flat whatever the file size and an interrupted
import can simply be run again. The header is checked before any row (``crm.columns``): a
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

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, insert, or_, select, update

from tidings.config import Settings, get_settings
from tidings.crm.columns import CONTACTS, EVENTS, ORDERS, Columns
from tidings.crm.consent import ConsentWish
from tidings.crm.db import insert_ignore
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
from tidings.crm.optin import ConsentOutcome, OptInPolicy, apply_consents
from tidings.crm.readers import ERROR, Record, read_records
from tidings.crm.suppression import Identity, suppressed_rows
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


def _split(record: Record, known: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Known columns (matched case-insensitively) and the rest, typed, as extra properties."""
    names = set(known)
    found: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for column, value in record.values.items():
        key = column.strip().lower()
        if key in names:
            found[key] = value
        elif isinstance(value, Mapping) and key in {"attributes", "properties"}:
            extra.update({str(k): v for k, v in value.items()})
        elif _text(value) is not None or not isinstance(value, str):
            extra[column.strip()] = typed_value(value)
    return found, extra


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


def _run(
    path: Path,
    *,
    columns: Columns,
    fmt: str | None,
    engine: Engine,
    settings: Settings,
    allow_extra: bool,
    parse: Callable[[Record, Problems], Any],
    apply: Callable[[Connection, list[Any], ImportReport], None],
) -> ImportReport:
    report = ImportReport(kind=columns.kind, path=str(path))
    batch: list[Any] = []
    # JSON Lines has no header: each new set of keys is checked like one (and remembered)
    suspicious: dict[frozenset[str], list[tuple[str, str]]] = {}

    def flush() -> None:
        with engine.begin() as conn:
            apply(conn, batch, report)
        batch.clear()

    def check_header(names: list[str], location: str) -> None:
        columns.check_header(names, location, allow_extra=allow_extra)

    for record in read_records(path, fmt, check_header=check_header):
        report.read += 1
        if ERROR in record.values:
            report.reject(record.line, [(None, f"the line {record.values[ERROR]}")])
            continue
        if not allow_extra:
            keys = frozenset(record.values)
            if keys not in suspicious:
                suspicious[keys] = columns.suspicious(sorted(keys))
            if suspicious[keys]:
                report.reject(
                    record.line,
                    [
                        (c, columns.explain(c, k) + " (or pass --allow-extra-columns)")
                        for c, k in suspicious[keys]
                    ],
                )
                continue
        warnings: Problems = []
        try:
            batch.append(parse(record, warnings))
        except RowRejected as rejected:
            report.reject(record.line, rejected.problems)
            continue
        if warnings:
            report.warn(record.line, warnings)
        if len(batch) >= settings.import_batch_size:
            flush()
    if batch:
        flush()
    return report


# --------------------------------------------------------------------------------------------
# contacts


@dataclass(slots=True)
class ContactRow:
    line: int
    external_id: str | None
    values: dict[str, str]
    attributes: dict[str, Any]
    consents: dict[str, str]


def _parse_contact(
    record: Record, settings: Settings, warnings: Problems | None = None
) -> ContactRow:
    """A contact row; without ``warnings`` a bad optional field rejects it (the API)."""
    found, attributes = _split(record, CONTACTS.known)
    problems: Problems = []
    external_id, email = _identity(found, problems, warnings)
    values: dict[str, str] = {"email": email} if email else {}
    checks: dict[str, Callable[[str], str]] = {
        "phone": lambda v: normalize_phone(v, region=settings.default_region),
        "timezone": normalize_timezone,
        "locale": normalize_locale,
        "first_name": lambda v: " ".join(v.split())[:200],
        "last_name": lambda v: " ".join(v.split())[:200],
    }
    for name, check in checks.items():
        raw = _text(found.get(name))
        if raw is not None:
            try:
                values[name] = check(raw)
            except FieldError as exc:  # optional: the contact is imported without it
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


def leave_out_suppressed(
    conn: Connection,
    rows: list[Any],
    identities: list[Identity],
    report: ImportReport,
    settings: Settings | None = None,
) -> list[Any]:
    """The rows of a batch that do not name an erased person; the others are reported as
    suppressed on their line (crm/suppression.py). ``identities[i]`` is who ``rows[i]``
    names, normalised."""
    hits = suppressed_rows(conn, identities, settings=settings)
    if not hits:
        return rows
    for index, hit in sorted(hits.items()):
        report.suppress(rows[index].line, hit.kind, hit.reason())
    return [row for index, row in enumerate(rows) if index not in hits]


def _apply_contacts(
    conn: Connection,
    rows: list[ContactRow],
    report: ImportReport,
    *,
    source: str,
    optin: OptInPolicy | None = None,
    settings: Settings | None = None,
) -> None:
    now = utcnow()
    rows = leave_out_suppressed(
        conn,
        rows,
        [Identity(r.external_id, r.values.get("email"), r.values.get("phone")) for r in rows],
        report,
        settings,
    )
    if not rows:
        return
    ext_ids = {r.external_id for r in rows if r.external_id}
    emails = {r.values["email"] for r in rows if "email" in r.values}
    columns = [contacts_t.c.id, contacts_t.c.external_id, contacts_t.c.attributes] + [
        contacts_t.c[name] for name in CONTACT_FIELDS
    ]
    found = conn.execute(
        select(*columns)
        .where(or_(contacts_t.c.external_id.in_(ext_ids), contacts_t.c.email.in_(emails)))
        .order_by(contacts_t.c.id)
    ).mappings()
    originals: dict[int, dict[str, Any]] = {}
    by_ext: dict[str, dict[str, Any]] = {}
    by_email: dict[str, dict[str, Any]] = {}
    targets: list[dict[str, Any]] = []

    def register(target: dict[str, Any]) -> None:
        if target["external_id"]:
            by_ext.setdefault(target["external_id"], target)
        if target["email"]:
            by_email.setdefault(target["email"], target)

    for stored in found:
        entry = {**stored, "attributes": dict(stored["attributes"] or {}), "consents": {}}
        originals[stored["id"]] = {**entry, "attributes": dict(entry["attributes"])}
        targets.append(entry)
        register(entry)

    new: list[dict[str, Any]] = []
    matched: set[int] = set()
    for row in rows:
        email = row.values.get("email")
        target: dict[str, Any] | None = by_ext.get(row.external_id) if row.external_id else None
        if target is None and email:
            candidate = by_email.get(email)
            # An email match is the same person unless it already carries another external id.
            if candidate and (row.external_id is None or candidate["external_id"] is None):
                target = candidate
        if target is not None and target["id"] is not None:
            matched.add(target["id"])
        if target is None:
            target = {"id": None, "external_id": None, "attributes": {}, "consents": {}}
            target.update(dict.fromkeys(CONTACT_FIELDS))
            new.append(target)
            targets.append(target)
        if row.external_id:
            target["external_id"] = row.external_id
        target.update(row.values)
        target["attributes"].update(row.attributes)
        target["consents"].update(row.consents)
        register(target)

    fields = ("external_id", "attributes", *CONTACT_FIELDS)
    changed = [
        t
        for t in targets
        if t["id"] is not None and any(t[f] != originals[t["id"]][f] for f in fields)
    ]
    if changed:
        conn.execute(
            update(contacts_t)
            .where(contacts_t.c.id == bindparam("_id"))
            .values({f: bindparam(f) for f in (*fields, "updated_at")}),
            [{"_id": t["id"], "updated_at": now, **{f: t[f] for f in fields}} for t in changed],
        )
    if new:
        ids = conn.execute(
            insert(contacts_t).returning(contacts_t.c.id, sort_by_parameter_order=True),
            [{**{f: t[f] for f in fields}, "created_at": now, "updated_at": now} for t in new],
        ).scalars()
        for target, new_id in zip(new, ids, strict=True):
            target["id"] = new_id

    new_ids = {t["id"] for t in new}
    changed_ids = {t["id"] for t in changed}
    outcome = _apply_consents(conn, targets, source=source, now=now, optin=optin)
    report.confirmations += outcome.messages
    consent_only = outcome.changed - changed_ids - new_ids
    if consent_only:  # a consent change alone also marks the contact as updated
        conn.execute(
            update(contacts_t).where(contacts_t.c.id.in_(consent_only)).values(updated_at=now)
        )
    report.inserted += len(new)
    report.updated += len(changed_ids | consent_only)
    report.touched |= new_ids | changed_ids | consent_only
    report.unchanged += len(matched - changed_ids - consent_only)


def _apply_consents(
    conn: Connection,
    targets: list[dict[str, Any]],
    *,
    source: str,
    now: datetime,
    optin: OptInPolicy | None,
) -> ConsentOutcome:
    """Record consent given in the file where it differs from the current state (each change
    lands in the audit trail; a grant that needs confirmation becomes pending and queues the
    confirmation email); says whose consent changed."""
    wishes = [
        ConsentWish(t["id"], channel, Purpose.MARKETING.value, status)
        for t in targets
        for channel, status in t["consents"].items()
    ]
    return apply_consents(conn, wishes, source=source, policy=optin, now=now)


def import_contacts(
    path: Path,
    *,
    engine: Engine,
    settings: Settings | None = None,
    fmt: str | None = None,
    allow_extra_columns: bool = False,
) -> ImportReport:
    """Upsert contacts by ``external_id``, else by normalized email."""
    settings = settings or get_settings()
    source = f"import:{path.name}"
    return _run(
        path,
        columns=CONTACTS,
        fmt=fmt,
        engine=engine,
        settings=settings,
        allow_extra=allow_extra_columns,
        parse=lambda record, warnings: _parse_contact(record, settings, warnings),
        apply=lambda conn, rows, report: _apply_contacts(
            conn,
            rows,
            report,
            source=source,
            optin=OptInPolicy.from_settings(settings),
            settings=settings,
        ),
    )


# --------------------------------------------------------------------------------------------
# events and orders: both point at a contact by external_id or email


@dataclass(slots=True)
class _Owned:
    line: int
    external_id: str | None
    email: str | None
    values: dict[str, Any]


def _resolve_contacts(
    conn: Connection, rows: list[_Owned], report: ImportReport, settings: Settings | None = None
) -> list[tuple[_Owned, int]]:
    """Pair each row with its contact id; rows naming no known contact are rejected, or
    reported as suppressed when they name an erased person."""
    ext_ids = {r.external_id for r in rows if r.external_id}
    emails = {r.email for r in rows if r.email and not r.external_id}
    by_ext: dict[str, int] = {}
    by_email: dict[str, int] = {}
    for cid, ext, email in conn.execute(
        select(contacts_t.c.id, contacts_t.c.external_id, contacts_t.c.email)
        .where(or_(contacts_t.c.external_id.in_(ext_ids), contacts_t.c.email.in_(emails)))
        .order_by(contacts_t.c.id)
    ):
        if ext:
            by_ext[ext] = cid
        if email:
            by_email.setdefault(email, cid)
    resolved = []
    unknown: list[_Owned] = []
    for row in rows:
        cid = by_ext.get(row.external_id) if row.external_id else by_email.get(row.email or "")
        if cid is None:
            unknown.append(row)
        else:
            resolved.append((row, cid))
    if unknown:
        identities = [Identity(r.external_id, None if r.external_id else r.email) for r in unknown]
        for row in leave_out_suppressed(conn, unknown, identities, report, settings):
            if row.external_id:
                missing = "external_id", f"no contact has external_id {row.external_id!r}"
            else:
                missing = "email", f"no contact has email {row.email!r}"
            report.reject(row.line, [(missing[0], missing[1] + ": import the contact first")])
    return resolved


def _parse_event(record: Record, warnings: Problems | None = None) -> _Owned:
    found, properties = _split(record, EVENTS.known)
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
    values = {
        "name": name,
        "occurred_at": occurred_at,
        "properties": properties,
        "idempotency_key": _text(found.get("idempotency_key")),
    }
    return _Owned(record.line, external_id, email, values)


def _event_key(row: _Owned) -> str:
    """A key derived from what the event is, so the same event imported twice is stored once."""
    who = f"x:{row.external_id}" if row.external_id else f"e:{row.email}"
    body = json.dumps(
        [who, row.values["name"], row.values["occurred_at"].isoformat(), row.values["properties"]],
        sort_keys=True,
        default=str,
    )
    return "import:" + str(uuid.uuid5(EVENT_NAMESPACE, body))


def _apply_events(
    conn: Connection,
    rows: list[_Owned],
    report: ImportReport,
    *,
    source: str,
    settings: Settings | None = None,
) -> None:
    pending: dict[str, dict[str, Any]] = {}
    resolved = _resolve_contacts(conn, rows, report, settings)
    for row, contact_id in resolved:
        key = row.values["idempotency_key"] or _event_key(row)
        pending[key] = {
            "contact_id": contact_id,
            "name": row.values["name"],
            "properties": row.values["properties"],
            "occurred_at": row.values["occurred_at"],
            "source": source,
            "idempotency_key": key,
            "received_at": utcnow(),
        }
    known = set(
        conn.execute(
            select(events_t.c.idempotency_key).where(events_t.c.idempotency_key.in_(pending))
        ).scalars()
    )
    fresh = [v for k, v in pending.items() if k not in known]
    if fresh:
        conn.execute(insert_ignore(conn, events_t), fresh)
    report.inserted += len(fresh)
    report.touched |= {row["contact_id"] for row in fresh}
    report.unchanged += len(resolved) - len(fresh)  # already stored, or twice in this batch


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
    return _run(
        path,
        columns=EVENTS,
        fmt=fmt,
        engine=engine,
        settings=settings or get_settings(),
        allow_extra=allow_extra_columns,
        parse=_parse_event,
        apply=lambda conn, rows, report: _apply_events(
            conn, rows, report, source=source, settings=settings
        ),
    )


def _parse_order(record: Record, warnings: Problems | None = None) -> _Owned:
    found, attributes = _split(record, ORDERS.known)
    problems: Problems = []
    external_id, email = _identity(found, problems, warnings)
    values: dict[str, Any] = {"attributes": attributes}
    order_id = _text(found.get("order_id"))
    if order_id is None:
        problems.append(("order_id", "order_id is empty"))
    values["order_id"] = order_id
    parsers: dict[str, Callable[[Any], Any]] = {
        "total": parse_amount,
        "currency": normalize_currency,
        "placed_at": parse_timestamp,
        "status": _order_status,
    }
    for name, parser in parsers.items():
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
            ).where(orders_t.c.order_id.in_(pending))
        ).mappings()
    }
    fresh, changed = [], []
    for order_id, values in pending.items():
        old = stored.get(order_id)
        if old is None:
            fresh.append(
                {"order_id": order_id, "updated_at": now, **{f: values[f] for f in ORDER_FIELDS}}
            )
        elif any(_differs(old[f], values[f]) for f in ORDER_FIELDS):
            changed.append(
                {"_id": old["id"], "updated_at": now, **{f: values[f] for f in ORDER_FIELDS}}
            )
    if fresh:
        conn.execute(insert_ignore(conn, orders_t), fresh)
    if changed:
        conn.execute(
            update(orders_t)
            .where(orders_t.c.id == bindparam("_id"))
            .values({f: bindparam(f) for f in (*ORDER_FIELDS, "updated_at")}),
            changed,
        )
    events = [
        event
        for order_id, values in pending.items()
        for event in order_events(order_id, values, previous=_status(stored.get(order_id)), now=now)
    ]
    if events:
        conn.execute(insert_ignore(conn, events_t), events)
    report.inserted += len(fresh)
    report.updated += len(changed)
    report.touched |= {row["contact_id"] for row in (*fresh, *changed)}
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
        parse=_parse_order,
        apply=lambda conn, rows, report: _apply_orders(conn, rows, report, settings=settings),
    )


IMPORTERS: dict[str, Callable[..., ImportReport]] = {
    "contacts": import_contacts,
    "events": import_events,
    "orders": import_orders,
}
