"""The event buffer: endpoints hand items to a ``Sink``; with Redis a consumer writes them.

Without Redis (``TIDINGS_REDIS_URL`` unset) ``DirectSink`` writes each item at once. With
Redis, ``StreamSink`` appends it to the stream ``TIDINGS_INGEST_STREAM`` (XADD) and the
request is answered; ``Consumer`` (``tidings ingest``) reads batches through a consumer group,
writes them in one transaction and acknowledges (XACK) only after the commit. Entries left
pending by a consumer that died are claimed (XAUTOCLAIM) after ``TIDINGS_INGEST_CLAIM_IDLE_MS``.
If the database is down the batch stays pending and is retried: nothing is lost, and since
every write is idempotent (web/store.py) nothing is stored twice.

>>> sink = make_sink(settings, db=engine)                         # doctest: +SKIP
>>> sink.submit([SendGridBatch(events=events)])                    # doctest: +SKIP
>>> Consumer(settings, db=engine).run(stop=threading.Event())      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tidings.config import Settings
from tidings.web.items import (
    EventBatch,
    IngestItem,
    SendGridBatch,
    TrackingHit,
    TwilioInbound,
    TwilioStatus,
    decode_item,
    encode_item,
)
from tidings.web.store import ApplyStats, EventPoster, apply_items

log = logging.getLogger("tidings.ingest")
GROUP = "tidings-ingest"


class Sink(Protocol):
    buffered: bool

    def submit(self, items: Sequence[IngestItem]) -> ApplyStats | None: ...


def one_event_each(items: Sequence[IngestItem]) -> list[IngestItem]:
    """The items with every batch split into items of one event each (to find a bad one)."""
    singles: list[IngestItem] = []
    for item in items:
        match item:
            case SendGridBatch():
                if len(item.events) > 1:
                    singles.extend(
                        item.model_copy(update={"events": [e], "dead": item.dead if i == 0 else []})
                        for i, e in enumerate(item.events)
                    )
                else:
                    singles.append(item)
            case EventBatch():
                if len(item.events) > 1:
                    singles.extend(item.model_copy(update={"events": [e]}) for e in item.events)
                else:
                    singles.append(item)
            case TwilioStatus() | TwilioInbound() | TrackingHit():
                singles.append(item)
            case _:
                assert_never(item)
    return singles


class DirectSink:
    """Writes items to the store in the request (no Redis)."""

    buffered = False

    def __init__(
        self,
        db: Engine,
        post_events: Callable[[], EventPoster],
        settings: Settings | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self._post_events = post_events

    def submit(self, items: Sequence[IngestItem]) -> ApplyStats:
        needs_events = any(isinstance(i, EventBatch) for i in items)
        poster = self._post_events() if needs_events else None
        try:
            return apply_items(self.db, items, post_events=poster, settings=self.settings)
        except (OperationalError, InterfaceError):
            raise  # 5xx: the provider retries later
        except DBAPIError:
            return self._singly(items, poster)

    def _singly(self, items: Sequence[IngestItem], poster: EventPoster | None) -> ApplyStats:
        """Data the store refuses (say a NUL byte) would fail every retry the same way: write
        what it takes one event at a time; log and drop the rest rather than answer 5xx."""
        total = ApplyStats()
        for single in one_event_each(items):
            try:
                result = apply_items(self.db, [single], post_events=poster, settings=self.settings)
            except (OperationalError, InterfaceError):
                raise
            except DBAPIError as exc:
                total.skipped += 1
                log.error(
                    "item refused by the store, dropped: %s: %s",
                    str(exc.orig)[:300],
                    encode_item(single)[:2000].decode("utf-8", "replace"),
                )
                continue
            total.stored += result.stored
            total.duplicates += result.duplicates
            total.events += result.events
        return total


class StreamSink:
    """Appends items to a Redis stream; the consumer writes them."""

    buffered = True

    def __init__(self, redis_url: str, stream: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.stream = stream

    def submit(self, items: Sequence[IngestItem]) -> None:
        if len(items) == 1:
            self.client.xadd(self.stream, {"d": encode_item(items[0])})
            return
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.xadd(self.stream, {"d": encode_item(item)})
        pipe.execute()


def make_sink(settings: Settings, *, db: Engine, post_events: Callable[[], EventPoster]) -> Sink:
    if settings.redis_url:
        return StreamSink(settings.redis_url, settings.ingest_stream)
    return DirectSink(db, post_events, settings)


@dataclass
class ConsumerStats:
    batches: int = 0
    entries: int = 0
    stored: int = 0
    duplicates: int = 0
    retries: int = 0
    events: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


class Consumer:
    """Reads the stream through the consumer group and writes batches; XACK after commit."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Engine,
        post_events: Callable[[], EventPoster] | None = None,
        name: str | None = None,
        retry_delay: float = 0.5,
    ) -> None:
        import redis

        if not settings.redis_url:
            from tidings.errors import ConfigurationError

            raise ConfigurationError(
                "tidings ingest needs Redis: set TIDINGS_REDIS_URL (without it the web app "
                "writes events directly and there is nothing to consume)"
            )
        self.settings = settings
        self.db = db
        self.client = redis.Redis.from_url(settings.redis_url)
        self.stream = settings.ingest_stream
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = settings.ingest_batch_size
        self.retry_delay = retry_delay
        self._post_events = post_events
        self.stats = ConsumerStats()
        self._ensure_group()

    def _ensure_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, block_ms: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        # First our own pending entries (a batch whose write failed), then claim a dead
        # consumer's, then new ones.
        for stream_id in ("0",):
            got: Any = self.client.xreadgroup(
                GROUP, self.name, {self.stream: stream_id}, count=self.batch_size
            )
            entries = got[0][1] if got else []
            if entries:
                return list(entries)
        claimed: Any = self.client.xautoclaim(
            self.stream,
            GROUP,
            self.name,
            min_idle_time=self.settings.ingest_claim_idle_ms,
            start_id="0-0",
            count=self.batch_size,
        )
        if claimed and claimed[1]:
            return [e for e in claimed[1] if e[1]]
        got = self.client.xreadgroup(
            GROUP, self.name, {self.stream: ">"}, count=self.batch_size, block=block_ms
        )
        return list(got[0][1]) if got else []

    def step(self, block_ms: int = 1000) -> int:
        """Read and write one batch; returns the entries acknowledged (0: nothing waiting)."""
        entries = self._read(block_ms)
        if not entries:
            return 0
        # an entry that is not one of our items is logged and acknowledged, never retried
        decoded = (decode_item(fields[b"d"]) for _, fields in entries if b"d" in fields)
        items = [item for item in decoded if item is not None]
        poster = self._post_events() if self._post_events else None
        try:
            results = [apply_items(self.db, items, post_events=poster, settings=self.settings)]
        except (OperationalError, InterfaceError):
            raise  # the store is unreachable: retry the batch later
        except DBAPIError:
            # Something in the batch the store refuses (bad data): write the items one by one
            # and park the ones that fail in the dead-letter stream, so they block nothing.
            results = self._one_by_one(items, poster)
        self.client.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.stats.batches += 1
        self.stats.entries += len(entries)
        for result in results:
            self.stats.stored += result.stored
            self.stats.duplicates += result.duplicates
            self.stats.events += result.events
        return len(entries)

    def _one_by_one(self, items: list[IngestItem], poster: Any) -> list[ApplyStats]:
        results = []
        for item in items:
            try:
                results.append(
                    apply_items(self.db, [item], post_events=poster, settings=self.settings)
                )
            except (OperationalError, InterfaceError):
                raise
            except DBAPIError as exc:
                self.stats.dead += 1
                log.error("ingest: item refused by the store, parked in %s:dead", self.stream)
                error = str(exc.orig)[:500]
                self.client.xadd(f"{self.stream}:dead", {"d": encode_item(item), "e": error})
        return results

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        until_idle: bool = False,
        block_ms: int = 1000,
    ) -> ConsumerStats:
        """Consume until ``stop`` is set (or, with ``until_idle``, the stream is drained)."""
        import redis

        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                done = self.step(block_ms=block_ms)
            except (OperationalError, InterfaceError, redis.ConnectionError) as exc:
                self.stats.retries += 1
                # the batch stays pending and is read again
                log.warning("ingest: store or Redis unavailable, retrying: %r", exc)
                stop.wait(self.retry_delay)
                continue
            if done == 0 and until_idle:
                break
        return self.stats

    def backlog(self) -> int:
        """Entries not yet acknowledged (pending) plus not yet delivered to the group."""
        info: Any = self.client.xinfo_groups(self.stream)
        for group in info:
            if group["name"] in (GROUP, GROUP.encode()):
                lag = group.get("lag") or 0
                return int(group["pending"]) + int(lag)
        return 0


def wait_drained(consumer: Consumer, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consumer.backlog() == 0:
            return True
        time.sleep(0.05)
    return False
