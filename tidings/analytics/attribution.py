"""Attribution of a conversion, and its money, to the touches before it.

A *touch* is a send, a (human) open or a click of one message. A touch counts for a conversion
when it happened no later than the conversion and no earlier than the window of its kind
(:class:`AttributionSettings`: sends 1 day, opens 3 days, clicks 7 days by default). Touches are
ordered by time; at the same instant a send comes before an open, an open before a click, then
by message id. Five models spread the credit over the counting touches:

``first_touch``      all of it to the earliest touch
``last_touch``       all of it to the latest touch
``linear``           equal shares
``time_decay``       share proportional to ``2 ** (-age / half_life)``, age measured back from
                     the conversion (half-life 1 day by default)
``position_based``   40% to the first, 40% to the last, 20% split evenly between the ones in
                     between (one touch: 100%; two touches: 50/50)

A message touched several times (sent, opened, clicked) gets the sum of its touches' shares;
the result has one :class:`Credit` per message, in the order of its first counting touch, and
leaves out messages whose share is 0. Weights are exact fractions that sum to exactly 1
(time-decay weights are the floating-point powers of two, converted exactly, then normalised
exactly). Money is split in the currency's minor unit (cents; yen have none), or finer if the
value itself is, by largest remainder: the credits sum to the conversion value exactly, and
each is within one unit of its exact share. No counting touch: the conversion is unattributed.

>>> from datetime import datetime, timedelta
>>> t0 = datetime(2025, 3, 1, 12)
>>> conversion = Conversion(at=t0, value=Decimal("100.00"), currency="USD")
>>> touches = [
...     Touch("send", t0 - timedelta(hours=20), message_id=1),
...     Touch("click", t0 - timedelta(hours=10), message_id=2),
...     Touch("click", t0 - timedelta(hours=2), message_id=3),
... ]
>>> [(c.message_id, str(c.weight), c.value) for c in attribute(conversion, touches,
...     model="position_based").credits]
[(1, '2/5', Decimal('40.00')), (2, '1/5', Decimal('20.00')), (3, '2/5', Decimal('40.00'))]
>>> [(c.message_id, c.value) for c in attribute(conversion, touches, model="linear").credits]
[(1, Decimal('33.34')), (2, Decimal('33.33')), (3, Decimal('33.33'))]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Literal, assert_never

from babel.numbers import get_currency_precision

TouchKind = Literal["send", "open", "click"]
Model = Literal["first_touch", "last_touch", "linear", "time_decay", "position_based"]
MODELS: tuple[Model, ...] = ("first_touch", "last_touch", "linear", "time_decay", "position_based")
_KIND_ORDER: dict[str, int] = {"send": 0, "open": 1, "click": 2}


@dataclass(frozen=True)
class Touch:
    """One interaction with one message: ``kind`` is send, open (human) or click."""

    kind: TouchKind
    at: datetime
    message_id: int

    def __post_init__(self) -> None:
        if self.kind not in _KIND_ORDER:
            raise ValueError(f"touch kind must be send, open or click, got {self.kind!r}")


@dataclass(frozen=True)
class Conversion:
    """A conversion to attribute: when, how much, in which currency (ISO 4217)."""

    at: datetime
    value: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not self.value.is_finite():
            raise ValueError(f"conversion value must be a finite amount, got {self.value}")


@dataclass(frozen=True)
class AttributionSettings:
    """Look-back window per touch kind, the time-decay half-life, position-based shares."""

    send_window: timedelta = timedelta(days=1)
    open_window: timedelta = timedelta(days=3)
    click_window: timedelta = timedelta(days=7)
    half_life: timedelta = timedelta(days=1)
    first_share: Fraction = Fraction(2, 5)
    last_share: Fraction = Fraction(2, 5)

    def __post_init__(self) -> None:
        for name in ("send_window", "open_window", "click_window"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative")
        if self.half_life <= timedelta(0):
            raise ValueError("half_life must be positive")
        if min(self.first_share, self.last_share) < 0 or self.first_share + self.last_share > 1:
            raise ValueError("first_share and last_share must be >= 0 and sum to at most 1")

    def window(self, kind: TouchKind) -> timedelta:
        """The look-back window of a touch kind."""
        match kind:
            case "send":
                return self.send_window
            case "open":
                return self.open_window
            case "click":
                return self.click_window
            case _:
                assert_never(kind)


DEFAULT_SETTINGS = AttributionSettings()


@dataclass(frozen=True)
class Credit:
    """The share of one message in a conversion: exact weight and money."""

    message_id: int
    weight: Fraction
    value: Decimal
    touches: tuple[Touch, ...]


@dataclass(frozen=True)
class AttributionResult:
    """A conversion attributed by one model; no credits means unattributed."""

    model: Model
    conversion: Conversion
    credits: tuple[Credit, ...]

    @property
    def unattributed(self) -> bool:
        """True when no touch counted for the conversion."""
        return not self.credits


def counting_touches(
    conversion: Conversion,
    touches: Iterable[Touch],
    settings: AttributionSettings = DEFAULT_SETTINGS,
) -> list[Touch]:
    """The touches inside their window and not after the conversion, in order, duplicates once."""
    kept = {t for t in touches if conversion.at - settings.window(t.kind) <= t.at <= conversion.at}
    return sorted(kept, key=lambda t: (t.at, _KIND_ORDER[t.kind], t.message_id))


def touch_weights(
    ordered: Sequence[Touch],
    model: Model,
    settings: AttributionSettings = DEFAULT_SETTINGS,
) -> list[Fraction]:
    """Exact weight of each touch (in the given order) under ``model``; sums to 1."""
    k = len(ordered)
    if k == 0:
        return []
    match model:
        case "first_touch":
            return [Fraction(1)] + [Fraction(0)] * (k - 1)
        case "last_touch":
            return [Fraction(0)] * (k - 1) + [Fraction(1)]
        case "linear":
            return [Fraction(1, k)] * k
        case "time_decay":
            # 2**(-age/h) normalised; measured from the latest touch (weight exactly 1) rather
            # than from the conversion, which gives the same shares and cannot underflow to 0.
            latest = ordered[-1].at
            h = settings.half_life.total_seconds()
            raw = [Fraction(2.0 ** (-(latest - t.at).total_seconds() / h)) for t in ordered]
            total = sum(raw, Fraction(0))
            return [r / total for r in raw]
        case "position_based":
            if k == 1:
                return [Fraction(1)]
            if k == 2:
                return [Fraction(1, 2), Fraction(1, 2)]
            first, last = settings.first_share, settings.last_share
            middle = (1 - first - last) / (k - 2)
            return [first] + [middle] * (k - 2) + [last]
        case _:
            assert_never(model)


def minor_unit_exponent(value: Decimal, currency: str) -> int:
    """Exponent of the unit money is split in: the currency's minor unit, or finer if needed.

    >>> minor_unit_exponent(Decimal("100"), "USD"), minor_unit_exponent(Decimal("100"), "JPY")
    (-2, 0)
    >>> minor_unit_exponent(Decimal("10.005"), "USD")
    -3
    """
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite amount: {value}")
    return min(-get_currency_precision(currency.upper()), exponent)


def split_money(value: Decimal, weights: Sequence[Fraction], *, exponent: int) -> list[Decimal]:
    """Largest-remainder split of ``value`` in units of ``10**exponent``; sums to ``value``.

    Ties between equal remainders go to the earlier share.

    >>> split_money(Decimal("10.00"), [Fraction(1, 3)] * 3, exponent=-2)
    [Decimal('3.34'), Decimal('3.33'), Decimal('3.33')]
    """
    if sum(weights, Fraction(0)) != 1:
        raise ValueError("weights must sum to exactly 1")
    units = Fraction(value) * Fraction(10) ** -exponent
    if units.denominator != 1:
        raise ValueError(f"{value} is not a whole number of 10**{exponent}")
    total = units.numerator
    exact = [total * w for w in weights]
    floors = [math.floor(e) for e in exact]
    leftover = total - sum(floors)
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in by_remainder[:leftover]:
        floors[i] += 1
    return [Decimal(f"{n}E{exponent}") for n in floors]


def attribute(
    conversion: Conversion,
    touches: Iterable[Touch],
    *,
    model: Model,
    settings: AttributionSettings = DEFAULT_SETTINGS,
) -> AttributionResult:
    """Attribute ``conversion`` to ``touches`` under ``model`` (see the module docstring)."""
    ordered = counting_touches(conversion, touches, settings)
    weights = touch_weights(ordered, model, settings)
    per_message: dict[int, tuple[Fraction, list[Touch]]] = {}
    for touch, weight in zip(ordered, weights, strict=True):
        acc, seen = per_message.get(touch.message_id, (Fraction(0), []))
        per_message[touch.message_id] = (acc + weight, [*seen, touch])
    kept = [(mid, w, ts) for mid, (w, ts) in per_message.items() if w > 0]
    if not kept:
        return AttributionResult(model=model, conversion=conversion, credits=())
    exponent = minor_unit_exponent(conversion.value, conversion.currency)
    money = split_money(conversion.value, [w for _, w, _ in kept], exponent=exponent)
    credits = tuple(
        Credit(message_id=mid, weight=w, value=v, touches=tuple(ts))
        for (mid, w, ts), v in zip(kept, money, strict=True)
    )
    return AttributionResult(model=model, conversion=conversion, credits=credits)


def attribute_all(
    conversion: Conversion,
    touches: Iterable[Touch],
    *,
    models: Sequence[Model] = MODELS,
    settings: AttributionSettings = DEFAULT_SETTINGS,
) -> dict[Model, AttributionResult]:
    """:func:`attribute` under each of ``models`` (all five by default)."""
    touches = list(touches)
    return {m: attribute(conversion, touches, model=m, settings=settings) for m in models}
