"""Why messages were not sent, said plainly: each reason once, how many, which contacts.

A dispatch keeps every reason it met (``DispatchStats.problems``: status and reason, a count,
a few message ids); ``failure_report`` names the contacts of those examples, and
``failure_lines`` is what a command prints before it exits non-zero.

>>> report = [{"status": "failed", "reason": "render: 'dict object' has no attribute 'url'",
...            "count": 3, "contacts": ["C0002", "C0007"]}]
>>> failure_lines(report)
["failed 3: render: 'dict object' has no attribute 'url' (C0002, C0007, 1 more)"]
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from tidings.crm.models import Contact, Message
from tidings.journeys.dispatch import DispatchStats


def failure_report(db: Engine, stats: DispatchStats) -> list[dict[str, Any]]:
    """One entry per (status, reason), failures first, then the most frequent: ``status``
    (``failed``: for good; ``retry``: back in the queue), ``reason``, ``count`` and up to five
    ``contacts`` (external id, else email, else ``#id``)."""
    problems = sorted(stats.problems.values(), key=lambda p: (p.status != "failed", -p.count))
    ids = {mid for problem in problems for mid in problem.message_ids}
    names: dict[int, str] = {}
    if ids:
        with db.connect() as conn:
            for mid, cid, external_id, email in conn.execute(
                select(Message.id, Contact.id, Contact.external_id, Contact.email)
                .join(Contact, Contact.id == Message.contact_id)
                .where(Message.id.in_(ids))
            ):
                names[mid] = external_id or email or f"#{cid}"
    return [
        {
            "status": problem.status,
            "reason": problem.reason,
            "count": problem.count,
            "contacts": [names.get(mid, f"message {mid}") for mid in problem.message_ids],
        }
        for problem in problems
    ]


def failure_lines(report: list[dict[str, Any]]) -> list[str]:
    """``failed 3: <reason> (C0002, C0007, 1 more)``; for a retry ``not sent 64 (queued
    again): <reason> (...)``."""
    lines = []
    for entry in report:
        shown = list(entry["contacts"])
        more = entry["count"] - len(shown)
        who = ", ".join(shown + ([f"{more} more"] if more > 0 else []))
        n = entry["count"]
        status = f"failed {n}" if entry["status"] == "failed" else f"not sent {n} (queued again)"
        lines.append(f"{status}: {entry['reason']} ({who})")
    return lines
