"""``tidings models``: train the score models and write scores onto contacts.

    tidings models train [--as-of 2026-11-01] [--horizon-days 90] [--snapshots 3] [--json]
    tidings models score [--version VERSION] [--as-of ...] [--json]

Models are kept in ``TIDINGS_MODELS_DIR`` (default ``models/``); ``score`` uses the newest
unless ``--version`` names one. After scoring, segment rules can use ``score:`` leaves.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer

app = typer.Typer(
    help="Scores (scikit-learn): RFM clusters, churn risk and CLV on contacts.",
    no_args_is_help=True,
)

AS_OF_HELP = "Data cut-off, ISO date or time (default: now). Nothing after it is read."


def _console() -> Any:
    from tidings.cli import console

    return console


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    from tidings.crm.normalize import FieldError, parse_timestamp
    from tidings.errors import InputError

    try:
        return parse_timestamp(value)
    except FieldError as exc:
        raise InputError(f"--as-of: {exc}", hint="e.g. --as-of 2026-11-01") from None


@app.command("train")
def train_command(
    as_of: str | None = typer.Option(None, "--as-of", help=AS_OF_HELP),
    horizon_days: int | None = typer.Option(
        None, "--horizon-days", min=7, help="N: churn = no order in N days (default: setting)."
    ),
    snapshots: int = typer.Option(3, min=1, max=24, help="Training cut-offs, one horizon apart."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train churn, CLV and RFM models with a time split, and save them."""
    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.segments.ml.models import TrainParams, save, train

    settings = get_settings()
    params = TrainParams(
        horizon_days=horizon_days or settings.scores_horizon_days, snapshots=snapshots
    )
    models = train(make_engine(), as_of=_as_of(as_of), params=params)
    path = save(models, settings.models_dir)
    result = {
        "version": models.version,
        "as_of": models.as_of.isoformat(),
        "path": str(path),
        "rfm_segments": models.rfm.names,
        "metrics": models.metrics,
    }
    console = _console()
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"trained models {models.version} on data up to {models.as_of:%Y-%m-%d}")
    console.print(f"saved to {path}")
    console.print(f"RFM clusters (k={models.rfm.k}): {', '.join(models.rfm.names)}")
    m = models.metrics
    if m.get("churn_auc") is not None:
        console.print(
            f"out-of-time check on the last {params.horizon_days} days: churn AUC "
            f"{m['churn_auc']:.3f}, expected orders MAE {m['orders_mae']:.3f} "
            f"(naive {m['naive_orders_mae']:.3f})"
        )
    else:
        console.print("out-of-time check skipped: not enough history before the last horizon")
    if models.bgnbd is None:
        console.print("expected orders: GBM (BG/NBD off, or it could not be fitted)")
    else:
        console.print(
            f"expected orders: {models.blend.describe()}, longer horizons by the BG/NBD curve "
            f"(BG/NBD r={models.bgnbd.r:.3g}, alpha={models.bgnbd.alpha:.3g} days, "
            f"a={models.bgnbd.a:.3g}, b={models.bgnbd.b:.3g})"
        )


@app.command("score")
def score_command(
    version: str | None = typer.Option(None, help="Model version (default: the latest)."),
    as_of: str | None = typer.Option(None, "--as-of", help=AS_OF_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score every contact: churn_risk, clv_90d, rfm_segment, model version and time."""
    from tidings.config import get_settings
    from tidings.crm.db import make_engine
    from tidings.segments.ml.models import load
    from tidings.segments.ml.scoring import score_contacts

    models = load(get_settings().models_dir, version)
    report = score_contacts(make_engine(), models=models, as_of=_as_of(as_of) or datetime.now(UTC))
    console = _console()
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    console.print(
        f"scored {report.scored} contacts with models {report.version} in {report.seconds:.1f}s"
    )
    for name, n in sorted(report.segments.items(), key=lambda kv: -kv[1]):
        console.print(f"  {name:<22} {n}")
