"""The event API (``/v1``): events, contacts, orders in, contact cards out.

Authenticated with an API key (``Authorization: Bearer tid_...`` or ``X-API-Key``; see
web/apikeys.py). ``Idempotency-Key``: the same key with the same request returns the first
response again (header ``Idempotent-Replayed: true``) and has no second effect; the same key
with a different request is refused with 422. Single objects or arrays (up to 1000) are taken.
Contacts and orders are validated by the importer's own rules (crm/importer.py), so a field
is checked the same way in a file and in a request; a bad item gets 422 naming its index and
field, and nothing of that request is written.

>>> client.post("/v1/events", json={"external_id": "C0002", "name": "order.shipped"},
...             headers={"Authorization": f"Bearer {key}"}).json()    # doctest: +SKIP
{'results': [{'index': 0, 'status': 'stored', 'event_id': 7, 'sent': 1, ...}]}

With the Redis buffer (``TIDINGS_REDIS_URL``) an event that triggers a transactional journey is
still posted in the request (the SMS goes out in it); the others are queued (202). An event for
an unknown contact is 422 either way; only while the store is unreachable is everything queued.

``POST /v1/journeys/{name}/trigger`` fires a ``type: api`` journey for the contacts it names
(``journeys.triggers.trigger_journey``, as ``tidings journey trigger`` does).

``GET /v1/contacts/{ref}/export`` and ``DELETE /v1/contacts/{ref}``: a person's data as one
JSON document, and its erasure (crm/erasure.py, docs/privacy.md). A contact write naming an
erased person is not stored and is listed as ``suppressed``, unless it says ``"reconsent":
true`` with a granted consent (the person consented again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ConfigDict, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool

from tidings.crm.erasure import ContactNotFound, erase_contact, export_contact, find_erasure
from tidings.crm.importer import (
    ImportReport,
    RowRejected,
    _apply_contacts,
    _apply_orders,
    _parse_contact,
    _parse_order,
)
from tidings.crm.optin import OptInPolicy
from tidings.crm.readers import Record
from tidings.crm.suppression import Identity, release, suppressed_rows
from tidings.crm.types import utcnow
from tidings.segments import live as live_segments
from tidings.segments.inputs import Change
from tidings.web.apikeys import Principal, authenticate, request_hash
from tidings.web.card import contact_card, find_contact_id
from tidings.web.events import MAX_BATCH, ContactRef, EventIn, post_many, resolve, to_item
from tidings.web.items import EventBatch
from tidings.web.jsonsafe import StorableModel, problem

log = logging.getLogger("tidings.web")
router = APIRouter(prefix="/v1", tags=["event API"])
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer tid_...")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
AUTH_CACHE_SECONDS = 3600
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "an item is invalid: its index and field are named"}
}


def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    x_api_key: Annotated[str | None, Depends(api_key_header)],
) -> Principal:
    """The API key's owner; while the store is down, a key seen within the hour still works."""
    key = credentials.credentials if credentials else x_api_key
    if not key:
        raise HTTPException(401, "give an API key: Authorization: Bearer tid_...")
    state = request.app.state.web
    try:
        found = authenticate(state.db, key)
    except DBAPIError:
        cached = state.auth_cache.get(key)
        if cached is None or cached[1] < time.monotonic():
            raise HTTPException(503, "the store is unavailable") from None
        return cached[0]  # type: ignore[no-any-return]
    if found is None:
        raise HTTPException(401, "unknown or revoked API key")
    state.auth_cache[key] = (found, time.monotonic() + AUTH_CACHE_SECONDS)
    return found


Auth = Annotated[Principal, Depends(principal)]
IdemKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Retry-safe request key"),
]


