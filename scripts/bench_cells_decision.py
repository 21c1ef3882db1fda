"""The cells baseline's answer rule (cells.decision) on evaluated cells runs: for each run, the study's
most probable cell against the radius chosen on the validation views, on the same test views, with 95%
confidence intervals by a paired bootstrap over the test views; and, given two runs evaluated on the same
views, the second against the first under each rule.

    .venv/bin/python scripts/bench_cells_decision.py runs/bench_london_dense/methods/cells_voronoi \
        runs/bench_london_dense/methods/cells_voronoi_smooth60

Reads each run's predictions.csv, predictions.npz, grid.geojson and metrics.json (`geoloc evaluate` with
cells.decision auto writes them); runs nothing. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from retrieval.data.grids import Grid
from retrieval.geo import haversine_m
from retrieval.metrics import paired_bootstrap
from retrieval.run import load_run_config

WITHIN_M = 325.0  # London's target: half the constant guess's 651 m


def errors(run: Path) -> dict[str, np.ndarray]:
    """Per test view: the error of the answer evaluated (the decision) and of the most probable cell."""
    if load_run_config(run).cells.centroid != "photos":
        raise SystemExit(f"{run}: cells.centroid is not photos; this script reads the photo centroids")
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lat, lon = (np.array([float(r[k]) for r in rows]) for k in ("true_lat", "true_lon"))
    z = np.load(run / "predictions.npz")
    _, props = Grid.load(run / "grid.geojson")
    top = z["class_cells"][z["probabilities"].argmax(axis=1)]
    c_lat = np.array([props[c]["photo_lat"] for c in top], float)
    c_lon = np.array([props[c]["photo_lon"] for c in top], float)
    return {"decision": np.array([float(r["error_m"]) for r in rows]),
            "argmax": haversine_m(lat, lon, c_lat, c_lon), "paths": np.array([r["path"] for r in rows])}


def median_diff_ci(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """median(a) - median(b) over paired views and its 95% interval, views resampled alike for both."""
    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    d = np.median(a[idx], axis=1) - np.median(b[idx], axis=1)
    return float(np.median(a) - np.median(b)), float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))


def fmt(t: tuple[float, float, float], scale: float = 1.0, unit: str = "") -> str:
    return f"{t[0] * scale:+.1f}{unit} ({t[1] * scale:+.1f} to {t[2] * scale:+.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    errs = {r: errors(r) for r in args.runs}
    print(f"| run | radius (m) | median argmax -> decision (m) | difference (95% CI) | within {WITHIN_M:g} m "
          "argmax -> decision | difference, points (95% CI) |")
    print("|---|---:|---|---|---|---|")
    for r, e in errs.items():
        radius = json.loads((r / "metrics.json").read_text(encoding="utf-8"))["decision"]["radius_m"]
        a, d = e["argmax"], e["decision"]
        hit = paired_bootstrap(d <= WITHIN_M, a <= WITHIN_M)
        print(f"| {r.name} | {radius:g} | {np.median(a):.0f} -> {np.median(d):.0f} | {fmt(median_diff_ci(d, a), unit=' m')} "
              f"| {np.mean(a <= WITHIN_M):.1%} -> {np.mean(d <= WITHIN_M):.1%} | {fmt(hit, 100)} |")
    if len(args.runs) == 2:
        (ra, ea), (rb, eb) = errs.items()
        if not np.array_equal(ea["paths"], eb["paths"]):
            raise SystemExit(f"{ra} and {rb} were evaluated on different test views")
        print(f"\n{rb.name} against {ra.name}, the same test views:\n")
        print(f"| rule | median difference (95% CI) | within {WITHIN_M:g} m, points (95% CI) |")
        print("|---|---|---|")
        for rule in ("argmax", "decision"):
            a, b = ea[rule], eb[rule]
            print(f"| {rule} | {fmt(median_diff_ci(b, a), unit=' m')} | "
                  f"{fmt(paired_bootstrap(b <= WITHIN_M, a <= WITHIN_M), 100)} |")


if __name__ == "__main__":
    main()
