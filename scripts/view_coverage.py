"""How well a rendered data set's training views cover its test views: the share of test views with a
training view within R metres that faces within H degrees. Retrieval cannot place a query better
than its database covers it, so this bounds recall@N within R. Also printed: the error of always
guessing the mean training position, the score of a model that has learnt nothing.

    python scripts/view_coverage.py runs/demo/data --radius 25 --heading 45
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from retrieval.data.manifests import read_manifest
from retrieval.geo import haversine_m


def coverage(data: Path, radius_m: float, heading_deg: float) -> tuple[float, float]:
    train, test = read_manifest(data / "train.csv"), read_manifest(data / "test.csv")
    if train.heading is None or test.heading is None:
        raise SystemExit("error: both manifests need a heading column")
    near = haversine_m(test.lat[:, None], test.lon[:, None], train.lat[None], train.lon[None]) <= radius_m
    turn = np.abs((test.heading[:, None] - train.heading[None] + 180.0) % 360.0 - 180.0)
    return float(near.any(1).mean()), float((near & (turn <= heading_deg)).any(1).mean())


def constant_guess_m(data: Path) -> np.ndarray:
    """Test-view errors when every view is placed at the mean training position."""
    train, test = read_manifest(data / "train.csv"), read_manifest(data / "test.csv")
    return haversine_m(test.lat, test.lon, train.lat.mean(), train.lon.mean())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--radius", type=float, default=25.0)
    ap.add_argument("--heading", type=float, default=45.0)
    a = ap.parse_args()
    anywhere, facing = coverage(a.data, a.radius, a.heading)
    print(f"{a.data}: test views with a training view within {a.radius:g} m: {anywhere:.1%}; "
          f"also facing within {a.heading:g} degrees: {facing:.1%}")
    err = constant_guess_m(a.data)
    print(f"always guessing the mean training position: median error {np.median(err):.0f} m, "
          f"mean {err.mean():.0f} m")
