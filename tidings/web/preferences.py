"""The unsubscribe page and preference centre (``/u/{token}``), in the contact's language.

``GET /u/{token}`` shows, per channel, the base consents (news and offers; order and account
updates) and the project's subscription topics on that channel (channels/topics.yaml), and
never changes anything. ``POST /u/{token}``:

- ``List-Unsubscribe=One-Click`` (RFC 8058, what mail clients send; multipart/form-data or
  urlencoded): at once, without cookies or login, unsubscribes from what the message was: its
  topic on its channel when it had one, else all marketing on its channel;
- the page's form: ``action=save`` with ``pref=<channel>:<purpose>`` and
  ``topic=<channel>:<topic>`` for each box ticked; ``action=unsubscribe`` (as one-click);
  ``action=leave``: every consent and every topic on every channel revoked;
- anything else (a link scanner, a prefetcher, an empty body): changes nothing, 400 with the
  page.

Every change is in the consent audit trail (``consent_changes``; topic changes with ``topic``
set) with the source ``unsubscribe:one-click|page|preferences|leave``, and a message event
(``unsubscribe`` or ``preferences``) on the message whose link was used. The page's words are
in web/texts.py, chosen by the contact's ``locale``.
"""

from __future__ import annotations

import uuid
from email.parser import BytesParser
from email.policy import HTTP
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tidings.crm.consent import ConsentWish, set_consents
from tidings.crm.db import insert_ignore
from tidings.crm.models import Channel, Consent, Contact, Message, Purpose
from tidings.crm.topics import Topic, Topics, TopicWish, choices, load_topics, set_topics
from tidings.crm.topics import subscribed as topic_subscribed
from tidings.crm.types import utcnow
from tidings.web.store import as_message_id, events_t
from tidings.web.texts import language_for, text
from tidings.web.tracking import NO_STORE, NOT_FOUND, _token

router = APIRouter(tags=["tracking"])
COMBOS = [(c.value, p.value) for c in Channel for p in Purpose]
PAGE_ACTIONS = frozenset({"save", "unsubscribe", "leave"})


