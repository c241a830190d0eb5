"""Open pixel and click redirect (the unsubscribe page is web/preferences.py).

Tokens are the renderer's signed tokens (templates/tracking.py): a forged, edited or
wrong-kind token gets 404 and records nothing; a click redirects (302) only to the URL its
token signs, so there is no open redirect. Requests from recognisable bots, link scanners and
prefetchers (their User-Agent, or a HEAD request) are recorded with ``machine = true``, so
reports do not count them as engagement.

>>> client.get(f"/t/c/{token}").headers["location"]                # doctest: +SKIP
'https://shop.example.com/'
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from tidings.crm.types import utcnow
from tidings.templates.tracking import InvalidTokenError, TrackingToken, verify_token
from tidings.web.items import TrackingHit

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
