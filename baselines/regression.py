"""Coordinate regression, as in the study: ResNet-50 -> Linear(2048, 256) -> ReLU -> Linear(256, 2)
trained with MSE on lat/lon scaled to [0, 1] over the training photos' bounding box; optionally with a
cross-entropy over the cells grid beside it (`regression.cell_loss_weight`), or a mixture of Gaussians
over the coordinates trained by likelihood instead of the MSE (`regression.components`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retrieval import GeolocError
from retrieval.config import Config
from retrieval.data.grids import cell_classes_of
from retrieval.data.manifests import Manifest
from retrieval.data.splits import load_data
from retrieval.learning import distributed
from retrieval.learning.checkpoints import load_trained
from retrieval.learning.inference import infer
from retrieval.learning.models import MIXTURE_COLUMNS, coordinate_regressor, mixture_nll
from retrieval.learning.precision import resolve_precision
from retrieval.learning.train import fit, seed_everything
from retrieval.learning.transforms import decode_images, test_transform, train_loader
from retrieval.metrics import Predictions, errors_m
from retrieval.run import read_run_info


def bbox_of(lat, lon) -> dict[str, float]:
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    box = {"lat_min": float(lat.min()), "lat_max": float(lat.max()),
           "lon_min": float(lon.min()), "lon_max": float(lon.max())}
    if box["lat_max"] == box["lat_min"] or box["lon_max"] == box["lon_min"]:
        raise GeolocError("regression: the training photos span no area (all on one latitude or longitude)")
    return box


def scale(lat, lon, box: dict) -> np.ndarray:
    """(N, 2) targets in [0, 1] over the box: (lat, lon)."""
    return np.column_stack([(np.asarray(lat) - box["lat_min"]) / (box["lat_max"] - box["lat_min"]),
                            (np.asarray(lon) - box["lon_min"]) / (box["lon_max"] - box["lon_min"])])


def unscale(y, box: dict) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, float)
    return (box["lat_min"] + y[:, 0] * (box["lat_max"] - box["lat_min"]),
            box["lon_min"] + y[:, 1] * (box["lon_max"] - box["lon_min"]))


class RegressionTask:
    kind = "regression"
    metric = "val_median_error_m"
    maximize = False

    def __init__(self, cfg: Config, splits: dict[str, Manifest]):
        train = splits["train"]
        self.cfg = cfg
        self.box, self.n_train = bbox_of(train.lat, train.lon), len(train)
        targets = torch.from_numpy(scale(train.lat, train.lon, self.box)).float()
        self.cell_classes = 0
        if cfg.regression.cell_loss_weight > 0:  # the class rides along as a third target column
            cell_of_photo = cell_classes_of(cfg, train)
            self.cell_classes = int(cell_of_photo.max()) + 1
            targets = torch.cat([targets, torch.from_numpy(cell_of_photo).float()[:, None]], 1)
        images = decode_images(train, cfg.data.resize, "decode train")
        self.train_loader = train_loader(images, targets, cfg.data, cfg.augment, cfg.train.batch_size,
                                         cfg.seed)
        self.components = cfg.regression.components
        self.model = coordinate_regressor(cfg.model.weights, cfg.model.lock_factor, arch=cfg.model.arch,
                                          cell_classes=self.cell_classes, components=self.components)
        self.val = splits.get("val")
        if self.val is not None:
            self.val_images = decode_images(self.val, cfg.data.resize, "decode val")
            self.val_targets = torch.from_numpy(scale(self.val.lat, self.val.lon, self.box)).float()
        self.precision = resolve_precision(cfg.train.precision)

    def loss(self, model, batch) -> torch.Tensor:
        images, targets, _ = batch
        out = model(images).float()
        if self.components == 1:
            loss, logits = F.mse_loss(out[:, :2], targets[:, :2]), out[:, 2:]
        else:
            end = 2 + MIXTURE_COLUMNS * self.components
            loss, logits = mixture_nll(out[:, 2:end], self.components, targets[:, :2]), out[:, end:]
        if self.cell_classes:
            loss = loss + self.cfg.regression.cell_loss_weight * F.cross_entropy(logits, targets[:, 2].long())
        return loss

    def validate(self, model) -> dict[str, float]:
        if self.val is None:
            return {}
        y = infer(model, self.val_images, test_transform(self.cfg.data), self.cfg.train.batch_size,
                  self.precision, desc="validate")[:, :2]
        lat, lon = unscale(y.numpy(), self.box)
        err = errors_m(lat, lon, self.val.lat, self.val.lon)
        return {"val_loss": float(F.mse_loss(y, self.val_targets)),
                "val_median_error_m": float(np.median(err)), "val_mean_error_m": float(np.mean(err))}

    def info(self) -> dict:
        return {"bbox": self.box, "n_train": self.n_train, "cell_loss_weight": self.cfg.regression.cell_loss_weight,
                "cell_classes": self.cell_classes, "components": self.components}


def train_regression(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    distributed.init()  # before the task, whose sampler takes this process's rank
    splits = load_data(cfg)
    seed_everything(cfg.seed)
    task = RegressionTask(cfg, splits)
    if resume and read_run_info(run_dir).get("bbox") != task.box:
        raise GeolocError(f"{run_dir}: the training photos changed since this run started (bounding box differs)")
    return fit(task, cfg, run_dir, resume)


def predict(run_dir: Path, cfg: Config, test: Manifest) -> Predictions:
    info = read_run_info(run_dir)
    box = info.get("bbox")
    if not box:
        raise GeolocError(f"{run_dir}/run.json: no bbox recorded for this regression run")
    model = coordinate_regressor("none", arch=cfg.model.arch, cell_classes=info.get("cell_classes") or 0,
                                 components=info.get("components") or 1)
    load_trained(model, run_dir)
    images = decode_images(test, cfg.data.resize, "decode test")
    y = infer(model, images, test_transform(cfg.data), cfg.train.batch_size,
              resolve_precision(cfg.train.precision), desc="predict")[:, :2]
    lat, lon = unscale(y.numpy(), box)
    # Outside [0, 1] the model placed the photo beyond every training photo: worth knowing.
    outside = float(((y.numpy() < 0) | (y.numpy() > 1)).any(axis=1).mean())
    return Predictions(lat=lat, lon=lon, metrics={"bbox": box, "outside_bbox_fraction": outside})
