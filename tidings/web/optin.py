"""The double opt-in confirmation link (``/confirm/{token}``; crm/optin.py makes the requests).

``GET`` shows a page with one button and changes nothing: mail security scanners (Mimecast,
Proofpoint, Outlook Safe Links...) fetch every link in a message, and a GET that confirmed
would subscribe people who never clicked. The button ``POST``s to the same URL, which
confirms: the consent becomes ``granted`` (audited, source ``optin:confirmed``) and the event
``consent.confirmed`` is posted for the contact (properties ``channel``, ``purpose``,
``source``, ``request_id``), so a journey with ``trigger: {type: event, event:
consent.confirmed}`` starts. An expired link is refused on both with 410 and a page that says
so; a forged or edited token is 404. Confirming twice changes nothing the second time.
"""

from __future__ import annotations

import logging
from html import escape
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tidings.crm.models import Contact, OptInRequest
from tidings.crm.optin import CONFIRMED_EVENT, confirm
from tidings.crm.types import utcnow
from tidings.segments.rules import parse_duration
from tidings.web.preferences import page
from tidings.web.texts import language_for, text
from tidings.web.tracking import NOT_FOUND, _token

router = APIRouter(tags=["consent"])
log = logging.getLogger("tidings.web")
EXPIRED: dict[int | str, dict[str, Any]] = {410: {"description": "the link has expired"}}


def _request(request: Request, token: str) -> Any:
    found = _token(request, token, "v")
    if not found.message_id.isdigit():
        raise HTTPException(404, "not found")
    with request.app.state.web.db.connect() as conn:
        row = conn.execute(
            select(
                OptInRequest.id,
                OptInRequest.status,
                OptInRequest.expires_at,
                Contact.email,
                Contact.locale,
            )
            .join(Contact, Contact.id == OptInRequest.contact_id)
            .where(OptInRequest.id == int(found.message_id))
        ).first()
    if row is None:
        raise HTTPException(404, "not found")
    return row


def _expired(request: Request, language: str) -> HTMLResponse:
    hours = parse_duration(request.app.state.web.settings.double_opt_in_expires) / 3600
    return page(
        text(language, "confirm.expired.title"),
        f"<p>{escape(text(language, 'confirm.expired', hours=f'{hours:g}'))}</p>",
        language=language,
        status_code=410,
    )


@router.get(
    "/confirm/{token}",
    summary="Double opt-in: the confirmation page (a button; a GET changes nothing)",
    response_class=HTMLResponse,
    responses={**NOT_FOUND, **EXPIRED},
)
def confirmation_page(token: str, request: Request) -> HTMLResponse:
    row = _request(request, token)
    language = language_for(row.locale)
    if row.status == "confirmed":
        return page(
            text(language, "confirm.done.title"),
            f"<p>{escape(text(language, 'confirm.already'))}</p>",
            language=language,
        )
    if row.status == "expired" or row.expires_at <= utcnow():
        return _expired(request, language)
    body = (
        f"<p>{escape(text(language, 'confirm.ask', address=row.email or ''))}</p>"
        f'<form method="post"><button name="confirm" value="yes">'
        f"{escape(text(language, 'confirm.button'))}</button></form>"
    )
    return page(text(language, "confirm.title"), body, language=language)


@router.post(
    "/confirm/{token}",
    summary="Double opt-in: confirm (consent granted, event consent.confirmed posted)",
    response_class=HTMLResponse,
    responses={**NOT_FOUND, **EXPIRED},
)
async def confirm_subscription(token: str, request: Request) -> HTMLResponse:
    row = await run_in_threadpool(_request, request, token)
    language = language_for(row.locale)
    state = request.app.state.web

    def run() -> Any:
        with state.db.begin() as conn:
            return confirm(conn, int(row.id))

    outcome = await run_in_threadpool(run)
    if outcome.status == "expired":
        return _expired(request, language)
    if outcome.status == "unknown":
        raise HTTPException(404, "not found")
    if outcome.status == "confirmed":
        await run_in_threadpool(_post_confirmed, state, outcome)
        message = text(language, "confirm.done")
    else:
        message = text(language, "confirm.already")
    return page(
        text(language, "confirm.done.title"), f"<p>{escape(message)}</p>", language=language
    )


def _post_confirmed(state: Any, outcome: Any) -> None:
    """Post ``consent.confirmed`` (journeys start on it). The consent is already granted and
    committed; a failure here is logged, and the event key makes a retry store it once."""
    from tidings.journeys.triggers import post_event

    runtime = state.runtime()
    try:
        post_event(
            runtime,
            contact_id=outcome.contact_id,
            name=CONFIRMED_EVENT,
            properties={
                "channel": outcome.channel,
                "purpose": outcome.purpose,
                "source": outcome.source,
                "request_id": outcome.request_id,
            },
            idempotency_key=f"optin:{outcome.request_id}:confirmed",
            source="optin",
            live=False,
        )
        state.changed()  # the live loop takes the queued change
    except Exception:
        log.exception("consent.confirmed for opt-in request %s was not posted", outcome.request_id)