async def idempotent(
    request: Request,
    who: Principal,
    key: str | None,
    compute: Callable[[], tuple[int, dict[str, Any]]],
) -> JSONResponse:
    state = request.app.state.web
    if not key:
        status, payload = await run_in_threadpool(compute)
        return JSONResponse(payload, status_code=status)
    digest = request_hash(request.method, request.url.path, await request.body())
    stored = await run_in_threadpool(state.idempotency.get, who.key_id, key)
    if stored is not None:
        if stored[0] != digest:
            raise HTTPException(
                422, "this Idempotency-Key was used with a different request: use a new key"
            )
        return JSONResponse(
            stored[2], status_code=stored[1], headers={"Idempotent-Replayed": "true"}
        )
    status, payload = await run_in_threadpool(compute)
    if 200 <= status < 300:
        await run_in_threadpool(state.idempotency.put, who.key_id, key, digest, status, payload)
    return JSONResponse(payload, status_code=status)


EventBody = EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]


@router.post(
    "/events",
    summary="Post events (one or an array): stored once, journeys run",
    responses={**UNAUTHORIZED, **INVALID, 202: {"description": "queued (Redis buffer)"}},
)
async def post_events(
    body: EventBody, request: Request, who: Auth, idem: IdemKey = None
) -> JSONResponse:
    state = request.app.state.web
    events = body if isinstance(body, list) else [body]
    now = utcnow()
    items = [
        to_item(
            e,
            now=now,
            key=f"api:{who.prefix}:{idem}:{i}" if idem else None,
            source=f"api:{who.name}",
        )
        for i, e in enumerate(events)
    ]

    def compute() -> tuple[int, dict[str, Any]]:
        if state.sink.buffered:
            return _post_buffered(state, items)
        unknown = _unknown(state, items, resolve(state.db, items))
        if unknown:
            return 422, unknown
        results = post_many(state.runtime(), items)
        state.changed()  # the live loop takes what these events queued
        return 200, {"results": results}

    return await idempotent(request, who, idem, compute)


def _post_buffered(state: Any, items: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """With Redis: what triggers a transactional journey is posted now, the rest is queued;
    while the store is unreachable everything is queued (the consumer posts it later)."""
    from tidings.journeys.triggers import runs_at_once

    def queue(some: list[dict[str, Any]]) -> None:
        if some:
            state.sink.submit([EventBatch(events=some)])

    try:
        found = resolve(state.db, items)
        runtime = state.runtime()
        versions = runtime.engine.versions()
    except (OperationalError, InterfaceError):
        queue(items)
        return 202, {"status": "queued", "count": len(items)}
    unknown = _unknown(state, items, found)
    if unknown:
        return 422, unknown
    now = [i for i, e in enumerate(items) if runs_at_once(versions, e["name"], e["properties"])]
    if not now:
        queue(items)
        return 202, {"status": "queued", "count": len(items)}
    at_once = set(now)
    later = [i for i in range(len(items)) if i not in at_once]
    queue([items[i] for i in later])
    try:
        posted = post_many(runtime, [items[i] for i in now])
    except (OperationalError, InterfaceError):  # the store went away meanwhile
        queue([items[i] for i in now])
        return 202, {"status": "queued", "count": len(items)}
    state.changed()
    results = [{**result, "index": index} for index, result in zip(now, posted, strict=True)]
    results += [{"index": i, "status": "queued"} for i in later]
    return 200, {"results": sorted(results, key=lambda r: int(r["index"]))}


def _unknown(
    state: Any, items: list[dict[str, Any]], found: list[int | None]
) -> dict[str, Any] | None:
    """The 422 body for events whose contact does not exist (None when all do); an event
    naming an erased person says so."""
    missing = [i for i, cid in enumerate(found) if cid is None]
    if not missing:
        return None
    with state.db.connect() as conn:
        hits = suppressed_rows(
            conn,
            [Identity(items[i].get("external_id"), items[i].get("email")) for i in missing],
            settings=state.settings,
        )
    errors = [
        {
            "index": i,
            "field": hits[n].kind if n in hits else _ref_field(items[i]),
            "error": hits[n].reason() if n in hits else "no such contact",
        }
        for n, i in enumerate(missing)
    ]
    return {"detail": errors}


def _ref_field(item: dict[str, Any]) -> str:
    return next(f for f in ("contact_id", "external_id", "email") if item.get(f))


class TriggerContact(ContactRef):
    model_config = ConfigDict(extra="forbid")
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="This contact's template data ({{ data.code }}, or {{ code }}); its keys "
        "win over the common data.",
    )


