"""Prefect flow: train the score models, then score every contact (weekly, see prefect.yaml).

Thin wiring (STYLE.md 7): each task calls one function of ``segments.ml`` and passes small
values (a version string, a report dict) to the next; no caching on these side-effecting tasks.

    python -m tidings.flows.scores                      # one run now, on TIDINGS_DATABASE_URL
    prefect deploy --name scores-weekly                 # the weekly deployment

>>> train_and_score(as_of="2026-11-01")                # doctest: +SKIP
{'version': '...', 'scored': 305, ...}
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


def _as_of(value: str | None) -> Any:
    from tidings.crm.normalize import parse_timestamp

    return parse_timestamp(value) if value else None


@task(name="features", cache_policy=NO_CACHE)
def features_task(as_of: str | None = None) -> dict[str, int]:
    """Check the store has order history: contacts and buyers as of the cut-off."""
    from datetime import UTC, datetime

    from tidings.crm.db import make_engine
    from tidings.segments.ml.features import build_features

    frame = build_features(make_engine(), cutoff=_as_of(as_of) or datetime.now(UTC))
    return {"contacts": len(frame), "buyers": int((frame["frequency"] > 0).sum())}


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    as_of: str | None = None, horizon_days: int | None = None, snapshots: int = 3
) -> str:
    """Train and save the models; returns the model version."""
    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.segments.ml.models import TrainParams, save, train

    settings = get_settings()
    params = TrainParams(
        horizon_days=horizon_days or settings.scores_horizon_days, snapshots=snapshots
    )
    models = train(make_engine(), as_of=_as_of(as_of), params=params)
    save(models, settings.models_dir)
    return models.version


@task(name="score", cache_policy=NO_CACHE)
def score_task(version: str, as_of: str | None = None) -> dict[str, Any]:
    """Write scores of ``version`` onto every contact; returns the score report."""
    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.segments.ml.models import load
    from tidings.segments.ml.scoring import score_contacts

    models = load(get_settings().models_dir, version)
    return score_contacts(make_engine(), models=models, as_of=_as_of(as_of)).to_dict()


@flow(name="train-and-score")
def train_and_score(
    as_of: str | None = None, horizon_days: int | None = None, snapshots: int = 3
) -> dict[str, Any]:
    """Features check -> train -> score, as of ``as_of`` (ISO date; default now)."""
    summary = features_task(as_of)
    version = train_task(as_of, horizon_days, snapshots)
    report = score_task(version, as_of)
    return {**report, **summary}


if __name__ == "__main__":
    print(train_and_score())
