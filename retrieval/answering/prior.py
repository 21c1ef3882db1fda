"""A cells classifier as a prior over the embedding's neighbours (embedding.cell_prior_share > 0).

The two models fail on different photos: the embedding's wrong first neighbours lie anywhere in the
city, while the cells model knows the district (benchmarks/RESULTS.md). An embedding run with a share
of its time budget trains, after the embedding, a cells classifier on the same photos in RUN/cells
(the cells baseline's recipe: the run's `cells` grid and `train` settings). At query time each of the
query's index.cell_prior_candidates nearest database photos is scored by

    cosine similarity + weight x log p(the photo's cell | query)

and the best by that score vote. The weight is chosen on the validation views when training ends
(RUN/cells/prior.json); a run without validation views takes DEFAULT_WEIGHT.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from baselines.cells import class_logits, class_of_cell, load_classifier, train_cells
from retrieval import GeolocError
from retrieval.learning import distributed
from retrieval.config import Config, load_config, to_dict
from retrieval.run import Run, load_run_config, prepare_run_dir
from retrieval.methods.embedding import train_embedding
from retrieval.files import atomic_write_json
from retrieval.learning.inference import embed, load_embedding_model
from retrieval.metrics import errors_m
from retrieval.learning.precision import prepare_model
from retrieval.data.splits import load_data
from retrieval.learning.transforms import decode_images

WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
DEFAULT_WEIGHT = 0.05  # the best on London's validation views in session 6 (benchmarks/RESULTS.md)


def budgets(cfg: Config) -> tuple[Config, Config]:
    """(the embedding's config, the cells classifier's config): train.max_minutes split by the share."""
    share, minutes = cfg.embedding.cell_prior_share, cfg.train.max_minutes
    base = to_dict(cfg)
    return (load_config(None, [f"train.max_minutes={minutes * (1 - share)!r}"], base=base),
            load_config(None, [f"train.max_minutes={minutes * share!r}", "embedding.cell_prior_share=0.0"],
                        base=base))


def rerank(sims, ids, logp, db_class, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (queries, C) best first by cosine (id -1: none) re-sorted by cosine + weight x
    logp[query, db_class[id]]. logp: (queries, classes) log-probabilities; db_class: each database
    photo's class, -1 where its cell has none (scored as the query's least likely class). Returns the
    cosines and ids in the new order; missing candidates stay last."""
    sims, ids = np.asarray(sims, np.float64), np.asarray(ids)
    logp = np.concatenate([logp, logp.min(axis=1, keepdims=True)], axis=1)  # column -1: no class
    cls = np.where(ids >= 0, np.asarray(db_class)[np.maximum(ids, 0)], -1)
    score = sims + weight * np.take_along_axis(logp, np.where(cls < 0, logp.shape[1] - 1, cls), axis=1)
    order = np.argsort(-np.where(ids >= 0, score, -np.inf), axis=1, kind="stable")
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


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


@dataclass
class CellPrior:
    model: object
    cfg: Config  # the cells run's
    grid: object
    class_of_cell: np.ndarray  # -1 for cells without training photos
    weight: float

    @classmethod
    def from_folder(cls, folder: Path, weight: float) -> "CellPrior":
        cfg = load_run_config(folder)
        model, grid, table = load_classifier(folder, cfg)
        model = prepare_model(model, cfg.train.precision).eval()
        return cls(model, cfg, grid, class_of_cell(table), float(weight))

    @classmethod
    def load(cls, run_dir: Path) -> "CellPrior | None":
        """The prior an embedding run trained, or None when it has none."""
        folder = Path(run_dir) / Run.PRIOR_DIR
        if not (folder / Run.PRIOR).is_file():
            return None
        return cls.from_folder(folder, json.loads((folder / Run.PRIOR).read_text(encoding="utf-8"))["weight"])

    def classes(self, lat, lon) -> np.ndarray:
        return self.class_of_cell[self.grid.assign(np.asarray(lat), np.asarray(lon))]

    def log_probs(self, images, desc: str = "cells prior") -> np.ndarray:
        return torch.log_softmax(class_logits(self.model, images, self.cfg, desc).float(), dim=1).numpy()


def top_candidates(q: np.ndarray, db: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, ids) of each query's n most similar database rows, best first (exact)."""
    sims = q @ db.T
    n = min(n, db.shape[0])
    ids = np.argpartition(-sims, n - 1, axis=1)[:, :n]
    ids = np.take_along_axis(ids, np.argsort(-np.take_along_axis(sims, ids, 1), axis=1, kind="stable"), 1)
    return np.take_along_axis(sims, ids, 1), ids


def train_prior(cfg: Config, run_dir: Path, resume: bool) -> dict:
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


def check_complete(run_dir: Path, cfg: Config) -> None:
    """Raise when a run was configured with a prior whose training has not finished."""
    if cfg.embedding.cell_prior_share > 0 and not (Path(run_dir) / Run.PRIOR_DIR / Run.PRIOR).is_file():
        raise GeolocError(f"{run_dir}: embedding.cell_prior_share={cfg.embedding.cell_prior_share:g} but the "
                          f"cells prior was not trained to the end ({Run.PRIOR_DIR}/{Run.PRIOR} missing); "
                          "resume the training with --resume")


def train_embedding_and_prior(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """The embedding method's training (retrieval.methods): the embedding, then with
    embedding.cell_prior_share > 0 the cells prior in that share of the budget."""
    if cfg.embedding.cell_prior_share <= 0:
        return train_embedding(cfg, run_dir, resume)
    distributed.init()
    if distributed.world_size() > 1:
        raise GeolocError("embedding.cell_prior_share: one process only (the cells prior trains after the "
                          "embedding, on rank 0's data)")
    summary = train_embedding(budgets(cfg)[0], run_dir, resume)
    tqdm.write(f"== cells prior: {cfg.embedding.cell_prior_share:g} of the budget, in {Path(run_dir) / Run.PRIOR_DIR}")
    return record_in_run(Path(run_dir), summary, train_prior(cfg, Path(run_dir), resume))
