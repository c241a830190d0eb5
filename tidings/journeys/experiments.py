"""Stable variant assignment for A/B experiments and random splits.

A contact's bucket is a hash of (experiment name, contact id): the same contact always gets
the same variant, across workers and re-runs, with no state needed to decide (the
``assignments`` table records it for the statistics).

>>> variant_for("welcome.hello", 42, [("A", 50), ("B", 50)], holdout=10) in {"A", "B", "holdout"}
True
>>> variant_for("x", 7, [("A", 1), ("B", 1)]) == variant_for("x", 7, [("A", 1), ("B", 1)])
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HOLDOUT = "holdout"
CONTROL = "control"
_SCALE = 10_000


def bucket(name: str, key: int | str) -> int:
    """A number in [0, 10000) spread evenly over keys."""
    digest = hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _SCALE


def variant_for(
    name: str, key: int | str, weights: Sequence[tuple[str, float]], *, holdout: float = 0
) -> str:
    """The variant of ``key``: ``holdout`` for the first ``holdout`` percent, then by weight."""
    point = bucket(name, key)
    cut = holdout * _SCALE / 100
    if point < cut:
        return HOLDOUT
    position = (point - cut) / (_SCALE - cut) if cut < _SCALE else 0.0
    total = sum(weight for _, weight in weights)
    running = 0.0
    for variant, weight in weights:
        running += weight / total
        if position < running:
            return variant
    return weights[-1][0]


def in_control(journey: str, key: int | str, percent: float) -> bool:
    """Whether ``key`` is in the journey's control group (``settings.control_group``): it
    receives nothing from the journey, and its conversions are the baseline for the lift."""
    return percent > 0 and bucket(f"{journey}:control", key) < percent * _SCALE / 100


def in_test(name: str, key: int | str, share: float) -> bool:
    """Whether ``key`` is in the test share of auto-winner experiment ``name`` (``share``
    percent): the test's variants and holdout are drawn within it; the rest gets the winner."""
    return bucket(f"{name}:test", key) < share * _SCALE / 100
