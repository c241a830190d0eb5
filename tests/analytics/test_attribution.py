"""Attribution: a hand-worked example per model, windows, and exactness as properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.analytics.attribution import (
    MODELS,
    AttributionSettings,
    Conversion,
    Touch,
    attribute,
    attribute_all,
    counting_touches,
    minor_unit_exponent,
    split_money,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
ORDER = Conversion(at=T0, value=Decimal("100.00"), currency="USD")

# The worked example (docs/analytics.md): three messages touch the order, two touches do not.
TOUCHES = [
    Touch("send", T0 - 17 * H, message_id=1),  # counts: send window 1 day
    Touch("click", T0 - 9 * H, message_id=2),
    Touch("click", T0 - 1 * H, message_id=3),
    Touch("send", T0 - 30 * H, message_id=4),  # send older than 1 day: out of its window
    Touch("click", T0 + 1 * H, message_id=5),  # after the order: never counts
]
HALF_LIFE_8H = AttributionSettings(half_life=8 * H)


def _split(result):
    return [(c.message_id, c.weight, c.value) for c in result.credits]


def test_first_touch_by_hand():
    assert _split(attribute(ORDER, TOUCHES, model="first_touch")) == [
        (1, Fraction(1), Decimal("100.00"))
    ]


def test_last_touch_by_hand():
    assert _split(attribute(ORDER, TOUCHES, model="last_touch")) == [
        (3, Fraction(1), Decimal("100.00"))
    ]


def test_linear_by_hand():
    # 100.00 / 3 = 33.333...: floors 33.33 x 3 = 99.99; the one cent left goes to the largest
    # remainder, all equal, so to the earliest message.
    assert _split(attribute(ORDER, TOUCHES, model="linear")) == [
        (1, Fraction(1, 3), Decimal("33.34")),
        (2, Fraction(1, 3), Decimal("33.33")),
        (3, Fraction(1, 3), Decimal("33.33")),
    ]


def test_time_decay_by_hand():
    # Ages 17 h, 9 h, 1 h with an 8 h half-life: raw weights 2^(-17/8), 2^(-9/8), 2^(-1/8), in
    # the ratio 1 : 2 : 4, so 1/7, 2/7, 4/7. Money: 14.2857.., 28.5714.., 57.1428.. -> floors
    # 14.28 + 28.57 + 57.14 = 99.99; remainders .57, .14, .28 cents: the cent goes to message 1.
    assert _split(attribute(ORDER, TOUCHES, model="time_decay", settings=HALF_LIFE_8H)) == [
        (1, Fraction(1, 7), Decimal("14.29")),
        (2, Fraction(2, 7), Decimal("28.57")),
        (3, Fraction(4, 7), Decimal("57.14")),
    ]


def test_position_based_by_hand():
    assert _split(attribute(ORDER, TOUCHES, model="position_based")) == [
        (1, Fraction(2, 5), Decimal("40.00")),
        (2, Fraction(1, 5), Decimal("20.00")),
        (3, Fraction(2, 5), Decimal("40.00")),
    ]
    # Four touches: the middle 20% is split between two; two touches: 50/50; one: all of it.
    four = [*TOUCHES[:3], Touch("open", T0 - 5 * H, message_id=6)]
    assert [c.weight for c in attribute(ORDER, four, model="position_based").credits] == [
        Fraction(2, 5),
        Fraction(1, 10),
        Fraction(1, 10),
        Fraction(2, 5),
    ]
    two = attribute(ORDER, TOUCHES[1:3], model="position_based")
    assert [c.weight for c in two.credits] == [Fraction(1, 2), Fraction(1, 2)]
    one = attribute(ORDER, TOUCHES[2:3], model="position_based")
    assert [c.weight for c in one.credits] == [Fraction(1)]


def test_a_message_touched_several_times_gets_the_sum_of_its_touches():
    touches = [
        Touch("send", T0 - 20 * H, message_id=1),
        Touch("open", T0 - 19 * H, message_id=1),
        Touch("click", T0 - 18 * H, message_id=1),
        Touch("click", T0 - 2 * H, message_id=2),
    ]
    linear = attribute(ORDER, touches, model="linear")
    assert _split(linear) == [
        (1, Fraction(3, 4), Decimal("75.00")),
        (2, Fraction(1, 4), Decimal("25.00")),
    ]
    assert [t.kind for t in linear.credits[0].touches] == ["send", "open", "click"]


def test_windows_per_kind_and_their_edges():
    s = AttributionSettings()
    edge = [
        Touch("open", T0 - s.open_window, message_id=1),  # exactly at the window edge: counts
        Touch("open", T0 - s.open_window - timedelta(seconds=1), message_id=2),
        Touch("click", T0 - 6 * 24 * H, message_id=3),  # clicks look back 7 days
        Touch("send", T0 - 2 * 24 * H, message_id=4),  # sends only 1 day
        Touch("click", T0, message_id=5),  # at the instant of the conversion: counts
        Touch("click", T0 + timedelta(seconds=1), message_id=6),
    ]
    assert [t.message_id for t in counting_touches(ORDER, edge)] == [3, 1, 5]
    wider = AttributionSettings(send_window=timedelta(days=3))
    assert 4 in [t.message_id for t in counting_touches(ORDER, edge, wider)]


def test_no_counting_touch_is_unattributed():
    for model in MODELS:
        assert attribute(ORDER, [], model=model).unattributed
        assert attribute(ORDER, TOUCHES[3:], model=model).unattributed  # all outside
        assert not attribute(ORDER, TOUCHES, model=model).unattributed


def test_same_instant_orders_send_open_click_then_message():
    touches = [Touch("click", T0 - H, 9), Touch("send", T0 - H, 8), Touch("open", T0 - H, 7)]
    assert attribute(ORDER, touches, model="first_touch").credits[0].message_id == 8
    assert attribute(ORDER, touches, model="last_touch").credits[0].message_id == 9


def test_duplicate_touches_count_once():
    touches = [TOUCHES[1], TOUCHES[1], TOUCHES[2]]
    assert [c.weight for c in attribute(ORDER, touches, model="linear").credits] == [
        Fraction(1, 2),
        Fraction(1, 2),
    ]


def test_money_in_the_currency_minor_unit():
    yen = Conversion(at=T0, value=Decimal("1000"), currency="JPY")
    assert [c.value for c in attribute(yen, TOUCHES, model="linear").credits] == [
        Decimal("334"),
        Decimal("333"),
        Decimal("333"),
    ]
    dinar = Conversion(at=T0, value=Decimal("10.000"), currency="KWD")
    assert [c.value for c in attribute(dinar, TOUCHES, model="linear").credits] == [
        Decimal("3.334"),
        Decimal("3.333"),
        Decimal("3.333"),
    ]
    assert minor_unit_exponent(Decimal("12.5"), "usd") == -2
    refund = Conversion(at=T0, value=Decimal("-10.00"), currency="EUR")
    assert sum(c.value for c in attribute(refund, TOUCHES, model="linear").credits) == Decimal(
        "-10.00"
    )


def test_attribute_all_runs_every_model():
    results = attribute_all(ORDER, iter(TOUCHES), settings=HALF_LIFE_8H)
    assert list(results) == list(MODELS)
    assert all(sum(c.value for c in r.credits) == ORDER.value for r in results.values())


def test_split_money_rejects_weights_that_do_not_sum_to_one():
    with pytest.raises(ValueError, match="exactly 1"):
        split_money(Decimal("1.00"), [Fraction(1, 3), Fraction(1, 3)], exponent=-2)


def test_settings_validation():
    with pytest.raises(ValueError):
        AttributionSettings(half_life=timedelta(0))
    with pytest.raises(ValueError):
        AttributionSettings(first_share=Fraction(3, 5), last_share=Fraction(3, 5))
    with pytest.raises(ValueError):
        Touch("bounce", T0, 1)  # type: ignore[arg-type]


# -- properties ------------------------------------------------------------------------------

touch_st = st.builds(
    Touch,
    kind=st.sampled_from(["send", "open", "click"]),
    at=st.integers(-10 * 24 * 3600, 24 * 3600).map(lambda s: T0 + timedelta(seconds=s)),
    message_id=st.integers(1, 6),
)
currency_st = st.sampled_from(["USD", "EUR", "JPY", "KWD", "CLF"])
value_st = st.builds(
    lambda units, exp: Decimal(units).scaleb(exp),
    st.integers(-(10**7), 10**9),
    st.integers(-4, 0),
)
settings_st = st.builds(
    AttributionSettings,
    send_window=st.integers(0, 3 * 24).map(lambda h: timedelta(hours=h)),
    open_window=st.integers(0, 7 * 24).map(lambda h: timedelta(hours=h)),
    click_window=st.integers(0, 14 * 24).map(lambda h: timedelta(hours=h)),
    half_life=st.integers(1, 14 * 24 * 3600).map(lambda s: timedelta(seconds=s)),
)


@settings(max_examples=300, deadline=None)
@given(
    touches=st.lists(touch_st, max_size=12),
    value=value_st,
    currency=currency_st,
    config=settings_st,
)
def test_weights_sum_to_one_and_money_to_the_order_value(touches, value, currency, config):
    conversion = Conversion(at=T0, value=value, currency=currency)
    counting = counting_touches(conversion, touches, config)
    quantum = Decimal(1).scaleb(minor_unit_exponent(value, currency))
    for model, result in attribute_all(conversion, touches, settings=config).items():
        if not counting:
            assert result.unattributed
            continue
        assert sum((c.weight for c in result.credits), Fraction(0)) == 1, model
        assert all(c.weight > 0 for c in result.credits)
        assert sum(c.value for c in result.credits) == value, model
        for c in result.credits:
            assert c.value % quantum == 0  # whole minor units
            assert abs(Fraction(c.value) - c.weight * Fraction(value)) < Fraction(quantum)
            for t in c.touches:
                assert T0 - config.window(t.kind) <= t.at <= T0
        assert len({c.message_id for c in result.credits}) == len(result.credits)
