"""What a method must beat, on the same test views: figures that need no learning.

- constant guess: every query placed at the mean training position;
- thumbnail k-NN: the nearest training photo by 16 x 16 colour thumbnails (zero-mean, unit-norm);
- untrained k-NN: the nearest training photo by the run's network with random weights;
- start k-NN: where a run from pretrained weights (ImageNet, a pretraining run) started: the nearest
  training photo by the network it trained from, so a fine-tuned figure shows what training added;
- oracle: the nearest training view by ground position, the best any k-NN answer can do; with
  headings, also the share of queries with a training view within 25 m facing within 45 degrees.

The first functions are pure (arrays in, figures out); `floors` decodes and embeds.
"""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from tqdm import tqdm

from retrieval import GeolocError
from retrieval.answering.run_index import EMBED_CHUNK
from retrieval.choices import HUB
from retrieval.geo import LocalProjection, heading_gap_deg
from retrieval.learning.inference import embed
from retrieval.learning.models import embedding_net
from retrieval.learning.precision import prepare_model
from retrieval.learning.transforms import decode_images
from retrieval.metrics import error_metrics, errors_m, knn_floor

RADIUS_M, FACING_DEG, THUMB = 25.0, 45.0, 16


def constant_guess(db_lat, db_lon, q_lat, q_lon) -> dict:
    """Every query at the mean training position."""
    lat, lon = np.full(len(q_lat), np.mean(db_lat)), np.full(len(q_lat), np.mean(db_lon))
    err = errors_m(lat, lon, q_lat, q_lon)
    return {**error_metrics(err), "recall@1_25m": float(np.mean(err <= RADIUS_M))}


def oracle(db_lat, db_lon, q_lat, q_lon, db_heading=None, q_heading=None) -> dict:
    """The nearest training view by ground position: its distance (as an error), the share of queries
    within 25 m of any training view, and with headings the share with one within 25 m facing within
    45 degrees."""
    db_lat, db_lon, q_lat, q_lon = (np.asarray(a, float) for a in (db_lat, db_lon, q_lat, q_lon))
    proj = LocalProjection.for_points(np.r_[db_lat, q_lat], np.r_[db_lon, q_lon])
    tree = cKDTree(np.column_stack(proj.to_xy(db_lat, db_lon)))
    qxy = np.column_stack(proj.to_xy(q_lat, q_lon))
    d, _ = tree.query(qxy)
    out = {**error_metrics(d), "recall@1_25m": float(np.mean(d <= RADIUS_M))}
    if db_heading is not None and q_heading is not None and np.isfinite(db_heading).all() \
            and np.isfinite(q_heading).all():
        near = tree.query_ball_point(qxy, RADIUS_M)
        facing = [bool(len(n)) and bool((heading_gap_deg(np.asarray(db_heading)[n], q_heading[i]) <= FACING_DEG).any())
                  for i, n in enumerate(near)]
        out["facing_25m_45deg"] = float(np.mean(facing))
    return out


def thumbnails(images: list[torch.Tensor], side: int = THUMB) -> np.ndarray:
    """(N, 3 * side * side) zero-mean, unit-norm colour thumbnails of uint8 CHW images (centre square)."""
    out = []
    for im in images:
        s = min(im.shape[-2:])
        top, left = (im.shape[-2] - s) // 2, (im.shape[-1] - s) // 2
        sq = im[:, top:top + s, left:left + s].float()[None]
        t = F.interpolate(sq, size=(side, side), mode="area").flatten()
        t = t - t.mean()
        out.append((t / t.norm().clamp(min=1e-6)).numpy())
    return np.stack(out) if out else np.zeros((0, 3 * side * side), np.float32)


# --- the floors of a run ---------------------------------------------------------------------------

_CACHE: dict[str, dict] = {}


def _key(cfg, db, test) -> str:
    h = hashlib.sha256()
    for p in [*db.paths, "|", *test.paths]:
        h.update(f"{p}\n".encode())
    m, d = cfg.model, cfg.data
    h.update(f"{m.arch}|{m.weights}|{m.embed_dim}|{m.pooling}|{d.resize}|{d.image_size}|{cfg.seed}|{cfg.train.precision}".encode())
    return h.hexdigest()


def _network(cfg, weights: str, what: str):
    """The run's network with these weights, before any training; None (with a warning) where the
    weights cannot be had, e.g. ImageNet's offline: the other floors still stand."""
    torch.manual_seed(cfg.seed)  # the same network every time
    m = cfg.model
    try:
        return prepare_model(embedding_net(weights, m.embed_dim, 0.0, m.arch, m.pooling), cfg.train.precision)
    except GeolocError as exc:
        warnings.warn(f"floors: no {what}-network k-NN ({exc})", stacklevel=2)
        return None


def _describe(photos, cfg, nets: dict, what: str, chunk: int = EMBED_CHUNK) -> dict[str, np.ndarray]:
    """Thumbnails and each network's descriptors of the photos, decoded a chunk at a time (a database
    of 10^5 photos at 224 px would not fit in memory at once)."""
    parts: dict[str, list] = {"thumbnail_knn": [], **{k: [] for k in nets}}
    with tqdm(total=len(photos), desc=f"floors: {what}", unit="img") as bar:
        for start in range(0, len(photos), chunk):
            images = decode_images(photos.subset(np.arange(start, min(len(photos), start + chunk))),
                                   cfg.data.resize, "decode")
            parts["thumbnail_knn"].append(thumbnails(images))
            for k, net in nets.items():
                parts[k].append(embed(net, images, cfg, k.removesuffix("_knn")))
            bar.update(len(images))
    return {k: np.concatenate(v) for k, v in parts.items()}


def floors(cfg, db, test, start: bool = True) -> dict:
    """Every floor and the oracle for test queries against database db (Manifests), with the run's
    backbone for the untrained (and, from pretrained weights, the start's) k-NN; start=False leaves the
    start out (a run that never trained is its own start). Cached per process: a benchmark evaluating
    several methods on the same views computes them once."""
    key = _key(cfg, db, test) + str(start)
    if key in _CACHE:
        return _CACHE[key]
    geo = (db.lat, db.lon, test.lat, test.lon)
    nets = {}
    if cfg.model.arch != HUB:  # a hub model has no random-weights version of its own
        nets["untrained_knn"] = _network(cfg, "none", "untrained")
    if cfg.model.weights != "none" and start:
        nets["start_knn"] = _network(cfg, cfg.model.weights, "start")
    nets = {k: v for k, v in nets.items() if v is not None}
    d, q = _describe(db, cfg, nets, "database"), _describe(test, cfg, nets, "test")
    out = {"constant_guess": constant_guess(*geo), "oracle": oracle(*geo, db.heading, test.heading)}
    for k in d:
        out[k] = knn_floor(d[k], q[k], *geo)
        if k in nets:
            out[k].update(arch=cfg.model.arch, weights="none" if k == "untrained_knn" else cfg.model.weights)
    _CACHE[key] = out
    return out
