"""The cells prior's training (retrieval.answering.prior is its query side): after the embedding, a
cells classifier trained on the same photos in RUN/cells with embedding.cell_prior_share of the time
budget (the cells baseline's recipe: the run's `cells` grid and `train` settings), then the weight of its
log-probability against the similarity chosen on the validation views (RUN/cells/prior.json); a run
without validation views takes DEFAULT_WEIGHT.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.answering.prior import CellPrior, rerank, top_candidates
from retrieval.config import Config, load_config, to_dict
from retrieval.data.splits import load_data
from retrieval.files import atomic_write_json
from retrieval.learning.inference import embed, load_embedding_model
from retrieval.learning.transforms import decode_images
from retrieval.metrics import errors_m
from retrieval.run import Run, prepare_run_dir

WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
DEFAULT_WEIGHT = 0.05  # the best on London's validation views in session 6 (benchmarks/RESULTS.md)


def budgets(cfg: Config) -> tuple[Config, Config]:
    """(the embedding's config, the cells classifier's config): train.max_minutes split by the share."""
    share, minutes = cfg.embedding.cell_prior_share, cfg.train.max_minutes
    base = to_dict(cfg)
    return (load_config(None, [f"train.max_minutes={minutes * (1 - share)!r}"], base=base),
            load_config(None, [f"train.max_minutes={minutes * share!r}", "embedding.cell_prior_share=0.0"],
                        base=base))


def choose_weight(sims, ids, logp, db_class, db_lat, db_lon, lat, lon, weights=WEIGHTS,
                  radius_m: float = 25.0) -> tuple[float, dict[float, float]]:
    """The weight whose reranked first neighbour lies within radius_m of the truth for the most queries
    (ties: the smaller weight), and that share for every weight tried."""
    recall = {}
    for w in weights:
        _, top = rerank(sims, ids, logp, db_class, w)
        first = top[:, 0]
        recall[float(w)] = float(np.mean(errors_m(db_lat[first], db_lon[first], lat, lon) <= radius_m))
    best = max(recall, key=lambda w: (recall[w], -w))
    return best, recall


def train_prior(cfg: Config, run_dir: Path, resume: bool, train_cells: Callable) -> dict:
    """Train the cells classifier in RUN/cells with the share of the budget, then choose the weight on
    the validation views."""
    folder = Path(run_dir) / Run.PRIOR_DIR
    cells_cfg = budgets(cfg)[1]
    resume = resume and Run(folder).last.is_file()
    prepare_run_dir(folder, cells_cfg)
    summary = train_cells(cells_cfg, folder, resume)
    return {**summary, "weight": choose_and_record_weight(cfg, Path(run_dir))}


def choose_and_record_weight(cfg: Config, run_dir: Path) -> float:
    """Choose the prior's weight on the validation views (database: the training photos, as in the
    embedding's own validation) and write it to RUN/cells/prior.json."""
    folder = run_dir / Run.PRIOR_DIR
    splits = load_data(cfg)
    train, val = splits["train"], splits.get("val")
    record = {"weight": DEFAULT_WEIGHT, "chosen_on": "default (no validation views)", "val_recall@1_25m": {}}
    if val is not None:
        model, _ = load_embedding_model(run_dir, cfg)
        db = embed(model, decode_images(train, cfg.data.resize, "decode train"), cfg, "prior: database")
        val_images = decode_images(val, cfg.data.resize, "decode val")
        sims, ids = top_candidates(embed(model, val_images, cfg, "prior: validation"), db,
                                   cfg.index.cell_prior_candidates)
        prior = CellPrior.from_folder(folder, 0.0)
        weight, recall = choose_weight(sims, ids, prior.log_probs(val_images), prior.classes(train.lat, train.lon),
                                       train.lat, train.lon, val.lat, val.lon)
        record = {"weight": weight, "chosen_on": f"{len(val)} validation views", "val_recall@1_25m": recall}
    atomic_write_json(folder / Run.PRIOR, record)
    return record["weight"]


def record_in_run(run_dir: Path, summary: dict, cells: dict) -> dict:
    """run.json's training summary for both networks: time and images of the two together (the method's
    budget), the embedding's own under "embedding", the prior's under "cell_prior"."""
    seconds = summary["train_seconds"] + cells["train_seconds"]
    images = summary["train_images"] + cells["train_images"]
    total = {**summary, "train_seconds": round(seconds, 3), "train_images": images,
             "train_images_per_s": round(images / seconds, 3) if seconds else None,
             "embedding": {k: summary[k] for k in ("train_seconds", "train_images", "train_images_per_s")},
             "cell_prior": cells}
    info = json.loads(Run(run_dir).info_file.read_text(encoding="utf-8"))
    atomic_write_json(Run(run_dir).info_file, {**info, "train": total})
    return total
