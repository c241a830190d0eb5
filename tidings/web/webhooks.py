"""Provider webhooks: the FastAPI routes in front of SendGrid's Signed Event Webhook and
Twilio's status and inbound SMS.

Verification and vocabulary live in the provider modules (``channels/sendgrid.py``:
``SendGridVerifier``; ``channels/twilio.py``: ``parse_form``, ``verify_signature``,
``inbound_keyword``); this module routes. Each request is verified over exactly the bytes that
arrived, before anything is parsed or written: SendGrid signs ``timestamp + raw body`` with
ECDSA P-256 (checked against ``TIDINGS_SENDGRID_WEBHOOK_PUBLIC_KEY``; a timestamp older or
newer than ``TIDINGS_WEBHOOK_MAX_AGE`` seconds is a replay); Twilio signs the public URL plus
the sorted form fields with HMAC-SHA1 under the auth token (``X-Twilio-Signature``), checked
against ``TIDINGS_PUBLIC_URL`` + the path, since a proxy in front rewrites the host the app
sees. A forged, tampered or replayed request gets 403 and nothing is written. Verified items
go to the sink (web/buffer.py).

>>> client.post("/webhooks/sendgrid", content=body, headers=signed_headers)  # doctest: +SKIP
<Response [200]>
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tidings.channels import sendgrid, twilio
from tidings.channels.types import MESSAGE_ID_ARG
from tidings.crm.types import utcnow
from tidings.web.items import SendGridBatch, TwilioInbound, TwilioStatus
from tidings.web.jsonsafe import split_storable

router = APIRouter(tags=["webhooks"])
RAW_JSON = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
    }
}
RAW_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        },
    }
}
REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "signature missing, wrong or too old"}
}


def _state(request: Request) -> Any:
    return request.app.state.web


def _verifier(state: Any) -> sendgrid.SendGridVerifier | None:
    verifier = getattr(state, "sendgrid_verifier", None)
    if verifier is None and state.settings.sendgrid_webhook_public_key:
        verifier = sendgrid.SendGridVerifier(
            state.settings.sendgrid_webhook_public_key, state.settings.webhook_max_age
        )
        state.sendgrid_verifier = verifier
    return verifier


@router.post(
    "/webhooks/sendgrid",
    summary="SendGrid Signed Event Webhook",
    openapi_extra=RAW_JSON,
    responses={**REFUSED, 400: {"description": "body is not a JSON array"}},
)
async def sendgrid_events(request: Request) -> JSONResponse:
    state = _state(request)
    body = await request.body()
    verifier = _verifier(state)
    if verifier is None:
        raise HTTPException(403, "TIDINGS_SENDGRID_WEBHOOK_PUBLIC_KEY is not set: refusing")
    why = verifier.check(
        body,
        request.headers.get(sendgrid.SIGNATURE_HEADER),
        request.headers.get(sendgrid.TIMESTAMP_HEADER),
    )
    if why is not None:
        raise HTTPException(403, why)
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"body is not JSON: {exc}") from exc
    if not isinstance(events, list):
        raise HTTPException(400, "body must be a JSON array of events")
    # An event the store cannot hold is dead-lettered alone; refusing the batch would make
    # SendGrid retry it forever and the good events in it would never be stored.
    good, dead = split_storable(events)
    await run_in_threadpool(state.sink.submit, [SendGridBatch(events=good, dead=dead)])
    return JSONResponse({"received": len(events), "dead_lettered": len(dead)})


def twilio_form(request: Request, body: bytes) -> dict[str, str]:
    """Check ``X-Twilio-Signature`` over the public URL and the form; the form, or 403."""
    settings = _state(request).settings
    if settings.twilio_auth_token is None:
        raise HTTPException(403, "TIDINGS_TWILIO_AUTH_TOKEN is not set: refusing")
    try:
        form = twilio.parse_form(body)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "form body is not UTF-8") from exc
    url = settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    if not twilio.verify_signature(
        auth_token=settings.twilio_auth_token.get_secret_value(),
        url=url,
        form=form,
        signature=request.headers.get(twilio.SIGNATURE_HEADER, ""),
    ):
        raise HTTPException(403, f"{twilio.SIGNATURE_HEADER} does not match")
    return form


@router.post(
    "/webhooks/twilio/status",
    summary="Twilio SMS status callback",
    openapi_extra=RAW_FORM,
    responses=REFUSED,
)
async def twilio_status(request: Request) -> JSONResponse:
    body = await request.body()
    form = twilio_form(request, body)
    message_id = request.query_params.get(MESSAGE_ID_ARG)
    item = TwilioStatus(form=form, message_id=message_id)
    await run_in_threadpool(_state(request).sink.submit, [item])
    return JSONResponse({"received": 1})


@router.post(
    "/webhooks/twilio/inbound",
    summary="Twilio inbound SMS: STOP, START, HELP",
    openapi_extra=RAW_FORM,
    responses={**REFUSED, 200: {"content": {"application/xml": {}}, "description": "TwiML"}},
)
async def twilio_inbound(request: Request) -> Response:
    body = await request.body()
    form = twilio_form(request, body)
    state = _state(request)
    item = TwilioInbound(form=form, received_at=utcnow().isoformat())
    await run_in_threadpool(state.sink.submit, [item])
    reply = ""
    if twilio.inbound_keyword(form.get("Body", "")) == "help":
        reply = f"<Message>{escape(state.settings.twilio_help_text)}</Message>"
    twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response>{reply}</Response>'
    return Response(twiml, media_type="application/xml")