class TriggerIn(StorableModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "contacts": [
                    {"external_id": "C0002", "data": {"code": "SPRING-7Q"}},
                    {"email": "ann@example.com"},
                ],
                "data": {"launch": "spring"},
            }
        },
    )
    contacts: list[TriggerContact] = Field(min_length=1, max_length=MAX_BATCH)
    data: dict[str, Any] = Field(default_factory=dict, description="Template data for everyone.")


def _identity(target: Any) -> Identity:
    """Who a trigger target names, for the suppression check."""
    ref = str(target.ref).strip()
    return Identity(
        external_id=ref if target.by in ("external_id", "any") else None,
        email=ref.lower() if target.by in ("email", "any") and "@" in ref else None,
    )


def _target(contact: TriggerContact) -> Any:
    from tidings.journeys.triggers import Target

    if contact.contact_id is not None:
        return Target(f"#{contact.contact_id}", by="contact_id", data=contact.data)
    if contact.external_id is not None:
        return Target(contact.external_id, by="external_id", data=contact.data)
    return Target(contact.email or "", by="email", data=contact.data)


@router.post(
    "/journeys/{name}/trigger",
    summary="Fire a `type: api` journey for these contacts: enrolled and sent at once",
    responses={
        **UNAUTHORIZED,
        **INVALID,
        404: {"description": "no such journey"},
        409: {"description": "the journey is paused"},
    },
)
async def trigger_journey(
    name: str, body: TriggerIn, request: Request, who: Auth, idem: IdemKey = None
) -> JSONResponse:
    why = problem(name, "name")
    if why is not None:
        raise HTTPException(422, why)
    state = request.app.state.web
    targets = [_target(c) for c in body.contacts]

    def compute() -> tuple[int, dict[str, Any]]:
        from tidings.journeys.triggers import TriggerRefused, UnknownContacts
        from tidings.journeys.triggers import trigger_journey as fire

        try:
            outcome = fire(
                state.runtime(),
                name,
                targets,
                data=body.data,
                key=f"{who.prefix}:{idem}" if idem else None,
                source=f"api:{who.name}",
            )
            state.changed()  # update_contact steps run in the call may have queued changes
        except UnknownContacts as exc:
            with state.db.connect() as conn:
                hits = suppressed_rows(
                    conn, [_identity(t) for _, t in exc.unknown], settings=state.settings
                )
            detail = [
                {
                    "index": i,
                    "field": t.by,
                    "error": hits[n].reason() if n in hits else "no such contact",
                }
                for n, (i, t) in enumerate(exc.unknown)
            ]
            return 422, {"detail": detail}
        except TriggerRefused as exc:
            return exc.status, {"detail": str(exc)}
        contacts = [
            {
                "index": i,
                "contact_id": cid,
                "status": "enrolled" if outcome.contacts.get(cid) else "already",
            }
            for i, cid in enumerate(outcome.contact_ids)
        ]
        return 200, {
            "journey": outcome.journey,
            "enrolled": outcome.enrolled,
            "already": outcome.already,
            "sent": outcome.sent,
            "failed": outcome.failed,
            "retry": outcome.retry,
            "failures": outcome.failures,
            "contacts": contacts,
        }

    return await idempotent(request, who, idem, compute)


class ContactIn(StorableModel):
    model_config = ConfigDict(extra="forbid")
    external_id: str | None = Field(None, max_length=255)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=40, description="E.164, or national")
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=200)
    locale: str | None = Field(None, max_length=35)
    timezone: str | None = Field(None, max_length=64, description="IANA name")
    consent_email: bool | str | None = Field(None, description="yes/no")
    consent_sms: bool | str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    reconsent: bool = Field(
        False,
        description="The person consented again after an erasure: lifts the suppression of "
        "this email, phone and external id. Needs consent_email or consent_sms granted in the "
        "same item (docs/privacy.md).",
    )


