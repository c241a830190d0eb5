"""What a tick works with: journey versions, enrollments in motion, tick statistics, and the
small parsers and helpers the engine and its step handlers share."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    Table,
)

from tidings.crm.models import (
    Assignment,
    Contact,
    Conversion,
    Enrollment,
    Message,
)
from tidings.errors import InputError
from tidings.journeys import schema as s
from tidings.journeys.graph import following

MAX_WAVES = 64  # steps one enrollment may take in one tick (loops always contain a wait)
enrollments_t: Table = Enrollment.__table__  # type: ignore[assignment]
messages_t: Table = Message.__table__  # type: ignore[assignment]
contacts_t: Table = Contact.__table__  # type: ignore[assignment]
conversions_t: Table = Conversion.__table__  # type: ignore[assignment]
assignments_t: Table = Assignment.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Version:
    id: int
    name: str
    hash: str
    journey: s.Journey
    status: str

    def step(self, step_id: str) -> tuple[int, s.Step]:
        for index, step in enumerate(self.journey.steps):
            if step.id == step_id:
                return index, step
        raise KeyError(f"journey {self.name!r} version {self.hash[:8]} has no step {step_id!r}")

    def after(self, step_id: str) -> str | None:
        index, step = self.step(step_id)
        return step.next if step.next is not None else following(self.journey, index)


@dataclass
class Item:
    """One enrollment while a tick moves it."""

    id: int
    version: Version
    contact_id: int
    step_id: str | None
    context: dict[str, Any]
    entered_at: datetime
    status: str = "active"
    next_due_at: datetime | None = None
    exit_reason: str | None = None
    parked: bool = False

    def go(self, step_id: str | None) -> None:
        if step_id is None:
            self.finish("end")
        else:
            self.step_id = step_id

    def park(self, until: datetime) -> None:
        self.next_due_at = until
        self.parked = True

    def finish(self, reason: str) -> None:
        self.status = "completed" if reason in {"end", "exit_step"} else "exited"
        self.exit_reason = reason
        self.next_due_at = None
        self.parked = True

    def visit(self, step_id: str) -> int:
        visits = self.context.setdefault("visits", {})
        visits[step_id] = visits.get(step_id, 0) + 1
        return int(visits[step_id])


@dataclass
class TickStats:
    processed: int = 0
    messages: int = 0
    held: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    deferred: int = 0
    completed: int = 0
    exited: int = 0
    # the enrollments this one tick moved; ``add`` does not collect them (a worker's total
    # over a million-contact broadcast would hold every id)
    ids: list[int] = field(default_factory=list)
    deferred_steps: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # per (step, "holdout" | "control"): sends left out with no message row
    held_out_steps: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    # per step: an auto-winner's rest, waiting for the decision
    awaiting_winner: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # contact -> attribute keys an update_contact step set in this tick (for the live
    # segments, after the commit; like ``ids``, not collected by ``add``)
    updated: dict[int, set[str]] = field(default_factory=dict)
    # the messages this tick wrote already claimed (``tick_batch(claim_token=...)``); like
    # ``ids``, not collected by ``add``
    claimed: list[int] = field(default_factory=list)

    def add(self, other: TickStats) -> None:
        self.processed += other.processed
        self.messages += other.messages
        self.deferred += other.deferred
        self.completed += other.completed
        self.exited += other.exited
        for step, n in other.deferred_steps.items():
            self.deferred_steps[step] += n
        for key, n in other.held_out_steps.items():
            self.held_out_steps[key] += n
        for step, n in other.awaiting_winner.items():
            self.awaiting_winner[step] += n
        for reason, n in other.held.items():
            self.held[reason] += n


def parse_cap(text: str | None) -> tuple[int | None, float]:
    """``"3 per 7 days"`` -> (3, seconds); None or "off" -> no cap."""
    from tidings.segments.rules import parse_duration

    if not text or text.strip().lower() in {"off", "none", "false"}:
        return None, 0.0
    count, _, window = text.partition(" per ")
    if not window or not count.strip().isdigit():
        raise InputError(f"frequency cap {text!r}: write it as '3 per 7 days'")
    return int(count), parse_duration(window)


def parse_quiet(text: str | None) -> tuple[Any, Any]:
    if not text or text.strip().lower() in {"off", "none", "false"}:
        return None, None
    start, _, end = text.partition("-")
    hours = s.QuietHours.model_validate({"start": start.strip(), "end": end.strip()})
    return hours.start, hours.end


def zone_of(name: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


def matches(properties: Any, where: dict[str, Any]) -> bool:
    props = properties or {}
    return all(props.get(key) == value for key, value in where.items())


def as_date(value: Any) -> date | None:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return value if isinstance(value, date) else None
