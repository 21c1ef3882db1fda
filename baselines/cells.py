"""Cell classification, as in the study: a ResNet-50 picks the photo's cell (square or Voronoi), and
the photo is placed at the centroid of that cell's training photos (or of its polygon). The cell is the
most probable one (`cells.decision: argmax`, the study's), or by default the one with the most
probability within a radius of its centroid, the radius chosen on the validation views.

Classes are the cells that hold at least one training photo; empty cells stay in the grid (and in
grid.geojson, with n_train 0 and class null) but are never predicted. A test photo in an empty cell
therefore always counts as misclassified.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from baselines.cell_answer import DECISION_RADII_CELLS, centroids, choose_radius, mass_choice, pairwise_m
from retrieval.config import Config
from retrieval.data.grids import Grid, make_grid
from retrieval.data.manifests import Manifest
from retrieval.data.splits import load_data
from retrieval.files import atomic_write_json, matching_record, sha256_file
from retrieval.learning import distributed
from retrieval.learning.cell_classifier import cells_of_classes, class_logits, class_of_cell, load_classifier
from retrieval.learning.inference import infer
from retrieval.learning.models import cell_classifier
from retrieval.learning.precision import resolve_precision
from retrieval.learning.train import fit, seed_everything
from retrieval.learning.transforms import decode_images, test_transform, train_loader
from retrieval.metrics import Predictions, cell_accuracy, error_metrics, errors_m, study_distance_m
from retrieval.run import Run, trained_checkpoint



def cell_table(grid: Grid, train: Manifest) -> dict[str, list]:
    """Per cell: training-photo count, class index (None if empty), photo and polygon centroids."""
    cells = grid.assign(train.lat, train.lon)
    n = np.bincount(cells, minlength=len(grid))
    x, y = grid.projection.to_xy(train.lat, train.lon)
    sx, sy = np.bincount(cells, x, len(grid)), np.bincount(cells, y, len(grid))
    full = n > 0
    plat, plon = grid.projection.to_latlon(sx[full] / n[full], sy[full] / n[full])
    photo_lat, photo_lon = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    photo_lat[full], photo_lon[full] = plat, plon
    poly_lat, poly_lon = grid.polygon_centroids()
    cls = np.cumsum(full) - 1
    return {
        "n_train": [int(v) for v in n],
        "class": [int(cls[c]) if full[c] else None for c in range(len(grid))],
        "photo_lat": [float(v) if full[c] else None for c, v in enumerate(photo_lat)],
        "photo_lon": [float(v) if full[c] else None for c, v in enumerate(photo_lon)],
        "poly_lat": [float(v) for v in poly_lat],
        "poly_lon": [float(v) for v in poly_lon],
    }


def distance_labels(photo_xy: np.ndarray, class_xy: np.ndarray, smooth_m: float) -> np.ndarray:
    """(photos, classes) soft labels: softmax over classes of -distance(photo, class centroid) / smooth_m,
    metres in a planar projection."""
    d = pairwise_m(photo_xy, class_xy)
    z = -(d - d.min(axis=1, keepdims=True)) / smooth_m
    q = np.exp(z)
    return q / q.sum(axis=1, keepdims=True)


def predicted_cells(cell_of_class: np.ndarray, logits: torch.Tensor) -> np.ndarray:
    return cell_of_class[logits.argmax(dim=1).numpy()]


class CellsTask:
    kind = "cells"
    metric = "val_cell_acc"  # the study kept the epoch with the best validation accuracy
    maximize = True

    def __init__(self, cfg: Config, splits: dict[str, Manifest], grid: Grid):
        train = splits["train"]
        self.cfg, self.grid = cfg, grid
        self.table = cell_table(grid, train)
        self.cell_of_class = cells_of_classes(self.table)
        classes = class_of_cell(self.table)
        labels = torch.from_numpy(classes[grid.assign(train.lat, train.lon)])
        self.centroid_lat, self.centroid_lon = centroids(self.table, cfg.cells.centroid)
        self.photo_xy = self.class_xy = None
        if cfg.cells.label_smooth_m > 0:
            self.photo_xy = np.stack(grid.projection.to_xy(train.lat, train.lon), axis=1)
            self.class_xy = class_centroids(cfg, grid, self.table)[2]
        images = decode_images(train, cfg.data.resize, "decode train")
        self.train_loader = train_loader(images, labels, cfg.data, cfg.augment, cfg.train.batch_size,
                                         cfg.seed)
        self.model = cell_classifier(cfg.model.weights, len(self.cell_of_class), cfg.model.lock_factor,
                                     cfg.model.arch)
        self.val = splits.get("val")
        if self.val is not None:
            self.val_images = decode_images(self.val, cfg.data.resize, "decode val")
            self.val_cells = grid.assign(self.val.lat, self.val.lon)
            self.val_labels = torch.from_numpy(classes[self.val_cells])
        self.precision = resolve_precision(cfg.train.precision)

    def loss(self, model, batch) -> torch.Tensor:
        images, labels, idx = batch
        if self.photo_xy is None:
            return F.cross_entropy(model(images).float(), labels)
        soft = distance_labels(self.photo_xy[idx.numpy()], self.class_xy, self.cfg.cells.label_smooth_m)
        return F.cross_entropy(model(images).float(), torch.from_numpy(soft).float())

    def validate(self, model) -> dict[str, float]:
        if self.val is None:
            return {}
        logits = infer(model, self.val_images, test_transform(self.cfg.data), self.cfg.train.batch_size,
                       self.precision, desc="validate")
        pred = predicted_cells(self.cell_of_class, logits)
        err = errors_m(self.centroid_lat[pred], self.centroid_lon[pred], self.val.lat, self.val.lon)
        known = self.val_labels >= 0  # val photos in a cell without training photos have no class
        out = {"val_cell_acc": cell_accuracy(self.val_cells, pred),
               "val_median_error_m": float(np.median(err)), "val_mean_error_m": float(np.mean(err))}
        if known.any():
            out["val_loss"] = float(F.cross_entropy(logits[known], self.val_labels[known]))
        return out

    def info(self) -> dict:
        n = np.array(self.table["n_train"])
        return {"grid": self.grid.kind, "n_train": int(n.sum()), "n_cells": len(self.grid),
                "n_classes": len(self.cell_of_class),
                "empty_cells": int((n == 0).sum()),
                "images_per_cell": {"min": int(n.min()), "median": float(np.median(n)), "max": int(n.max())}}


def train_cells(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Build (or, resuming, reload) the grid, write it as GeoJSON, and train the classifier."""
    distributed.init()  # before the task, whose sampler takes this process's rank
    run_dir = Path(run_dir)
    splits = load_data(cfg)
    grid = Grid.loadRun(run_dir).grid[0] if resume else make_grid(cfg, splits["train"])
    seed_everything(cfg.seed)
    task = CellsTask(cfg, splits, grid)
    if distributed.is_main():
        grid.save(run_dir / Run.GRID, task.table)
    info = task.info()
    tqdm.write(f"{info['n_cells']} {grid.kind} cells, {info['empty_cells']} without training photos; "
               f"images per cell min {info['images_per_cell']['min']}, median "
               f"{info['images_per_cell']['median']:g}, max {info['images_per_cell']['max']}")
    return fit(task, cfg, run_dir, resume)


