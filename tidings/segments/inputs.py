"""What a segment reads: the inputs whose change can move a contact in or out of it.

``inputs(core)`` walks a rule's core (``segments.core``, references inlined) and returns an
``Inputs``: the event names, attribute keys and contact columns it reads, whether it reads
orders, consents, engagement, suppressions, other segments' memberships or scores, and whether
it compares against a time relative to *now* (``within``, ``older_than``, ``since``), which
can change membership with no input changing at all.

The live path (``segments.live``) uses it twice: to pick the segments a change can affect
(``Inputs.affected_by``), and to tell which segments the incremental path keeps exactly up to
date (``Inputs.swept`` is empty) from those that also need the scheduled sweep. A node this
walker does not know makes the segment ``unknown``: it is then refreshed only in full, never
incrementally (the conservative answer for an operator added after this was written).

>>> from tidings.segments.core import Column, Compare, EventCount, All
>>> got = inputs(All((Compare(Column("locale"), "eq", "de"),
...                   EventCount("cart.updated", (), 3600.0, "gte", 1))))
>>> sorted(got.events), sorted(got.attributes), got.relative_time, got.live
(['cart.updated'], ['locale'], True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidings.segments import core as c
from tidings.segments.rules import SCORES, Ago, event_name_matches


@dataclass(frozen=True)
class Change:
    """What changed for some contacts. ``None`` in ``events``/``attributes``: any name/key."""

    events: frozenset[str] | None = frozenset()
    attributes: frozenset[str] | None = frozenset()
    orders: bool = False
    consents: bool = False

    @staticmethod
    def event(*names: str) -> Change:
        return Change(events=frozenset(names))

    @staticmethod
    def contact(keys: frozenset[str] | None = None, *, consents: bool = True) -> Change:
        """A contact written (created or updated; ``keys``: which attributes, None: any)."""
        return Change(attributes=keys, consents=consents)

    def merge(self, other: Change) -> Change:
        def union(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
            return None if a is None or b is None else a | b

        return Change(
            events=union(self.events, other.events),
            attributes=union(self.attributes, other.attributes),
            orders=self.orders or other.orders,
            consents=self.consents or other.consents,
        )


IMPORTED = {  # what an import of each kind changed for the contacts it touched
    "contacts": Change.contact(),
    "events": Change(events=None),
    "orders": Change(events=None, orders=True),  # an order writes its order.* events too
}


@dataclass
class Inputs:
    events: set[str] = field(default_factory=set)
    """Event names and name patterns (``checkout.*``)."""
    attributes: set[str] = field(default_factory=set)
    """Attribute keys (the first part of a dotted path) and contact columns (email, phone...)."""
    orders: bool = False
    consents: bool = False
    engagement: bool = False
    suppressions: bool = False
    topics: bool = False
    memberships: set[str] = field(default_factory=set)
    scores: bool = False
    relative_time: bool = False
    unknown: set[str] = field(default_factory=set)
    """Node kinds this walker does not know: the segment is refreshed only in full."""

    @property
    def live(self) -> bool:
        """Whether events, attribute, order or consent changes update it at once."""
        reads = self.events or self.attributes or self.orders or self.consents
        return not self.unknown and bool(reads)

    @property
    def swept(self) -> list[str]:
        """Why the scheduled sweep (a full refresh) is needed besides the live path; empty:
        the live path alone keeps the segment exact."""
        why = []
        if self.relative_time:
            why.append("time window")
        if self.engagement:
            why.append("engagement")
        if self.suppressions:
            why.append("suppressions")
        if self.topics:
            why.append("topic choices")
        if self.memberships:
            why.append("segment membership")
        if self.scores:
            why.append("scores")
        why += [f"unknown rule {name}" for name in sorted(self.unknown)]
        return why

    def affected_by(self, change: Change) -> bool:
        if self.unknown:
            return False
        if change.events is None:
            if self.events:
                return True
        elif any(event_name_matches(p, n) for p in self.events for n in change.events):
            return True
        if change.attributes is None:
            if self.attributes:
                return True
        elif self.attributes & change.attributes:
            return True
        return (change.orders and self.orders) or (change.consents and self.consents)


SCORE_COLUMNS = frozenset(SCORES)  # written by model training, in bulk: swept


def inputs(node: c.Core) -> Inputs:
    """The inputs of a core rule (see the module docstring)."""
    found = Inputs()
    _walk(node, found)
    return found


def _time(value: object, found: Inputs) -> None:
    if isinstance(value, Ago):
        found.relative_time = True
    elif isinstance(value, tuple):
        for v in value:
            _time(v, found)


def _walk(node: object, found: Inputs) -> None:
    match node:
        case c.All(children) | c.AnyOf(children):
            for child in children:
                _walk(child, found)
        case c.Not(child):
            _walk(child, found)
        case c.Const():
            pass
        case c.Compare(target=c.Column(name)):
            if name in SCORE_COLUMNS:
                found.scores = True
            found.attributes.add(name)
            _time(node.value, found)
        case c.Compare(target=c.Json(path=path)):
            found.attributes.add(path[0])
            _time(node.value, found)
        case c.EventCount() | c.LastEvent():
            found.events.add(node.name)
            found.relative_time |= node.since is not None
            for part in node.where:  # properties of the event, not of the contact
                _time_only(part, found)
        case c.HasBeen(key=key):  # also time: a contact enters when the period has passed
            found.attributes.add(key)
            found.relative_time = True
        case c.OrderMetric():
            found.orders = True
            found.relative_time |= node.since is not None or isinstance(node.value, Ago)
        case c.Engaged():
            found.engagement = True
            found.relative_time |= node.since is not None
        case c.ConsentGranted():
            found.consents = True
        case c.TopicChosen():  # chosen on the preference page, which is swept
            found.topics = True
        case c.Suppressed(channel):
            found.suppressions = True
            found.attributes.add(c.ADDRESS_COLUMN[channel])
        case c.Member(segment):
            found.memberships.add(segment)
        case c.Bucket():  # a hash of the contact's external id, else its email
            found.attributes |= {"external_id", "email"}
        case _:
            found.unknown.add(type(node).__name__)


def _time_only(node: c.Core, found: Inputs) -> None:
    """Inside an event's ``where``: only relative times matter (properties are the event's)."""
    match node:
        case c.All(children) | c.AnyOf(children):
            for child in children:
                _time_only(child, found)
        case c.Not(child):
            _time_only(child, found)
        case c.Compare():
            _time(node.value, found)
        case _:
            pass
