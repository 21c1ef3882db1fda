"""Give a trained embedding run a cells prior from a separately trained cells run on the same data.

    python scripts/attach_prior.py --embedding RUN --cells CELLS_RUN --out NEW_RUN
    geoloc evaluate --run NEW_RUN --data DATA

NEW_RUN is a copy of the embedding run (without its index and evaluation) with the cells run in
NEW_RUN/cells and the prior's weight chosen on the embedding run's validation views, as a run trained
with embedding.cell_prior_share has them (retrieval.answering.prior). The two runs' training times add up: the
budget is the user's to account for (benchmarks/RESULTS.md says how each figure was made).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from retrieval import GeolocError
from retrieval.methods.cell_prior import choose_and_record_weight
from retrieval.run import Run, load_run_config

SKIP = ("index", "metrics.json", "predictions.csv", "predictions.npz", Run.PRIOR_DIR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embedding", type=Path, required=True)
    ap.add_argument("--cells", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    for run, kind in ((a.embedding, "embedding"), (a.cells, "cells")):
        info = run / "run.json"
        if not info.is_file() or json.loads(info.read_text(encoding="utf-8")).get("kind") != kind:
            raise GeolocError(f"--{kind} {run}: not a trained {kind} run (run.json)")
    if a.out.exists():
        raise GeolocError(f"--out {a.out}: already exists")
    emb_cfg, cells_cfg = load_run_config(a.embedding), load_run_config(a.cells)
    if emb_cfg.data.train != cells_cfg.data.train:
        raise GeolocError(f"--cells {a.cells}: trained on {cells_cfg.data.train}, the embedding on {emb_cfg.data.train}")
    shutil.copytree(a.embedding, a.out, ignore=lambda d, names: [n for n in names if Path(d) == a.embedding
                                                                 and n in SKIP])
    shutil.copytree(a.cells, Run(a.out).prior_run.path, ignore=lambda d, names: [n for n in names if n in SKIP[1:4]])
    weight = choose_and_record_weight(emb_cfg, a.out)
    print(json.dumps(json.loads((a.out / Run.PRIOR_DIR / "prior.json").read_text(encoding="utf-8")), indent=1))
    print(f"weight {weight:g}; now: geoloc evaluate --run {a.out} --data {emb_cfg.data.train}")


if __name__ == "__main__":
    try:
        main()
    except GeolocError as exc:
        raise SystemExit(f"error: {exc}") from None