def class_centroids(cfg: Config, grid: Grid, table: dict[str, list]):
    """Per class: lat, lon of its centroid (cells.centroid) and x, y in the grid's projection."""
    lat, lon = centroids(table, cfg.cells.centroid)
    c = cells_of_classes(table)
    xy = np.stack(grid.projection.to_xy(lat[c], lon[c]), axis=1)
    return lat[c], lon[c], xy


def resolve_decision(run_dir: Path, cfg: Config, model, grid: Grid, table: dict[str, list]) -> dict:
    """cells.decision as a radius for mass_choice, with its record: for auto, chosen on the validation
    views once per checkpoint and kept in RUN/decision.json."""
    if cfg.cells.decision == "argmax":
        return {"decision": "argmax", "radius_m": 0.0}
    path = Path(run_dir) / Run.DECISION
    key = {"decision": cfg.cells.decision, "checkpoint_sha256": sha256_file(trained_checkpoint(run_dir)),
           "centroid": cfg.cells.centroid}
    rec = matching_record(path, key, lambda r: isinstance(r.get("radius_m"), (int, float)))
    if rec is not None:
        return rec
    val = load_data(cfg).get("val")
    if val is None or len(val) == 0:
        rec = {**key, "radius_m": 0.0, "why": "no validation views: the most probable cell"}
    else:
        lat, lon, xy = class_centroids(cfg, grid, table)
        logits = class_logits(model, decode_images(val, cfg.data.resize, "decision: decode val"), cfg,
                              "decision: classify val")
        radii = [f * cfg.cells.cell_size_m for f in DECISION_RADII_CELLS]
        radius, medians = choose_radius(torch.softmax(logits.float(), dim=1).numpy(), xy, lat, lon,
                                        val.lat, val.lon, radii)
        rec = {**key, "radius_m": radius, "val_median_error_m": medians, "val_views": len(val)}
    atomic_write_json(path, rec)
    return rec


def predict(run_dir: Path, cfg: Config, test: Manifest) -> Predictions:
    model, grid, table = load_classifier(run_dir, cfg)
    cell_of_class = cells_of_classes(table)
    decision = resolve_decision(run_dir, cfg, model, grid, table)
    logits = class_logits(model, decode_images(test, cfg.data.resize, "decode test"), cfg)
    probs = torch.softmax(logits.float(), dim=1).numpy()
    pred = cell_of_class[mass_choice(probs, class_centroids(cfg, grid, table)[2], decision["radius_m"])]
    true = grid.assign(test.lat, test.lon)
    lat, lon = centroids(table, cfg.cells.centroid)
    other = "polygon" if cfg.cells.centroid == "photos" else "photos"
    o_lat, o_lon = centroids(table, other)
    top = predicted_cells(cell_of_class, logits)
    metrics = {
        "decision": {k: v for k, v in decision.items() if k != "checkpoint_sha256"},
        "answer": (f"cell with most probability within {decision['radius_m']:g} m" if decision["radius_m"] > 0
                   else "most probable cell"),
        "argmax": {**error_metrics(errors_m(lat[top], lon[top], test.lat, test.lon)),
                   "cell_acc": cell_accuracy(true, top)},
        "cell_acc": cell_accuracy(true, pred),
        "study_distance_m": study_distance_m(true, pred, lat, lon),
        "centroid": cfg.cells.centroid,
        f"{other}_centroid": error_metrics(errors_m(o_lat[pred], o_lon[pred], test.lat, test.lon)),
        "n_cells": len(grid), "n_classes": len(cell_of_class),
        "test_in_empty_cells": int(sum(table["class"][c] is None for c in true)),
    }
    return Predictions(
        lat=lat[pred], lon=lon[pred], metrics=metrics,
        columns={"true_cell": true, "pred_cell": pred},
        arrays={"probabilities": probs.astype(np.float32),
                "class_cells": cell_of_class, "true_cell": true, "pred_cell": pred})
