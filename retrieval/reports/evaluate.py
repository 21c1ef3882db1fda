"""Evaluation of a trained run: `evaluate_run` asks the run's method (retrieval.methods, by the kind
recorded in run.json) for test-set locations, scores them beside the floors, and writes metrics.json,
predictions.csv and predictions.npz. The metrics themselves are pure functions (retrieval.metrics).
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.data.manifests import concat_manifests
from retrieval.data.splits import load_data
from retrieval.files import atomic_write, atomic_write_json
from retrieval.learning.checkpoints import load_checkpoint
from retrieval.methods import predictor
from retrieval.metrics import Predictions, error_metrics, errors_m
from retrieval.reports.floors import floors
from retrieval.run import Run, load_run_config, read_run_info, trained_checkpoint


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
    path = trained_checkpoint(run_dir)
    if not path.is_file():
        return None
    model = load_checkpoint(path).get("model", {})
    return round(sum(v.numel() * v.element_size() for v in model.values()) / 2**20, 2)


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> dict:
    """Locate the test photos with a trained run and write RUN/metrics.json, predictions.csv and
    (when the method has per-photo arrays, e.g. cell probabilities) predictions.npz."""
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
    pred = predictor(info["kind"])(run_dir, cfg, test)
    seconds = time.perf_counter() - t0
    err = errors_m(pred.lat, pred.lon, test.lat, test.lon)
    train = info.get("train", {})
    metrics = {"kind": info["kind"], "data": str(cfg.data.train), **error_metrics(err), **pred.metrics,
               "backbone": f"{cfg.model.arch} {cfg.data.image_size}px"
                           + (" + cells prior" if "cell_prior" in pred.metrics else "")
                           + (f", {pred.metrics['answer']}" if "answer" in pred.metrics else ""),
               "weights": cfg.model.weights, **({"zero_shot": True} if info.get("zero_shot") else {}),
               "query_ms": round(1000 * seconds / len(test), 2), "model_mb": _model_mb(run_dir),
               "train_seconds": train.get("train_seconds"), "train_images_per_s": train.get("train_images_per_s"),
               "floors": floors(cfg, concat_manifests([splits[s] for s in ("train", "val") if s in splits]), test,
                                 start=not info.get("zero_shot"))}
    atomic_write_json(Run(run_dir).metrics, metrics)
    _write_predictions_csv(Run(run_dir).predictions_csv, test, pred, err)
    if pred.arrays:
        def write_npz(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a path
                np.savez_compressed(f, paths=np.array([str(x) for x in test.paths]), **pred.arrays)

        atomic_write(Run(run_dir).predictions_npz, write_npz)
    return metrics
