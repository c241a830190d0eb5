"""decide(): the rule picks the test, SRM blocks, the reason says what was done."""

from __future__ import annotations

import pytest

from tidings.analytics.decision import decide
from tidings.analytics.stats import ArmCounts, chi_squared_test, welch_test, z_test

STRONG = [ArmCounts("A", 20_000, 1_000), ArmCounts("B", 20_000, 1_150)]
WEAK = [ArmCounts("A", 2_000, 100), ArmCounts("B", 2_000, 112)]


def test_default_rule_is_sequential_and_says_it_is_peeking_safe():
    d = decide(STRONG, metric="click", weights={"A": 50, "B": 50})
    assert (d.outcome, d.winner, d.rule) == ("winner", "B", "sequential")
    assert d.peeking_safe
    assert "valid under continuous peeking" in d.reason
    assert "always-valid CI" in d.reason
    assert d.srm is not None and not d.srm.mismatch


def test_sequential_is_stricter_than_fixed_on_the_same_data():
    # z = 2.2: significant for a test looked at once, not for one that may be looked at daily.
    arms = [ArmCounts("A", 10_000, 500), ArmCounts("B", 10_000, 565)]
    fixed = decide(arms, metric="conversion", rule="fixed")
    seq = decide(arms, metric="conversion")
    assert fixed.outcome == "winner" and not fixed.peeking_safe
    assert seq.outcome == "inconclusive"
    assert "no arm differs from A" in seq.reason


def test_srm_blocks_whatever_the_data_say():
    arms = [ArmCounts("A", 5_000, 100), ArmCounts("B", 5_400, 400)]
    d = decide(arms, metric="click", weights={"A": 50, "B": 50})
    assert (d.outcome, d.winner) == ("blocked", None)
    assert "sample-ratio mismatch" in d.reason and "A=5000, B=5400" in d.reason
    assert d.comparisons == ()


def test_srm_counts_the_holdout_through_assignments():
    assigned = {"A": 4_500, "B": 4_500, "holdout": 1_000}
    ok = decide(
        STRONG, metric="click", weights={"A": 45, "B": 45, "holdout": 10}, assignments=assigned
    )
    assert ok.outcome == "winner"
    short = decide(
        STRONG,
        metric="click",
        weights={"A": 45, "B": 45, "holdout": 10},
        assignments={**assigned, "holdout": 800},
    )
    assert short.outcome == "blocked"


def test_without_weights_the_reason_says_srm_was_not_checked():
    d = decide(STRONG, metric="click")
    assert d.srm is None and "not checked" in d.reason


def test_fixed_two_arms_is_the_z_test():
    d = decide(WEAK, metric="open", rule="fixed")
    ref = z_test(*WEAK)
    assert d.test == "two-proportion z-test"
    assert d.comparisons[0].p_value == ref.p_value
    assert d.outcome == "inconclusive"


def test_fixed_more_arms_is_chi_squared_with_holm():
    arms = [ArmCounts("A", 2000, 100), ArmCounts("B", 2000, 140), ArmCounts("C", 2000, 104)]
    d = decide(arms, metric="click", rule="fixed")
    assert d.test == "chi-squared with Holm correction, pairwise vs control"
    assert d.omnibus == chi_squared_test(arms)
    assert (d.outcome, d.winner) == ("winner", "B")


def test_several_winners_pick_the_highest_and_say_so():
    arms = [
        ArmCounts("A", 20_000, 1_000),
        ArmCounts("B", 20_000, 1_300),
        ArmCounts("C", 20_000, 1_400),
    ]
    d = decide(arms, metric="click")
    assert d.winner == "C"
    assert "B also beat A" in d.reason
    assert "Holm" in d.test


def test_control_wins_when_every_challenger_is_worse():
    arms = [ArmCounts("A", 20_000, 1_400), ArmCounts("B", 20_000, 1_000)]
    d = decide(arms, metric="click", rule="fixed")
    assert (d.outcome, d.winner) == ("winner", "A")
    assert "A beats every challenger" in d.reason


def test_control_can_be_named():
    d = decide(STRONG, metric="click", control="B")
    assert (d.outcome, d.winner) == ("winner", "B")
    assert d.comparisons[0].control == "B"


def test_revenue_uses_welch_when_fixed_and_msprt_by_default():
    a = ArmCounts("A", 4000, revenue=8000.0, revenue_sq=4000 * (2.0**2 + 30.0**2))
    b = ArmCounts("B", 4000, revenue=12_000.0, revenue_sq=4000 * (3.0**2 + 30.0**2))
    fixed = decide([a, b], metric="revenue", rule="fixed")
    assert fixed.test == "Welch t-test"
    assert fixed.comparisons[0].p_value == welch_test(a, b).p_value
    seq = decide([a, b], metric="revenue")
    assert seq.peeking_safe and seq.comparisons[0].p_value > fixed.comparisons[0].p_value
    assert "2.00 -> 3.00 (+1.00, 95% always-valid CI" in seq.reason  # money, not percentages


def test_bayesian_rule_with_its_threshold():
    d = decide(STRONG, metric="click", rule="bayesian")
    assert (d.outcome, d.winner, d.threshold) == ("winner", "B", 0.95)
    assert not d.peeking_safe
    assert "not an error rate" in d.reason
    assert d.probabilities["B"] > 0.95
    strict = decide(WEAK, metric="click", rule="bayesian", threshold=0.99)
    assert strict.outcome == "inconclusive" and "0.99" in strict.reason


def test_previous_p_values_keep_a_decision_taken_at_an_earlier_look():
    first = decide(STRONG, metric="click")
    later_arms = [ArmCounts("A", 22_000, 1_120), ArmCounts("B", 22_000, 1_230)]
    fresh = decide(later_arms, metric="click")
    carried = decide(later_arms, metric="click", previous_p_values=first.p_values)
    assert fresh.outcome == "inconclusive"
    assert carried.outcome == "winner" and carried.p_values == first.p_values


def test_not_enough_recipients_is_inconclusive():
    d = decide([ArmCounts("A", 0), ArmCounts("B", 10, 1)], metric="click")
    assert d.outcome == "inconclusive" and "A" in d.reason
    r = decide(
        [ArmCounts("A", 1, revenue=1, revenue_sq=1), ArmCounts("B", 3, revenue=1, revenue_sq=1)],
        metric="revenue",
    )
    assert r.outcome == "inconclusive"


def test_bad_arguments():
    with pytest.raises(ValueError, match="control"):
        decide(STRONG, metric="click", control="Z")
    with pytest.raises(ValueError, match="unique"):
        decide([STRONG[0], STRONG[0]], metric="click")
    with pytest.raises(ValueError, match="threshold"):
        decide(STRONG, metric="click", rule="bayesian", threshold=1.5)


def test_stored_p_values_are_unadjusted_so_holm_is_not_applied_twice():
    arms = [
        ArmCounts("A", 20_000, 1_000),
        ArmCounts("B", 20_000, 1_150),
        ArmCounts("C", 20_000, 1_040),
    ]
    d = decide(arms, metric="click")
    by_arm = {c.treatment: c for c in d.comparisons}
    assert d.p_values == {k: c.p_value for k, c in by_arm.items()}
    assert by_arm["B"].p_adjusted == pytest.approx(2 * by_arm["B"].p_value)
    again = decide(arms, metric="click", previous_p_values=d.p_values)
    assert again.p_values == d.p_values
    assert [c.p_adjusted for c in again.comparisons] == [c.p_adjusted for c in d.comparisons]
