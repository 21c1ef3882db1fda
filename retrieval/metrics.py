"""Localisation metrics as pure functions: distances in, numbers out; and the predictions every method
hands to evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retrieval.geo import haversine_m

ACCURACY_THRESHOLDS_M = (25.0, 100.0, 250.0, 1000.0, 5000.0)
RECALL_NS = (1, 5, 10)


def errors_m(pred_lat, pred_lon, true_lat, true_lon) -> np.ndarray:
    return haversine_m(pred_lat, pred_lon, true_lat, true_lon)


def error_metrics(errors, thresholds=ACCURACY_THRESHOLDS_M) -> dict[str, float]:
    """Mean and median error and the fraction of photos located within each threshold (metres)."""
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        raise ValueError("error_metrics: no errors given")
    out = {"n": int(e.size), "mean_error_m": float(e.mean()), "median_error_m": float(np.median(e))}
    for t in thresholds:
        out[f"acc@{t:g}m"] = float(np.mean(e <= t))
    return out


def recall_at_n(neighbour_dists_m, ns=RECALL_NS, radius_m: float = 25.0) -> dict[str, float]:
    """Retrieval recall@N: share of queries with at least one of their top N neighbours within radius.

    neighbour_dists_m: (queries, k) distances from each query's true position to its ranked neighbours.
    """
    d = np.asarray(neighbour_dists_m, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError("recall_at_n: expected a non-empty (queries, k) array")
    hit = d <= radius_m
    first_hit = np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf)
    return {f"recall@{n}_{radius_m:g}m": float(np.mean(first_hit < n)) for n in ns}


def paired_bootstrap(a, b, n: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b over paired samples (e.g. one hit rate per test view for two methods) and its
    `level` confidence interval by bootstrap: test views are resampled with the same indices for both.

    Given (seeds, views) arrays (seed s of one arm paired with seed s of the other), each resample draws
    the seeds and the test views, so the interval holds the spread between training runs as well."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim not in (1, 2) or d.size == 0:
        raise ValueError("paired_bootstrap: expected two non-empty arrays of the same shape, (views,) or (seeds, views)")
    rng = np.random.default_rng(seed)
    if d.ndim == 1:
        means = d[rng.integers(0, d.size, (n, d.size))].mean(axis=1)
    else:
        s, v = d.shape
        means = np.array([d[rng.integers(0, s, s)][:, rng.integers(0, v, v)].mean() for _ in range(n)])
    tail = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


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


@dataclass
class Predictions:
    lat: np.ndarray
    lon: np.ndarray
    metrics: dict = field(default_factory=dict)  # method's own figures (cell accuracy, ...)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # extra predictions.csv columns
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # saved to predictions.npz


def knn_floor(db_feats: np.ndarray, q_feats: np.ndarray, db_lat, db_lon, q_lat, q_lon, k: int = 10) -> dict:
    """Place each query at its most similar training photo (inner product); recall@1/5/10 within 25 m."""
    sims = np.asarray(q_feats, np.float32) @ np.asarray(db_feats, np.float32).T
    k = min(k, sims.shape[1])
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    nb = errors_m(np.asarray(db_lat)[ids], np.asarray(db_lon)[ids], np.asarray(q_lat)[:, None],
                  np.asarray(q_lon)[:, None])
    return {**error_metrics(nb[:, 0]), **recall_at_n(nb, (1, 5, 10), 25.0)}
