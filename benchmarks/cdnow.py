"""CDNOW: tidings' scores vs the BG/NBD model (``lifetimes``), same calibration data, same run.

    .venv/bin/pip install -e '.[bench]'      # lifetimes (ships CDNOW_master.txt)
    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/cdnow.py [--url ...] [--out FILE.json]

Steps, as in Fader, Hardie & Lee (2005), "Counting your customers the easy way":

1. ``CDNOW_master.txt`` (23,570 customers, 69,659 lines, 1997-01-01 .. 1998-06-30) becomes a
   contacts CSV and an orders CSV, imported through tidings' own importers
   (``crm.importer.import_contacts`` / ``import_orders``) into a fresh store (SQLite file by
   default). The data is not altered: several lines of a customer on one day stay several
   orders; the feature code counts them as one purchase day (one transaction in BG/NBD's sense).
2. Calibration: everything up to 1997-09-30 (39 weeks). Holdout: 1997-10-01 .. 1998-06-30
   (273 days = 39 weeks).
3. tidings: ``segments.ml.models.train`` with ``as_of=1997-09-30``, a 60-day horizon and four
   snapshots 30 days apart (features as of 1997-08-01, 07-02, 06-02, 05-03, labels in the 60
   days after each), with its own BG/NBD (``segments.ml.bgnbd``) as inputs, horizon curve and
   blend, the blend chosen on the inner split ending at 1997-09-30 (``segments.ml.blend``);
   predictions for 273 days. Also, same run: tidings' BG/NBD alone (fitted as of 1997-09-30 inside
   ``train``) and the GBM alone (``bgnbd=False``: 60-day prediction scaled by 273/60).
4. BG/NBD: ``lifetimes.BetaGeoFitter`` fitted on frequency / recency / T (weeks) computed from
   the same purchase days read back from the store; expected purchases in the next 39 weeks.
5. Per customer: MAE and RMSE of predicted vs actual holdout purchase days, and the AUC of each
   score for "buys again in the holdout". The holdout is read after tidings' models are trained.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tidings.config import Settings  # noqa: E402
from tidings.crm.db import make_engine, upgrade  # noqa: E402
from tidings.crm.importer import import_contacts, import_orders  # noqa: E402
from tidings.segments.ml.blend import expected as bgnbd_expected  # noqa: E402
from tidings.segments.ml.features import build_features, purchase_days  # noqa: E402
from tidings.segments.ml.models import TrainParams, end_of_day, train  # noqa: E402

CAL_END = datetime(1997, 9, 30, tzinfo=UTC)
HOLDOUT_END = datetime(1998, 6, 30, tzinfo=UTC)
HOLDOUT_DAYS = 273
PARAMS = TrainParams(horizon_days=60, snapshots=4, step_days=30, events=False)


def cdnow_file() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lifetimes is not installed: .venv/bin/pip install -e '.[bench]'")
    # lifetimes.datasets imports pkg_resources (gone from setuptools >= 81): read the file.
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"


def write_csvs(source: Path, folder: Path) -> tuple[Path, Path, int]:
    contacts, orders = folder / "contacts.csv", folder / "orders.csv"
    seen: set[str] = set()
    lines = 0
    with (
        source.open() as raw,
        contacts.open("w", newline="") as cf,
        orders.open("w", newline="") as of,
    ):
        cw, ow = csv.writer(cf), csv.writer(of)
        cw.writerow(["external_id"])
        ow.writerow(["order_id", "external_id", "total", "currency", "status", "placed_at"])
        for number, line in enumerate(raw, start=1):
            parts = line.split()
            if len(parts) != 4 or not parts[0].isdigit():
                continue  # the header line
            customer, day, _cds, dollars = parts
            external_id = f"cdnow-{customer}"
            if external_id not in seen:
                seen.add(external_id)
                cw.writerow([external_id])
            placed = f"{day[:4]}-{day[4:6]}-{day[6:]}"
            ow.writerow([f"cdnow-line-{number}", external_id, dollars, "USD", "completed", placed])
            lines += 1
    return contacts, orders, lines


def bgnbd_inputs(days: pd.DataFrame, cal_end: datetime) -> pd.DataFrame:
    """frequency (repeat purchase days), recency and T in weeks, per contact."""
    end = int((cal_end - datetime(1970, 1, 1, tzinfo=UTC)).days)
    cal = days[days["day"] <= end].groupby("contact_id")["day"]
    first, last, count = cal.min(), cal.max(), cal.size()
    return pd.DataFrame(
        {"frequency": count - 1, "recency": (last - first) / 7.0, "T": (end - first) / 7.0}
    )


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    return float(roc_auc_score(truth, score))


def errors(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    diff = predicted - actual
    return {
        "mae": float(np.mean(np.abs(diff))),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "predicted_total": float(predicted.sum()),
    }


def run(url: str | None, folder: Path) -> dict[str, Any]:
    from lifetimes import BetaGeoFitter

    timings: dict[str, float] = {}
    url = url or f"sqlite:///{folder / 'cdnow.db'}"
    engine = make_engine(url)
    upgrade(engine)
    contacts_csv, orders_csv, lines = write_csvs(cdnow_file(), folder)
    settings = Settings(database_url=url, import_batch_size=5000)
    started = time.perf_counter()
    c_report = import_contacts(contacts_csv, engine=engine, settings=settings)
    o_report = import_orders(orders_csv, engine=engine, settings=settings)
    timings["import_s"] = time.perf_counter() - started
    assert o_report.rejected == 0, o_report.to_dict()

    started = time.perf_counter()
    models = train(engine, as_of=CAL_END, params=PARAMS)
    cal_cut = end_of_day(CAL_END)
    features = build_features(engine, cutoff=cal_cut, events=False)
    buyers = features[features["frequency"] > 0]
    ours = models.predict(buyers, horizon_days=HOLDOUT_DAYS)
    timings["tidings_train_predict_s"] = time.perf_counter() - started
    own_bgnbd = bgnbd_expected(models.bgnbd, buyers, HOLDOUT_DAYS)

    started = time.perf_counter()
    gbm_models = train(engine, as_of=CAL_END, params=replace(PARAMS, bgnbd=False))
    gbm = gbm_models.predict(buyers, horizon_days=HOLDOUT_DAYS)
    timings["gbm_alone_train_predict_s"] = time.perf_counter() - started

    days = purchase_days(engine, until=end_of_day(HOLDOUT_END))
    started = time.perf_counter()
    summary = bgnbd_inputs(days, CAL_END).reindex(buyers.index)
    bg = BetaGeoFitter(penalizer_coef=0.0)
    f, r, t = (summary[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    bg.fit(f, r, t)
    theirs = np.asarray(
        bg.conditional_expected_number_of_purchases_up_to_time(HOLDOUT_DAYS / 7.0, f, r, t)
    )
    alive = np.asarray(bg.conditional_probability_alive(f, r, t))
    timings["bgnbd_fit_predict_s"] = time.perf_counter() - started

    cal_day = int((cal_cut - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(days=1))
    holdout = days[days["day"] > cal_day].groupby("contact_id").size()
    actual = holdout.reindex(buyers.index).fillna(0).to_numpy(dtype=float)
    again = (actual > 0).astype(int)
    expected = ours["expected_orders"].to_numpy()
    gbm_expected = gbm["expected_orders"].to_numpy()
    assert models.bgnbd is not None
    return {
        "customers": len(buyers),
        "lines": lines,
        "contacts_imported": c_report.inserted,
        "orders_imported": o_report.inserted,
        "calibration_purchase_days": int(summary["frequency"].sum() + len(summary)),
        "holdout_purchase_days": float(actual.sum()),
        "model_version": models.version,
        "tidings_blend": models.blend.describe(),
        "tidings_validation": models.metrics,
        "bgnbd_params": {k: float(v) for k, v in bg.params_.items()},
        "tidings_bgnbd_params": {
            "r": models.bgnbd.r,
            "alpha_weeks": models.bgnbd.alpha / 7.0,
            "a": models.bgnbd.a,
            "b": models.bgnbd.b,
        },
        "tidings": {
            **errors(expected, actual),
            "auc_expected_orders": auc(again, expected),
            "auc_one_minus_churn_risk": auc(again, 1 - ours["churn_risk"].to_numpy()),
        },
        "tidings_bgnbd_alone": {
            **errors(own_bgnbd, actual),
            "auc_expected_purchases": auc(again, own_bgnbd),
        },
        "tidings_gbm_alone": {
            **errors(gbm_expected, actual),
            "auc_expected_orders": auc(again, gbm_expected),
            "auc_one_minus_churn_risk": auc(again, 1 - gbm["churn_risk"].to_numpy()),
        },
        "bgnbd": {
            **errors(theirs, actual),
            "auc_expected_purchases": auc(again, theirs),
            "auc_p_alive": auc(again, alive),
        },
        "rfm_segments": ours["rfm_segment"].value_counts().to_dict(),
        "timings": timings,
        "store": engine.dialect.name,
    }


def table(result: dict[str, Any]) -> str:
    """The README's markdown table from a result."""
    rows = [
        (f"tidings ({result['tidings_blend']})", "tidings", "auc_expected_orders"),
        ("tidings' BG/NBD alone (`segments.ml.bgnbd`)", "tidings_bgnbd_alone", None),
        ("tidings GBM alone (`bgnbd=False`)", "tidings_gbm_alone", "auc_expected_orders"),
        ("BG/NBD (`lifetimes`)", "bgnbd", None),
    ]
    lines = [
        f"| model | MAE | RMSE | predicted total (actual {result['holdout_purchase_days']:,.0f})"
        ' | AUC "buys again in holdout" |',
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, key, auc_key in rows:
        r = result[key]
        score = r[auc_key or "auc_expected_purchases"]
        lines.append(
            f"| {label} | {r['mae']:.3f} | {r['rmse']:.3f} | {r['predicted_total']:,.0f} "
            f"| {score:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="store URL (default: a SQLite file in a temp folder)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.url, Path(tmp))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    print(table(result))
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
