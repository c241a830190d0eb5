"""One rule for engagement: what counts as sent, delivered, opened, clicked, per message.

Engagement is counted **per message, never per event**. A message is *opened* when it has at
least one ``message_events`` row of type ``open`` with ``machine = false``, from any source
(our pixel, SendGrid's own open tracking, anything else): two sources reporting the same open
are one opened message, because messages are counted, not events. Machine opens (Apple Mail
privacy proxy, link scanners, prefetchers: ``machine = true``) are counted apart, as messages
with at least one machine open; they never make a message opened. Clicks follow the same rule:
a message is *clicked* when it has a ``click`` event with ``machine = false``.

This is the rule the segment condition ``opened:`` uses (``segments/compile.py``: an open
event with ``machine = false``, any provider). ``clicked:`` in segments does not filter machine
clicks today; reports do (docs/analytics.md, "One rule for opens").

Everything here is a SQLAlchemy expression, usable in any report query. Per message the
flags are one integer, ``bits`` (an OR of :data:`FLAGS`): one aggregate per message instead
of one per flag, which is what makes the report fast (``benchmarks/report.py``):

>>> flags = message_flags()                     # one row per message that has any event
>>> opened = func.sum(case((has(flags.c.bits, "human_open"), 1), else_=0))
>>> q = select(messages.c.step_id, opened).join(
...     flags, flags.c.message_id == messages.c.id).group_by(messages.c.step_id)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, Table, and_, case, false, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from tidings.crm.models import Message, MessageEvent, MessageStatus

messages: Table = Message.__table__  # type: ignore[assignment]
message_events: Table = MessageEvent.__table__  # type: ignore[assignment]

SENT_STATUSES = (
    MessageStatus.SENT.value,
    MessageStatus.DELIVERED.value,
    MessageStatus.BOUNCED.value,
)
"""A message in one of these statuses was accepted by its provider (so was any with ``sent_at``,
e.g. one dropped by the provider after acceptance, now ``failed``)."""

#: The per-message flags: name -> (bit, event type, machine filter); ``None`` as the filter
#: means any source. Each event sets at most one bit, so per message the bits are an OR.
FLAGS: dict[str, tuple[int, str, bool | None]] = {
    "human_open": (1, "open", False),
    "machine_open": (2, "open", True),
    "click": (4, "click", False),
    "delivered_event": (8, "delivered", None),
    "bounce_event": (16, "bounce", None),
    "unsubscribe": (32, "unsubscribe", None),
    "complaint": (64, "complaint", None),
}


def is_sent(m: Any = None) -> ColumnElement[bool]:
    """The message was handed to and accepted by its provider."""
    m = messages if m is None else m
    return or_(m.c.status.in_(SENT_STATUSES), m.c.sent_at.is_not(None))


def event_condition(kind: str, machine: bool | None, ev: Any = None) -> ColumnElement[bool]:
    """``type = kind`` (and ``machine = ...`` when given) on a ``message_events`` alias."""
    ev = message_events if ev is None else ev
    cond: ColumnElement[bool] = ev.c.type == kind
    if machine is not None:
        cond = and_(cond, ev.c.machine.is_(True) if machine else ev.c.machine == false())
    return cond


def human_open(ev: Any = None) -> ColumnElement[bool]:
    """An event that makes its message opened: ``type = 'open' AND machine = false``.

    The same condition as the segment rule ``opened:`` (``segments/compile.py``)."""
    return event_condition("open", False, ev)


def human_click(ev: Any = None) -> ColumnElement[bool]:
    """An event that makes its message clicked: ``type = 'click' AND machine = false``."""
    return event_condition("click", False, ev)


def event_bit(ev: Any = None) -> ColumnElement[int]:
    """The flag bit an event sets (:data:`FLAGS`), 0 for any other event."""
    ev = message_events if ev is None else ev
    whens = [(event_condition(k, m, ev), bit) for bit, k, m in FLAGS.values()]
    return case(*whens, else_=0)


def has(bits: Any, name: str) -> ColumnElement[bool]:
    """``bits & flag <> 0``: the message has flag ``name`` (``bits`` from :func:`message_flags`)."""
    return func.coalesce(bits, 0).op("&")(FLAGS[name][0]) != 0


def decode(bits: int | None) -> dict[str, bool]:
    """The flags of a ``bits`` value read back in Python.

    >>> decode(5)["human_open"], decode(5)["click"], decode(None)["machine_open"]
    (True, True, False)
    """
    return {name: bool((bits or 0) & bit) for name, (bit, _, _) in FLAGS.items()}


class _BitOr(FunctionElement[int]):
    """``bit_or(x)`` on PostgreSQL; ``SUM(DISTINCT x)`` elsewhere, the same value when every
    row sets at most one bit (as :func:`event_bit` does)."""

    type = Integer()
    inherit_cache = True
    name = "bit_or_flags"


@compiles(_BitOr)
def _bit_or_default(element: _BitOr, compiler: Any, **kw: Any) -> str:
    return f"SUM(DISTINCT {compiler.process(element.clauses, **kw)})"


@compiles(_BitOr, "postgresql")
def _bit_or_postgresql(element: _BitOr, compiler: Any, **kw: Any) -> str:
    return f"bit_or({compiler.process(element.clauses, **kw)})"


def message_flags(message_ids: Any = None, *, between: tuple[Any, Any] | None = None) -> Any:
    """A subquery, one row per message with events: ``message_id`` and ``bits``, the OR of the
    :data:`FLAGS` bits of its events (so duplicates count once); test a flag with :func:`has`.

    ``message_ids`` (a subquery or a list) narrows the events read, e.g. to one journey's
    messages; ``between`` (lowest, highest message id, values or scalar subqueries) narrows
    them to a range, which is cheaper still when the caller joins to its own messages anyway
    (events of other messages in the range are aggregated, then dropped by the join). On
    PostgreSQL the index (message_id, type, machine) lets this be an index-only
    scan in message order, aggregated as it streams.
    """
    ev = message_events
    query: Select[Any] = select(ev.c.message_id, _BitOr(event_bit(ev)).label("bits")).where(
        ev.c.message_id.is_not(None)
    )
    if message_ids is not None:
        query = query.where(ev.c.message_id.in_(message_ids))
    if between is not None:
        query = query.where(ev.c.message_id.between(*between))
    return query.group_by(ev.c.message_id).subquery("flags")


def delivered(m: Any, flags: Any) -> ColumnElement[int]:
    """1 when the message was delivered: a ``delivered`` event or the status says so."""
    return case(
        (or_(m.c.status == MessageStatus.DELIVERED.value, has(flags.c.bits, "delivered_event")), 1),
        else_=0,
    )


def bounced(m: Any, flags: Any) -> ColumnElement[int]:
    """1 when the message bounced: a ``bounce`` event or the status says so."""
    return case(
        (or_(m.c.status == MessageStatus.BOUNCED.value, has(flags.c.bits, "bounce_event")), 1),
        else_=0,
    )
