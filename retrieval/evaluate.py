"""Evaluation: pure metric functions, and `evaluate_run`, which asks the run's predictor (by the kind
recorded in run.json) for test-set locations and writes metrics.json, predictions.csv and
predictions.npz. A new method registers its predictor with `register_predictor(kind, "module:function")`.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval import GeolocError
from retrieval.geo import haversine_m
from retrieval.metrics import error_metrics, errors_m
from retrieval.util import atomic_write, atomic_write_json, import_target


# --- pure functions --------------------------------------------------------------------------------

def cell_accuracy(true_cell, pred_cell) -> float:
    true_cell, pred_cell = np.asarray(true_cell), np.asarray(pred_cell)
    if true_cell.shape != pred_cell.shape or true_cell.size == 0:
        raise ValueError("cell_accuracy: need two non-empty arrays of the same shape")
    return float(np.mean(true_cell == pred_cell))


def study_distance_m(true_cell, pred_cell, centroid_lat, centroid_lon) -> float:
    """The study's "distance": for each true cell, the mean centroid-to-centroid distance of its
    misclassified photos; then the mean over cells that have any (metres). NaN if nothing is wrong."""
    true_cell, pred_cell = np.asarray(true_cell), np.asarray(pred_cell)
    lat, lon = np.asarray(centroid_lat, float), np.asarray(centroid_lon, float)
    wrong = true_cell != pred_cell
    if not wrong.any():
        return float("nan")
    t, p = true_cell[wrong], pred_cell[wrong]
    d = haversine_m(lat[t], lon[t], lat[p], lon[p])
    return float(np.mean([d[t == c].mean() for c in np.unique(t)]))


# --- predictions and the run dispatch --------------------------------------------------------------

@dataclass
class Predictions:
    lat: np.ndarray
    lon: np.ndarray
    metrics: dict = field(default_factory=dict)  # method's own figures (cell accuracy, ...)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # extra predictions.csv columns
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # saved to predictions.npz


# kind -> "module:function" (imported on use, so baselines and retrieval do not import each other)
# or a callable; function(run_dir: Path, cfg: Config, test: Manifest) -> Predictions.
PREDICTORS: dict[str, str | Callable] = {
    "cells": "baselines.cells:predict",
    "regression": "baselines.regression:predict",
    "embedding": "retrieval.embedding:predict",
}


def register_predictor(kind: str, predictor: str | Callable) -> None:
    PREDICTORS[kind] = predictor


def _predictor(kind: str) -> Callable:
    target = PREDICTORS.get(kind)
    if target is None:
        raise GeolocError(f"run kind {kind!r} has no predictor (known: {', '.join(sorted(PREDICTORS))})")
    if callable(target):
        return target
    return import_target(target)


def read_run_info(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise GeolocError(f"{run_dir}: not a trained run (no run.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GeolocError(f"{path}: not valid JSON ({exc})") from None


def _write_predictions_csv(path: Path, test, pred: Predictions, err: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = list(pred.columns)
    w.writerow(["path", "true_lat", "true_lon", "pred_lat", "pred_lon", "error_m", *extra])
    for i, p in enumerate(test.paths):
        w.writerow([str(p), f"{test.lat[i]:.7f}", f"{test.lon[i]:.7f}", f"{pred.lat[i]:.7f}",
                    f"{pred.lon[i]:.7f}", f"{err[i]:.2f}", *(pred.columns[c][i] for c in extra)])
    atomic_write(path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"))


def _model_mb(run_dir: Path) -> float | None:
    from retrieval.util import load_checkpoint

    path = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    if not path.is_file():
        return None
    model = load_checkpoint(path).get("model", {})
    return round(sum(v.numel() * v.element_size() for v in model.values()) / 2**20, 2)


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> dict:
    """Locate the test photos with a trained run and write RUN/metrics.json, predictions.csv and
    (when the method has per-photo arrays, e.g. cell probabilities) predictions.npz."""
    from retrieval.config import load_run_config
    from retrieval.data import concat_manifests
    from retrieval.floors import floors
    from retrieval.train import load_data

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    cfg = load_run_config(run_dir)
    if data:
        cfg.data.train, cfg.data.test = str(data), ""
    splits = load_data(cfg)
    if "test" not in splits:
        raise GeolocError(f"{cfg.data.train}: no test photos (add test.csv or set data.test_fraction > 0)")
    test = splits["test"]
    t0 = time.perf_counter()
    pred = _predictor(info["kind"])(run_dir, cfg, test)
    seconds = time.perf_counter() - t0
    err = errors_m(pred.lat, pred.lon, test.lat, test.lon)
    train = info.get("train", {})
    metrics = {"kind": info["kind"], "data": str(cfg.data.train), **error_metrics(err), **pred.metrics,
               "backbone": f"{cfg.model.arch} {cfg.data.image_size}px"
                           + (" + cells prior" if "cell_prior" in pred.metrics else "")
                           + (f", {pred.metrics['answer']}" if "answer" in pred.metrics else ""),
               "weights": cfg.model.weights,
               "query_ms": round(1000 * seconds / len(test), 2), "model_mb": _model_mb(run_dir),
               "train_seconds": train.get("train_seconds"), "train_images_per_s": train.get("train_images_per_s"),
               "floors": floors(cfg, concat_manifests([splits[s] for s in ("train", "val") if s in splits]), test)}
    atomic_write_json(run_dir / "metrics.json", metrics)
    _write_predictions_csv(run_dir / "predictions.csv", test, pred, err)
    if pred.arrays:
        def write_npz(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a path
                np.savez_compressed(f, paths=np.array([str(x) for x in test.paths]), **pred.arrays)

        atomic_write(run_dir / "predictions.npz", write_npz)
    return metrics
