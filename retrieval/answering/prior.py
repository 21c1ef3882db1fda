"""A cells classifier as a prior over the embedding's neighbours: the query side.

The two models fail on different photos: the embedding's wrong first neighbours lie anywhere in the
city, while the cells model knows the district (benchmarks/RESULTS.md). An embedding run with
embedding.cell_prior_share > 0 trains, after the embedding, a cells classifier in RUN/cells
(retrieval.methods.cell_prior). At query time each of the query's index.cell_prior_candidates nearest
database photos is scored by

    cosine similarity + weight x log p(the photo's cell | query)

and the best by that score vote; the weight was chosen on the validation views (RUN/cells/prior.json).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval import GeolocError
from retrieval.config import Config
from retrieval.learning.cell_classifier import class_logits, class_of_cell, load_classifier
from retrieval.learning.precision import prepare_model
from retrieval.run import Run, load_run_config



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
        folder = Run(run_dir).prior_run.path
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


def check_complete(run_dir: Path, cfg: Config) -> None:
    """Raise when a run was configured with a prior whose training has not finished."""
    if cfg.embedding.cell_prior_share > 0 and not Run(run_dir).prior.is_file():
        raise GeolocError(f"{run_dir}: embedding.cell_prior_share={cfg.embedding.cell_prior_share:g} but the "
                          f"cells prior was not trained to the end ({Run.PRIOR_DIR}/{Run.PRIOR} missing); "
                          "resume the training with --resume")


