"""Open pixel, click redirect and the unsubscribe page (a small preference centre).

Tokens are the renderer's signed tokens (templates/tracking.py): a forged, edited or
wrong-kind token gets 404 and records nothing; a click redirects (302) only to the URL its
token signs, so there is no open redirect. Requests from recognisable bots, link scanners and
prefetchers (their User-Agent, or a HEAD request) are recorded with ``machine = true``, so
reports do not count them as engagement.

``GET /u/{token}`` shows the preference centre and never changes anything; ``POST /u/{token}``
with ``List-Unsubscribe=One-Click`` (RFC 8058, what mail clients send; multipart/form-data or
urlencoded) revokes marketing consent for the message's channel at once, without cookies or
login; the page's own form (``action=save|unsubscribe``) sets each channel and purpose. Any
other POST (a link scanner, a prefetcher, an empty body) changes nothing: 400 with the page.

>>> client.get(f"/t/c/{token}").headers["location"]                # doctest: +SKIP
'https://shop.example.com/'
"""

from __future__ import annotations

import base64
import re
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tidings.crm.consent import ConsentWish, set_consents
from tidings.crm.db import insert_ignore
from tidings.crm.models import Channel, Consent, Message, Purpose
from tidings.crm.types import utcnow
from tidings.templates.tracking import InvalidTokenError, TrackingToken, verify_token
from tidings.web.items import TrackingHit
from tidings.web.store import as_message_id, events_t

router = APIRouter(tags=["tracking"])
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
BOT_AGENTS = re.compile(
    r"bot\b|bot/|crawler|spider|slurp|preview|prefetch|scanner|headless|python-requests|"
    r"python-urllib|httpx|curl/|wget/|go-http-client|java/|okhttp|barracuda|mimecast|"
    r"proofpoint|symantec|trendmicro|forcepoint|facebookexternalhit|whatsapp|skypeuripreview",
    re.IGNORECASE,
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown, forged or edited token"}
}
NO_STORE = {"Cache-Control": "no-store, private", "Pragma": "no-cache"}


def is_machine(request: Request) -> bool:
    """A HEAD request or a User-Agent of a bot, scanner or prefetcher."""
    agent = request.headers.get("user-agent", "")
    return request.method == "HEAD" or not agent or bool(BOT_AGENTS.search(agent))


def _token(request: Request, token: str, kind: str) -> TrackingToken:
    try:
        return verify_token(token, secret=request.app.state.web.secret, kind=kind)
    except InvalidTokenError:
        raise HTTPException(404, "not found") from None


async def _record(request: Request, found: TrackingToken, kind: str) -> None:
    item = TrackingHit(
        id=str(uuid.uuid4()),
        type=kind,
        message_id=found.message_id,
        link_index=found.link_index,
        url=found.url,
        machine=is_machine(request),
        user_agent=request.headers.get("user-agent", "")[:300],
        method=request.method,
        at=utcnow().isoformat(),
    )
    await run_in_threadpool(request.app.state.web.sink.submit, [item])


@router.head("/t/o/{token}", include_in_schema=False)
@router.get(
    "/t/o/{token}",
    summary="Open pixel (1x1 GIF)",
    responses={**NOT_FOUND, 200: {"content": {"image/gif": {}}, "description": "pixel"}},
)
async def open_pixel(token: str, request: Request) -> Response:
    found = _token(request, token, "o")
    await _record(request, found, "open")
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.head("/t/c/{token}", include_in_schema=False, status_code=302)
@router.get(
    "/t/c/{token}",
    summary="Tracked click: 302 to the link the message contained",
    status_code=302,
    responses={**NOT_FOUND, 302: {"description": "redirect to the signed URL"}},
)
async def click(token: str, request: Request) -> RedirectResponse:
    found = _token(request, token, "c")
    await _record(request, found, "click")
    return RedirectResponse(str(found.url), status_code=302, headers=NO_STORE)


def _message(request: Request, token: str) -> tuple[TrackingToken, Any]:
    found = _token(request, token, "u")
    message_id = as_message_id(found.message_id)
    if message_id is None:
        raise HTTPException(404, "not found")
    with request.app.state.web.db.connect() as conn:
        row = conn.execute(
            select(Message.id, Message.contact_id, Message.channel, Message.purpose).where(
                Message.id == message_id
            )
        ).first()
    if row is None:
        raise HTTPException(404, "not found")
    return found, row


COMBOS = [(c.value, p.value) for c in Channel for p in Purpose]
LABELS = {
    "email": "Email",
    "sms": "Text messages",
    "marketing": "news and offers",
    "transactional": "order and account updates",
}


def _page(title: str, body: str) -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
        "max-width:32rem;margin:3rem auto;padding:0 1rem}label{display:block;margin:.5rem 0}"
        "button{margin:1rem .5rem 0 0;padding:.5rem 1rem}</style></head><body>"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, headers={**NO_STORE, "Referrer-Policy": "no-referrer"})


