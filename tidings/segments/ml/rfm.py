"""RFM clusters (KMeans), k chosen by silhouette, named in plain words by their centroids.

Buyers (at least one purchase day before the cut-off) are clustered on three standardised
columns: recency ``-log1p(recency_days)`` (higher = more recent), frequency ``log1p(frequency)``
and monetary ``log1p(monetary_avg)``. k is the one in ``k_range`` (default 3..8) with the highest
mean silhouette (computed on a fixed random sample of at most 5,000 buyers, so it stays cheap on
a million contacts); ties go to the smaller k.

Names come from the centroid's quadrant (recent or lapsed, by the sign of its standardised
recency; frequent or not, by the sign of its frequency), and inside a quadrant by value
(recency + frequency + monetary, best first):

=====================  =========================================================
recent, frequent       champions, loyal, potential_loyalists, regulars
recent, infrequent     new, promising, recent, occasional
lapsed, frequent       at_risk, need_attention, about_to_sleep, slipping
lapsed, infrequent     hibernating, lost, dormant, gone (most recent first)
=====================  =========================================================

Contacts without any purchase get :data:`NO_ORDERS`. The result is deterministic for a given
data set and seed.

>>> model = fit_rfm(features)              # doctest: +SKIP
>>> model.k, sorted(model.names)           # doctest: +SKIP
(4, ['at_risk', 'champions', 'hibernating', 'new'])
>>> model.assign(features).value_counts()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

NO_ORDERS = "no_orders"
#: Names per centroid quadrant, best cluster of the quadrant first.
NAMES: dict[tuple[bool, bool], tuple[str, ...]] = {
    (True, True): ("champions", "loyal", "potential_loyalists", "regulars"),
    (True, False): ("new", "promising", "recent", "occasional"),
    (False, True): ("at_risk", "need_attention", "about_to_sleep", "slipping"),
    (False, False): ("hibernating", "lost", "dormant", "gone"),
}
SILHOUETTE_SAMPLE = 5000


def rfm_matrix(features: pd.DataFrame) -> pd.DataFrame:
    """The three raw RFM columns of buyers (frequency > 0), before standardising."""
    buyers = features[features["frequency"] > 0]
    return pd.DataFrame(
        {
            "recency": -np.log1p(buyers["recency_days"].astype("float64")),
            "frequency": np.log1p(buyers["frequency"].astype("float64")),
            "monetary": np.log1p(buyers["monetary_avg"].astype("float64").clip(lower=0)),
        },
        index=buyers.index,
    )


@dataclass
class RfmModel:
    """A fitted clustering: scaler, KMeans, and one name per cluster."""

    k: int
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    kmeans: object
    names: list[str]
    silhouettes: dict[int, float] = field(default_factory=dict)

    def standardise(self, matrix: pd.DataFrame) -> NDArray[np.float64]:
        return np.asarray((matrix.to_numpy() - self.mean) / self.scale, dtype=np.float64)

    def assign(self, features: pd.DataFrame) -> pd.Series:
        """An RFM name for every row of ``features`` (``no_orders`` for non-buyers)."""
        out = pd.Series(NO_ORDERS, index=features.index, dtype="object")
        matrix = rfm_matrix(features)
        if len(matrix):
            labels = self.kmeans.predict(self.standardise(matrix))  # type: ignore[attr-defined]
            out.loc[matrix.index] = [self.names[int(i)] for i in labels]
        return out

    def centroids(self) -> pd.DataFrame:
        """Centroids in standardised units, one row per named cluster."""
        centers = self.kmeans.cluster_centers_  # type: ignore[attr-defined]
        return pd.DataFrame(centers, columns=["recency", "frequency", "monetary"], index=self.names)


def name_clusters(centers: NDArray[np.float64]) -> list[str]:
    """Plain-word names for standardised centroids (rows: recency, frequency, monetary)."""
    names = [""] * len(centers)
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, (r, f, _m) in enumerate(centers):
        groups.setdefault((bool(r > 0), bool(f > 0)), []).append(i)
    for quadrant, members in groups.items():
        if quadrant == (False, False):  # sleeping customers: most recent first
            members.sort(key=lambda i: (-centers[i][0], i))
        else:
            members.sort(key=lambda i: (-float(np.sum(centers[i])), i))
        choices = NAMES[quadrant]
        for rank, i in enumerate(members):
            names[i] = choices[rank] if rank < len(choices) else f"{choices[-1]}_{rank + 1}"
    return names


def _search(
    data: NDArray[np.float64], candidates: Sequence[int], sample: NDArray[np.int64], seed: int
) -> tuple[tuple[float, int, Any] | None, dict[int, float]]:
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]
    from sklearn.metrics import silhouette_score  # type: ignore[import-untyped]

    best: tuple[float, int, Any] | None = None
    scores: dict[int, float] = {}
    for k in candidates:
        kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(data)
        labels = kmeans.labels_[sample]
        distinct = len(set(labels.tolist()))
        score = (
            float(silhouette_score(data[sample], labels)) if 1 < distinct < len(sample) else -1.0
        )
        scores[k] = score
        if best is None or score > best[0] + 1e-9:  # ties keep the smaller k
            best = (score, k, kmeans)
    return best, scores


def fit_rfm(
    features: pd.DataFrame, *, k_range: Sequence[int] = range(3, 9), seed: int = 0
) -> RfmModel:
    """Fit KMeans for each k in ``k_range`` and keep the best by silhouette."""
    from sklearn.cluster import KMeans

    matrix = rfm_matrix(features)
    raw = matrix.to_numpy(dtype=np.float64)
    mean = raw.mean(axis=0) if len(raw) else np.zeros(3)
    scale = raw.std(axis=0) if len(raw) else np.ones(3)
    scale = np.where(scale > 0, scale, 1.0)
    data = (raw - mean) / scale
    distinct = len(np.unique(data, axis=0)) if len(data) else 0
    candidates = [k for k in k_range if 2 <= k <= distinct - 1] or [max(1, min(distinct, 2))]
    rng = np.random.default_rng(seed)
    sample = (
        rng.choice(len(data), SILHOUETTE_SAMPLE, replace=False)
        if len(data) > SILHOUETTE_SAMPLE
        else np.arange(len(data))
    )
    with threadpool_limits(1):  # see models._fit: OpenMP spin-waits on a busy machine
        best, scores = _search(data, candidates, sample, seed) if len(data) else (None, {})
        if best is None:  # no buyers at all: one cluster at the origin
            kmeans = KMeans(n_clusters=1, n_init=1, random_state=seed).fit(np.zeros((1, 3)))
            best = (-1.0, 1, kmeans)
    _, k, kmeans = best
    names = name_clusters(np.asarray(kmeans.cluster_centers_))
    return RfmModel(k=k, mean=mean, scale=scale, kmeans=kmeans, names=names, silhouettes=scores)