def page(title: str, body: str, *, language: str = "en", status_code: int = 200) -> HTMLResponse:
    """A small self-contained HTML page (no scripts, no external resources)."""
    html = (
        f'<!doctype html><html lang="{escape(language)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
        "max-width:34rem;margin:3rem auto;padding:0 1rem}label{display:block;margin:.5rem 0}"
        "fieldset{margin:1rem 0;border:1px solid #ccc;border-radius:.4rem}"
        ".topic{margin-left:1.5rem}.topic small{display:block;color:#555;margin-left:1.5rem}"
        "button{margin:1rem .5rem 0 0;padding:.5rem 1rem}</style></head><body>"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(
        html, status_code=status_code, headers={**NO_STORE, "Referrer-Policy": "no-referrer"}
    )


def _message(request: Request, token: str) -> Any:
    found = _token(request, token, "u")
    message_id = as_message_id(found.message_id)
    if message_id is None:
        raise HTTPException(404, "not found")
    with request.app.state.web.db.connect() as conn:
        row = conn.execute(
            select(
                Message.id,
                Message.contact_id,
                Message.channel,
                Message.purpose,
                Message.meta,
                Contact.locale,
            )
            .join(Contact, Contact.id == Message.contact_id)
            .where(Message.id == message_id)
        ).first()
    if row is None:
        raise HTTPException(404, "not found")
    return row


def _topics(request: Request) -> Topics:
    return load_topics(request.app.state.web.settings.project_dir)


def _message_topic(message: Any, topics: Topics) -> Topic | None:
    name = (message.meta or {}).get("topic")
    topic = topics.find(name) if isinstance(name, str) else None
    return topic if topic is not None and message.channel in topic.channels else None


def _what(language: str, message: Any, topic: Topic | None) -> str:
    channel = text(language, f"channel.{message.channel}")
    if topic is not None:
        return text(language, "what.topic", topic=topic.text("label", language), channel=channel)
    return text(language, "what.channel", channel=channel)


@router.get(
    "/u/{token}",
    summary="Unsubscribe page and preference centre (never unsubscribes by itself)",
    response_class=HTMLResponse,
    responses=NOT_FOUND,
)
def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    return _preferences(request, _message(request, token))


def _preferences(request: Request, message: Any, *, status_code: int = 200) -> HTMLResponse:
    language = language_for(message.locale)
    topics = _topics(request)
    with request.app.state.web.db.connect() as conn:
        current = {
            (r.channel, r.purpose): r.status
            for r in conn.execute(
                select(Consent.channel, Consent.purpose, Consent.status).where(
                    Consent.contact_id == message.contact_id
                )
            )
        }
        chosen = choices(conn, [message.contact_id])

    def box(name: str, value: str, checked: bool, label: str, css: str = "") -> str:
        return (
            f'<label{css}><input type="checkbox" name="{name}" value="{escape(value)}"'
            f"{' checked' if checked else ''}> {escape(label)}"
        )

    sections = []
    for channel in Channel:
        c = channel.value
        parts = [
            f'<fieldset data-channel="{c}"><legend>{escape(text(language, f"channel.{c}"))}'
            "</legend>",
            box(
                "pref",
                f"{c}:marketing",
                current.get((c, "marketing")) == "granted",
                text(language, "purpose.marketing"),
            )
            + "</label>",
        ]
        for topic in topics.on(c):
            on = topic_subscribed(topic, chosen.get((message.contact_id, c, topic.name)))
            description = topic.text("description", language)
            parts.append(
                box(
                    "topic",
                    f"{c}:{topic.name}",
                    on,
                    topic.text("label", language),
                    ' class="topic"',
                )
                + (f"<small>{escape(description)}</small>" if description else "")
                + "</label>"
            )
        parts.append(
            box(
                "pref",
                f"{c}:transactional",
                current.get((c, "transactional")) != "revoked",
                text(language, "purpose.transactional"),
            )
            + "</label></fieldset>"
        )
        sections.append("".join(parts))
    note = f"<p><small>{escape(text(language, 'preferences.topics_note'))}</small></p>"
    what = _what(language, message, _message_topic(message, topics))
    body = (
        f'<form method="post"><p>{escape(text(language, "preferences.intro"))}</p>'
        f"{''.join(sections)}{note if topics.topics else ''}"
        f'<button name="action" value="save">{escape(text(language, "action.save"))}</button>'
        f'<button name="action" value="unsubscribe">'
        f"{escape(text(language, 'action.unsubscribe', what=what))}</button>"
        f'<button name="action" value="leave">{escape(text(language, "action.leave"))}</button>'
        "</form>"
    )
    return page(
        text(language, "preferences.title"), body, language=language, status_code=status_code
    )


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


def _apply(request: Request, message: Any, form: dict[str, list[str]]) -> str:
    """Apply the form (or one-click) in one transaction; returns the sentence to show."""
    language = language_for(message.locale)
    topics = _topics(request)
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    action = "unsubscribe" if one_click else form["action"][0]
    cid = message.contact_id
    consent_wishes: list[ConsentWish] = []
    topic_wishes: list[TopicWish] = []
    if action == "unsubscribe":
        source = "unsubscribe:one-click" if one_click else "unsubscribe:page"
        topic = _message_topic(message, topics)
        if topic is not None:
            topic_wishes.append(TopicWish(cid, message.channel, topic.name, "revoked"))
        else:
            consent_wishes.append(ConsentWish(cid, message.channel, "marketing", "revoked"))
        done = text(language, "unsubscribed", what=_what(language, message, topic))
    elif action == "leave":
        source = "unsubscribe:leave"
        consent_wishes = [ConsentWish(cid, c, p, "revoked") for c, p in COMBOS]
        topic_wishes = [
            TopicWish(cid, c, t.name, "revoked") for t in topics.topics for c in t.channels
        ]
        done = text(language, "left")
    else:
        source = "unsubscribe:preferences"
        prefs = set(form.get("pref", []))
        ticked = set(form.get("topic", []))
        consent_wishes = [
            ConsentWish(cid, c, p, "granted" if f"{c}:{p}" in prefs else "revoked")
            for c, p in COMBOS
        ]
        topic_wishes = [
            TopicWish(cid, c, t.name, "granted" if f"{c}:{t.name}" in ticked else "revoked")
            for t in topics.topics
            for c in t.channels
        ]
        done = text(language, "saved")
    now = utcnow()
    with request.app.state.web.db.begin() as conn:
        changed = len(set_consents(conn, consent_wishes, source=source, now=now))
        changed += set_topics(
            conn, topics, topic_wishes, source=source, now=now, detail={"message_id": message.id}
        )
        conn.execute(
            insert_ignore(conn, events_t).values(
                message_id=message.id,
                provider="unsubscribe",
                provider_event_id=str(uuid.uuid4()),
                type="preferences" if action == "save" else "unsubscribe",
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
                            "action": {
                                "type": "string",
                                "enum": sorted(PAGE_ACTIONS),
                            },
                            "pref": {"type": "array", "items": {"type": "string"}},
                            "topic": {"type": "array", "items": {"type": "string"}},
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
    message = await run_in_threadpool(_message, request, token)
    form = read_form(request.headers.get("content-type", ""), await request.body())
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    if not one_click and (form.get("action") or [""])[0] not in PAGE_ACTIONS:
        # neither RFC 8058's body nor the page's form (a scanner, a prefetcher): change
        # nothing, show the page so a person can still choose
        return await run_in_threadpool(_preferences, request, message, status_code=400)
    done = await run_in_threadpool(_apply, request, message, form)
    language = language_for(message.locale)
    return page(text(language, "done.title"), f"<p>{escape(done)}</p>", language=language)
