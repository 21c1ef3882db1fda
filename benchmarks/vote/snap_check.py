"""The weighted-mean vote's old rule (the weighted centre) against its new one (the neighbour nearest that
centre), and pool beside them, recomputed from stored runs' neighbours (predictions.npz) on their test views
(issue 41; benchmarks/RESULTS.md, session 22). Run from the repository root:
    .venv/bin/python benchmarks/vote/snap_check.py runs/zs_efficientnet_lite0_gem_128_london:runs/london_dense ..."""
import sys

import numpy as np

from retrieval.answering.index import load_index
from retrieval.answering.vote import vote, vote_weights, weighted_centre
from retrieval.data.manifests import read_manifest
from retrieval.metrics import errors_m


def summary(e: np.ndarray) -> str:
    return f"median {np.median(e):.0f} m, acc@25m {np.mean(e <= 25):.1%}, acc@100m {np.mean(e <= 100):.1%}"


def main(pairs: list[str], k: int = 10, radius_m: float = 50.0) -> None:
    for pair in pairs:
        run, data = pair.split(":")
        z = np.load(f"{run}/predictions.npz")
        ids, sims = z["neighbour_ids"][:, :k], z["similarities"][:, :k]
        _, side = load_index(f"{run}/index")
        test = read_manifest(f"{data}/test.csv")
        safe = np.maximum(ids, 0)
        lat = np.where(ids >= 0, side.lat[safe], np.nan)
        lon = np.where(ids >= 0, side.lon[safe], np.nan)
        old = weighted_centre(lat, lon, vote_weights(sims))
        new = vote(lat, lon, sims, "weighted_mean", radius_m)
        pool = vote(lat, lon, sims, "pool", radius_m)
        print(f"{run}\n  old weighted_mean: {summary(errors_m(*old, test.lat, test.lon))}"
              f"\n  new weighted_mean: {summary(errors_m(new.lat, new.lon, test.lat, test.lon))}, "
              f"median confidence {np.median(new.confidence):.2f}"
              f"\n  pool:              {summary(errors_m(pool.lat, pool.lon, test.lat, test.lon))}")


if __name__ == "__main__":
    main(sys.argv[1:])
