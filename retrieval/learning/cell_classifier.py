"""A trained cells classifier as a model the rest of the system can ask: the cells baseline answers with
it, and an embedding run's cells prior (retrieval.answering.prior) reranks neighbours by it. The cell
table (RUN/grid.geojson) maps the grid's cells to the classifier's classes: only cells with training
photos are classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from retrieval.config import Config
from retrieval.data.grids import Grid
from retrieval.learning.checkpoints import load_trained
from retrieval.learning.inference import infer
from retrieval.learning.models import cell_classifier
from retrieval.learning.precision import resolve_precision
from retrieval.learning.transforms import test_transform
from retrieval.run import Run

TABLE_FIELDS = ("n_train", "class", "photo_lat", "photo_lon", "poly_lat", "poly_lon")


def cells_of_classes(table: dict[str, list]) -> np.ndarray:
    """Each class's cell."""
    return np.array([c for c, k in enumerate(table["class"]) if k is not None], dtype=np.int64)


def class_of_cell(table: dict[str, list]) -> np.ndarray:
    """Each cell's class, -1 for cells without training photos."""
    return np.array([-1 if k is None else k for k in table["class"]])


def load_classifier(run_dir: Path, cfg: Config) -> tuple[torch.nn.Module, Grid, dict[str, list]]:
    """A trained cells run's classifier (best.pt, else last.pt), grid and cell table."""
    grid, props = Grid.load(Path(run_dir) / Run.GRID)
    table = {k: [p.get(k) for p in props] for k in TABLE_FIELDS}
    model = cell_classifier("none", len(cells_of_classes(table)), arch=cfg.model.arch)
    load_trained(model, run_dir)
    return model, grid, table


def class_logits(model: torch.nn.Module, images: list[torch.Tensor], cfg: Config, desc: str = "predict"):
    return infer(model, images, test_transform(cfg.data), cfg.train.batch_size,
                 resolve_precision(cfg.train.precision), desc=desc)