@router.get(
    "/u/{token}",
    summary="Unsubscribe page and preference centre (never unsubscribes by itself)",
    response_class=HTMLResponse,
    responses=NOT_FOUND,
)
def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    _, message = _message(request, token)
    return _preferences(request, message)


def _preferences(request: Request, message: Any, *, status_code: int = 200) -> HTMLResponse:
    with request.app.state.web.db.connect() as conn:
        current = {
            (r.channel, r.purpose): r.status
            for r in conn.execute(
                select(Consent.channel, Consent.purpose, Consent.status).where(
                    Consent.contact_id == message.contact_id
                )
            )
        }
    boxes = "".join(
        f'<label><input type="checkbox" name="pref" value="{c}:{p}"'
        f"{'' if current.get((c, p)) == 'revoked' else ' checked'}> "
        f"{LABELS[c]}: {LABELS[p]}</label>"
        for c, p in COMBOS
    )
    channel = LABELS.get(message.channel, message.channel).lower()
    body = (
        f'<form method="post"><p>Choose what we may send you.</p>{boxes}'
        '<button name="action" value="save">Save my choices</button>'
        f'<button name="action" value="unsubscribe">Unsubscribe from all {escape(channel)} '
        "news and offers</button></form>"
    )
    page = _page("Your subscriptions", body)
    page.status_code = status_code
    return page


def read_form(content_type: str, raw: bytes) -> dict[str, list[str]]:
    """The fields of a ``multipart/form-data`` or ``application/x-www-form-urlencoded`` body
    (RFC 8058: one-click SHOULD come as the first, MAY as the second); other types: none.

    >>> read_form("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click")
    {'List-Unsubscribe': ['One-Click']}
    """
    form: dict[str, list[str]] = {}
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
        parsed = BytesParser(policy=HTTP).parsebytes(head + raw)
        for part in parsed.iter_parts() if parsed.is_multipart() else ():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                form.setdefault(name, []).append(payload.decode("utf-8", "replace"))
    elif kind in ("", "application/x-www-form-urlencoded"):
        for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            form.setdefault(key, []).append(value)
    return form


PAGE_ACTIONS = frozenset({"save", "unsubscribe"})


def _apply_unsubscribe(request: Request, message: Any, form: dict[str, list[str]]) -> str:
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    action = "unsubscribe" if one_click else form["action"][0]
    if action == "unsubscribe":
        source = "unsubscribe:one-click" if one_click else "unsubscribe:page"
        wishes = [ConsentWish(message.contact_id, message.channel, "marketing", "revoked")]
        done = "You are unsubscribed. We will not send you news and offers this way again."
    else:
        source = "unsubscribe:preferences"
        chosen = set(form.get("pref", []))
        wishes = [
            ConsentWish(message.contact_id, c, p, "granted" if f"{c}:{p}" in chosen else "revoked")
            for c, p in COMBOS
        ]
        done = "Your choices are saved."
    now = utcnow()
    with request.app.state.web.db.begin() as conn:
        changed = len(set_consents(conn, wishes, source=source, now=now))
        conn.execute(
            insert_ignore(conn, events_t).values(
                message_id=message.id,
                provider="unsubscribe",
                provider_event_id=str(uuid.uuid4()),
                type="unsubscribe" if action == "unsubscribe" else "preferences",
                occurred_at=now,
                received_at=now,
                machine=False,
                payload={"source": source, "changed": changed},
            )
        )
    return done


@router.post(
    "/u/{token}",
    summary="Unsubscribe: RFC 8058 one-click, or the preference centre's form",
    response_class=HTMLResponse,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "List-Unsubscribe": {"type": "string", "enum": ["One-Click"]},
                            "action": {"type": "string", "enum": ["save", "unsubscribe"]},
                            "pref": {"type": "array", "items": {"type": "string"}},
                        },
                    }
                }
            }
        }
    },
    responses={
        **NOT_FOUND,
        400: {"description": "neither List-Unsubscribe=One-Click nor the page's form: no change"},
    },
)
async def unsubscribe(token: str, request: Request) -> HTMLResponse:
    _, message = await run_in_threadpool(_message, request, token)
    form = read_form(request.headers.get("content-type", ""), await request.body())
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    if not one_click and (form.get("action") or [""])[0] not in PAGE_ACTIONS:
        # neither RFC 8058's body nor the page's form (a scanner, a prefetcher): change
        # nothing, show the page so a person can still choose
        return await run_in_threadpool(_preferences, request, message, status_code=400)
    done = await run_in_threadpool(_apply_unsubscribe, request, message, form)
    return _page("Done", f"<p>{escape(done)}</p>")