class OrderIn(StorableModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str = Field(min_length=1, max_length=255)
    external_id: str | None = Field(None, max_length=255)
    email: str | None = Field(None, max_length=320)
    total: Decimal | str
    currency: str = Field(min_length=3, max_length=3)
    status: str = Field(min_length=1, max_length=32)
    placed_at: datetime | str
    attributes: dict[str, Any] = Field(default_factory=dict)


def _records(models: list[Any]) -> list[Record]:
    out = []
    for index, model in enumerate(models):
        values = {k: v for k, v in model.model_dump(exclude_none=True).items()}
        values.pop("reconsent", None)
        for key, value in values.items():
            if isinstance(value, bool):
                values[key] = "yes" if value else "no"
            elif isinstance(value, datetime | Decimal):
                values[key] = value.isoformat() if isinstance(value, datetime) else str(value)
        out.append(Record(line=index, values=values))
    return out


def _write(
    state: Any,
    models: list[Any],
    parse: Callable[[Record], Any],
    apply: Callable[[Any, list[Any], ImportReport], None],
    kind: str,
    change: Change,
) -> tuple[int, dict[str, Any]]:
    report = ImportReport(kind=kind, path="api")
    rows = []
    for record in _records(models):
        report.read += 1
        try:
            rows.append(parse(record))
        except RowRejected as rejected:
            report.reject(record.line, rejected.problems)

    class Rollback(Exception):
        pass

    if not report.errors:
        live = live_segments.plan(state.runtime().engine)  # before the write's transaction
        try:
            with state.db.begin() as conn:
                apply(conn, rows, report)
                if report.errors:
                    raise Rollback
                if report.touched:  # queued for the live segments with the write itself
                    touched = [(cid, change) for cid in sorted(report.touched)]
                    live_segments.record(conn, live, touched)
        except Rollback:
            pass
    if report.errors:
        errors = [{"index": e.line, "field": e.column, "error": e.reason} for e in report.errors]
        return 422, {"detail": errors}
    counts: dict[str, Any] = {k: getattr(report, k) for k in ("inserted", "updated", "unchanged")}
    if report.suppressed:
        counts["suppressed"] = [
            {"index": e.line, "field": e.column, "error": e.reason} for e in report.suppressions
        ]
        if report.suppressed == report.read:  # nothing of the request was stored
            return 409, counts
    if report.touched:  # committed: the live loop takes it now
        state.changed()
    if report.confirmations:  # double opt-in emails, committed in the outbox: send them now
        counts["confirmations"] = len(report.confirmations)
        try:
            state.runtime().dispatcher.dispatch(only=report.confirmations)
        except Exception:  # still queued: the next tick sends them
            log.exception("double opt-in confirmations not sent now; the tick will send them")
    return 200, counts


ContactBody = ContactIn | Annotated[list[ContactIn], Field(min_length=1, max_length=MAX_BATCH)]
OrderBody = OrderIn | Annotated[list[OrderIn], Field(min_length=1, max_length=MAX_BATCH)]


@router.post(
    "/contacts", summary="Upsert contacts (one or an array)", responses={**UNAUTHORIZED, **INVALID}
)
async def post_contacts(
    body: ContactBody, request: Request, who: Auth, idem: IdemKey = None
) -> JSONResponse:
    state = request.app.state.web
    models = body if isinstance(body, list) else [body]
    source = f"api:{who.name}"

    def parse(record: Record) -> Any:
        row = _parse_contact(record, state.settings.default_region)
        if models[record.line].reconsent and "granted" not in row.consents.values():
            raise RowRejected(
                [("reconsent", "reconsent needs consent_email or consent_sms granted (yes)")]
            )
        return row

    def apply(conn: Any, rows: list[Any], rep: ImportReport) -> None:
        again = [
            Identity(r.external_id, r.values.get("email"), r.values.get("phone"))
            for r, m in zip(rows, models, strict=True)
            if m.reconsent
        ]
        if again:  # in the same transaction as the write: both or neither
            release(conn, again, by=f"api:{who.name} ({who.prefix})", settings=state.settings)
        _apply_contacts(
            conn,
            rows,
            rep,
            source=source,
            optin=OptInPolicy.from_settings(state.settings),
            settings=state.settings,
        )

    def compute() -> tuple[int, dict[str, Any]]:
        return _write(state, models, parse, apply, "contacts", Change.contact())

    return await idempotent(request, who, idem, compute)


@router.post(
    "/orders", summary="Upsert orders (one or an array)", responses={**UNAUTHORIZED, **INVALID}
)
async def post_orders(
    body: OrderBody, request: Request, who: Auth, idem: IdemKey = None
) -> JSONResponse:
    state = request.app.state.web
    models = body if isinstance(body, list) else [body]

    def compute() -> tuple[int, dict[str, Any]]:
        def apply(conn: Any, rows: list[Any], rep: ImportReport) -> None:
            _apply_orders(conn, rows, rep, settings=state.settings)

        # an order also writes order.* events (crm.importer.order_events)
        change = Change(events=None, orders=True)
        return _write(
            state,
            models,
            lambda r: _parse_order(r, state.settings.default_region),
            apply,
            "orders",
            change,
        )

    return await idempotent(request, who, idem, compute)


@router.get(
    "/contacts/{ref}",
    summary="The contact card: profile, consents and the whole history in time order",
    responses={**UNAUTHORIZED, **INVALID, 404: {"description": "no such contact"}},
)
async def get_contact(ref: str, request: Request, who: Auth) -> JSONResponse:
    why = problem(ref, "ref")
    if why is not None:
        raise HTTPException(422, why)
    card = await run_in_threadpool(contact_card, request.app.state.web.db, ref)
    if card is None:
        raise HTTPException(404, f"no contact with id, external_id or email {ref!r}")
    return JSONResponse(card)


def _ref_problem(ref: str) -> None:
    why = problem(ref, "ref")
    if why is not None:
        raise HTTPException(422, why)


@router.get(
    "/contacts/{ref}/export",
    summary="Everything stored about a contact, as one JSON document (GDPR art. 15, 20)",
    responses={**UNAUTHORIZED, **INVALID, 404: {"description": "no such contact"}},
)
async def export_contact_data(ref: str, request: Request, who: Auth) -> JSONResponse:
    _ref_problem(ref)
    db = request.app.state.web.db

    def compute() -> dict[str, Any] | None:
        contact_id = find_contact_id(db, ref)
        if contact_id is None:
            return None
        try:
            return export_contact(db, contact_id)
        except ContactNotFound:  # erased and deleted meanwhile
            return None

    document = await run_in_threadpool(compute)
    if document is None:
        raise HTTPException(404, f"no contact with id, external_id or email {ref!r}")
    name = f"contact-{document['contact']['id']}.json"
    return JSONResponse(document, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.delete(
    "/contacts/{ref}",
    summary="Erase a contact (GDPR art. 17): personal data removed, counts kept, suppressed",
    responses={
        **UNAUTHORIZED,
        **INVALID,
        200: {"description": "erased, or already erased (status says which)"},
        404: {"description": "no such contact, and no erased person by this reference"},
    },
)
async def erase_contact_data(ref: str, request: Request, who: Auth) -> JSONResponse:
    _ref_problem(ref)
    state = request.app.state.web
    actor = f"api:{who.name} ({who.prefix})"

    def compute() -> dict[str, Any] | None:
        contact_id = find_contact_id(state.db, ref)
        if contact_id is None:
            gone = find_erasure(state.db, ref, settings=state.settings)
            return None if gone is None else gone.to_dict()
        try:
            outcome = erase_contact(state.db, contact_id, actor=actor, settings=state.settings)
        except ContactNotFound:
            return None
        return outcome.to_dict()

    result = await run_in_threadpool(compute)
    if result is None:
        raise HTTPException(404, f"no contact with id, external_id or email {ref!r}")
    return JSONResponse(result)
