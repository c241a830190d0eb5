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

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each name is imported from its module when first used (PEP 562): the statistics need numpy and
# scipy, over a second to import, which a command that only needs a submodule (engagement for
# segments, auto_winner for the journey engine) should not wait for.
_MODULES = {
    "MODELS": "attribution",
    "AttributionResult": "attribution",
    "AttributionSettings": "attribution",
    "Conversion": "attribution",
    "Credit": "attribution",
    "Touch": "attribution",
    "attribute": "attribution",
    "attribute_all": "attribution",
    "probability_to_be_best": "bayes",
    "revenue_probability_to_be_best": "bayes",
    "Decision": "decision",
    "Metric": "decision",
    "Rule": "decision",
    "decide": "decision",
    "msprt_test": "sequential",
    "ArmCounts": "stats",
    "ChiSquaredResult": "stats",
    "Comparison": "stats",
    "Lift": "stats",
    "SrmResult": "stats",
    "chi_squared_test": "stats",
    "holm": "stats",
    "incremental_lift": "stats",
    "sample_size": "stats",
    "srm_check": "stats",
    "welch_test": "stats",
    "welch_vs_control": "stats",
    "z_test": "stats",
}

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


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # imported once
    return value
