"""Experiment statistics and attribution: pure computation, no database.

* :mod:`~tidings.analytics.stats`: fixed-horizon tests (z, chi-squared + Holm, Welch), the
  sample-ratio check, sample size, lift against a holdout.
* :mod:`~tidings.analytics.sequential`: mSPRT, the peeking-safe default decision rule.
* :mod:`~tidings.analytics.bayes`: probability to be best.
* :mod:`~tidings.analytics.decision`: :func:`decide`, winner / inconclusive / blocked.
* :mod:`~tidings.analytics.attribution`: five attribution models, exact weights and money.

See ``docs/analytics.md``.
"""

from __future__ import annotations

from tidings.analytics.attribution import (
    MODELS,
    AttributionResult,
    AttributionSettings,
    Conversion,
    Credit,
    Touch,
    attribute,
    attribute_all,
)
from tidings.analytics.bayes import probability_to_be_best, revenue_probability_to_be_best
from tidings.analytics.decision import Decision, Metric, Rule, decide
from tidings.analytics.sequential import msprt_test
from tidings.analytics.stats import (
    ArmCounts,
    ChiSquaredResult,
    Comparison,
    Lift,
    SrmResult,
    chi_squared_test,
    holm,
    incremental_lift,
    sample_size,
    srm_check,
    welch_test,
    welch_vs_control,
    z_test,
)

__all__ = [
    "MODELS",
    "ArmCounts",
    "AttributionResult",
    "AttributionSettings",
    "ChiSquaredResult",
    "Comparison",
    "Conversion",
    "Credit",
    "Decision",
    "Lift",
    "Metric",
    "Rule",
    "SrmResult",
    "Touch",
    "attribute",
    "attribute_all",
    "chi_squared_test",
    "decide",
    "holm",
    "incremental_lift",
    "msprt_test",
    "probability_to_be_best",
    "revenue_probability_to_be_best",
    "sample_size",
    "srm_check",
    "welch_test",
    "welch_vs_control",
    "z_test",
]
