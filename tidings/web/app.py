"""The FastAPI app: provider webhooks, tracking, unsubscribe, the event API, health.

``create_app`` builds everything from the settings (or what a test hands it); ``tidings serve``
runs it under uvicorn. Request bodies above ``TIDINGS_WEB_MAX_BODY_BYTES`` get 413 before they
are read whole; every request is logged as one JSON line (method, route, status, duration),
with the route template rather than the path, so tokens stay out of the logs.

>>> app = create_app(Settings(database_url="sqlite:///tidings.db"))  # doctest: +SKIP
>>> uvicorn.run(app, port=8000)                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.config import Settings, get_settings
from tidings.segments.live import Loop
from tidings.templates.tracking import signing_key
from tidings.web.apikeys import IdempotencyStore, RedisIdempotencyStore
from tidings.web.buffer import Sink, make_sink
from tidings.web.store import EventPoster

log = logging.getLogger("tidings.web")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    FIELDS = ("method", "route", "status", "ms", "kind", "count", "client")

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "at": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({f: getattr(record, f) for f in self.FIELDS if hasattr(record, f)})
        return json.dumps(data, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("tidings.web", "tidings.ingest"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


class BodyLimit:
    """Pure ASGI middleware: 413 for a declared or streamed body above ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _too_large(send, self.limit)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await _too_large(send, self.limit)


class BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """Pure ASGI middleware: one JSON log line per request, with the route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": getattr(route, "path", "unmatched"),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with each error's location, message and type, never the input: a rejected input
    holding NaN or a lone surrogate cannot be written back as JSON (FastAPI's own handler
    echoes it and fails with a 500)."""
    detail = [
        {
            "loc": [str(part).encode("utf-8", "backslashreplace").decode() for part in e["loc"]],
            "msg": str(e["msg"]).encode("utf-8", "backslashreplace").decode(),
            "type": e["type"],
        }
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


class WebState:
    """What the routes share: settings, store, sink, runtime (built on first use)."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Engine | None = None,
        runtime_factory: Callable[[], Any] | None = None,
    ) -> None:
        from tidings.crm.db import make_engine

        self.settings = settings
        self.db = db or make_engine(settings.database_url)
        if settings.secret_key is None:
            log.warning("TIDINGS_SECRET_KEY unset: tracking tokens use the development key")
        self.secret = signing_key(settings)
        self._runtime_factory = runtime_factory
        self._runtime: Any = None
        self._lock = threading.Lock()
        self.sink: Sink = make_sink(settings, db=self.db, post_events=self.event_poster)
        self.idempotency: IdempotencyStore | RedisIdempotencyStore
        if settings.redis_url:
            self.idempotency = RedisIdempotencyStore(
                settings.redis_url,
                ttl_hours=settings.idempotency_ttl_hours,
                namespace=settings.ingest_stream,
            )
        else:
            self.idempotency = IdempotencyStore(self.db, ttl_hours=settings.idempotency_ttl_hours)
        self.auth_cache: dict[str, tuple[Any, float]] = {}
        self.live: Loop | None = None
        if settings.live_loop:
            self.live = Loop(
                lambda: self.runtime().engine, db=self.db, poll=settings.live_poll_seconds
            )

    def changed(self) -> None:
        """A write committed changes for the live segments: wake this process's loop."""
        if self.live is not None:
            self.live.nudge()

    def runtime(self) -> Any:
        with self._lock:
            if self._runtime is None:
                if self._runtime_factory is not None:
                    self._runtime = self._runtime_factory()
                else:
                    from tidings.journeys.runtime import Runtime

                    self._runtime = Runtime.from_settings(self.settings, db=self.db)
            return self._runtime

    def event_poster(self) -> EventPoster:
        from tidings.web.events import make_poster

        return make_poster(self.runtime(), settle=self.changed)


def create_app(
    settings: Settings | None = None,
    *,
    db: Engine | None = None,
    runtime_factory: Callable[[], Any] | None = None,
) -> FastAPI:
    """The web app; ``db`` and ``runtime_factory`` let tests and the CLI share their own."""
    from tidings.web import api, optin, preferences, reports, tracking, webhooks

    settings = settings or get_settings()
    state = WebState(settings, db=db, runtime_factory=runtime_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.live is not None:  # the live segments' loop, in every server process
            state.live.start()
        yield
        if state.live is not None:
            state.live.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="tidings web",
        version="1",
        description="Provider webhooks, tracking, unsubscribe and the event API of tidings.",
    )
    app.state.web = state
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.include_router(webhooks.router)
    app.include_router(tracking.router)
    app.include_router(preferences.router)
    app.include_router(optin.router)
    app.include_router(api.router)
    app.include_router(reports.router)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the store (and Redis, when configured) answer",
        responses={503: {"description": "a dependency is down"}},
    )
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with state.db.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure means not ready
            checks["database"] = f"down: {exc.__class__.__name__}"
        if settings.redis_url:
            try:
                import redis

                redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping()
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"down: {exc.__class__.__name__}"
        ok = all(v == "ok" for v in checks.values())
        # With the buffer, the app still takes webhooks while the store is down.
        ready = ok or (state.sink.buffered and checks.get("redis") == "ok")
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    app.add_middleware(BodyLimit, limit=settings.web_max_body_bytes)
    app.add_middleware(AccessLog)
    return app
