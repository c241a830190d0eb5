"""``GET /reports/journeys/{name}``: the journey report as HTML, behind an API key.

The same page ``tidings report journey NAME --html FILE`` writes (``analytics/html.py``):
funnel, variants with intervals, attribution by model, revenue over time, charts inline as
SVG. It is never public: the request needs an API key exactly as ``/v1`` does
(``Authorization: Bearer tid_...`` or ``X-API-Key``); without one, 401.

>>> client.get("/reports/journeys/welcome", headers={"X-API-Key": key}).text[:15]  # doctest: +SKIP
'<!doctype html>'
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from tidings.errors import InputError
from tidings.web.api import UNAUTHORIZED, Auth

router = APIRouter(prefix="/reports", tags=["reports"])
NO_STORE = {"Cache-Control": "no-store, private"}


@router.get(
    "/journeys/{name}",
    summary="Journey report (HTML): funnel, variants, attribution, revenue over time",
    response_class=HTMLResponse,
    responses={**UNAUTHORIZED, 404: {"description": "no such journey in the store"}},
)
async def journey_page(name: str, request: Request, who: Auth) -> HTMLResponse:
    db = request.app.state.web.db

    def build() -> str:
        from tidings.analytics.html import render_html
        from tidings.analytics.report import journey_report

        with db.connect() as conn:
            return render_html(journey_report(conn, name))

    try:
        page: Any = await run_in_threadpool(build)
    except InputError as exc:
        raise HTTPException(404, str(exc)) from None
    return HTMLResponse(page, headers=NO_STORE)
