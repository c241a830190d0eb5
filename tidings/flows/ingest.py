"""The ingest consumer as a Prefect flow (``tidings ingest`` is the same loop as a command).

A deployment runs it on a schedule or as a long-lived worker task; each run drains the Redis
stream for at most ``max_seconds`` and returns what it wrote. The flow is a thin shell: the
work, the XACK-after-commit and the retries are ``web.buffer.Consumer``'s.

>>> ingest_flow(max_seconds=30)                                    # doctest: +SKIP
{'entries': 1200, 'batches': 3, 'stored': 118000, 'duplicates': 0, 'retries': 0}
"""

from __future__ import annotations

import threading
from typing import Any

from prefect import flow


@flow(name="event-ingest", log_prints=True)
def ingest_flow(max_seconds: float = 60.0) -> dict[str, Any]:
    """Drain the event buffer into the store for up to ``max_seconds`` (stops when idle)."""
    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.journeys.runtime import Runtime
    from tidings.web.buffer import Consumer
    from tidings.web.events import make_poster

    settings = get_settings()
    db = make_engine(settings.database_url)
    runtime = Runtime.from_settings(settings, db=db)
    consumer = Consumer(settings, db=db, post_events=lambda: make_poster(runtime))
    stop = threading.Event()
    timer = threading.Timer(max_seconds, stop.set)
    timer.start()
    try:
        stats = consumer.run(stop=stop, until_idle=True, block_ms=500)
    finally:
        timer.cancel()
        db.dispose()
    print(f"ingested {stats.entries} entries: {stats.stored} stored, {stats.duplicates} dup")
    return {
        "entries": stats.entries,
        "batches": stats.batches,
        "stored": stats.stored,
        "duplicates": stats.duplicates,
        "retries": stats.retries,
    }
