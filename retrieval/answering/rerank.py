"""A run's geometric rerank (index.rerank): the setting it answers with, chosen once per checkpoint and
database on the validation views (RUN/rerank.json) for auto, and the check of queries' neighbours against
the database's local features (RUN/index/local, written by `geoloc index build`). The pure parts are
retrieval.answering.geometry; the features, retrieval.answering.local_features."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from retrieval import GeolocError
from retrieval.answering.geometry import AUTO_KS, OFF, RERANK_RULES, Setting, choose, inlier_table, label, rescore
from retrieval.answering.index import nearest_of
from retrieval.answering.local_features import LocalStore, extract
from retrieval.answering.run_index import EMBEDDINGS, holds, place_setting, training_database
from retrieval.config import Config
from retrieval.data.manifests import load_rgb
from retrieval.data.splits import load_data
from retrieval.files import atomic_write_json, matching_record
from retrieval.learning.inference import embed
from retrieval.learning.transforms import decode_images
from retrieval.run import Run

RADIUS_M = 25.0  # auto keeps the setting with the best R@1 within this distance on the validation views


def local_store(run_dir: Path, cfg: Config) -> LocalStore | None:
    """The database's local features, when the run reranks; a one-line error says how to make them."""
    if cfg.index.rerank == "off":
        return None
    folder = Run(run_dir).local_dir
    if not folder.is_dir():
        raise GeolocError(f"{run_dir}: index.rerank={cfg.index.rerank} needs the database's local features "
                          f"({folder} is missing): run geoloc index build --run {run_dir} --set "
                          f"index.rerank={cfg.index.rerank}")
    return LocalStore(folder)


def resolve_rerank(run_dir: Path, cfg: Config, model, side, store: LocalStore | None,
                   choose: bool = True) -> tuple[Setting, dict]:
    """index.rerank off / on (rerank.k, rerank.weight) / auto: the setting with the best R@1 within 25 m on
    the validation views (searched against the training photos, as the vote is chosen), kept in
    RUN/rerank.json for this checkpoint and these features. choose False (answering: the run alone):
    without a record, off."""
    mode = cfg.index.rerank
    if mode == "off" or store is None:
        return OFF, {}
    if mode == "on":
        return Setting(cfg.rerank.k, cfg.rerank.weight), {}
    key = {"checkpoint_sha256": side.checkpoint_sha256, "place_mean": list(place_setting(cfg)),
           "features": {k: store.record.get(k) for k in ("photos_sha256", "size", "keypoints")},
           "ratio": cfg.rerank.ratio, "rules": RERANK_RULES}
    path = Run(run_dir).rerank
    rec = matching_record(path, key, lambda r: isinstance(r.get("k"), int) and isinstance(r.get("weight"), float))
    if rec is None and not choose:
        warnings.warn(f"{run_dir}: index.rerank=auto, but no setting was chosen for this checkpoint ({Run.RERANK}): "
                      f"answering without the rerank; `geoloc index build --run {run_dir}` chooses it", stacklevel=3)
        return OFF, {}
    if rec is None:
        rec = {**key, **_choose_on_validation(run_dir, cfg, model, side, store)}
        atomic_write_json(path, rec)
    return Setting(rec["k"], rec["weight"]), rec


def _choose_on_validation(run_dir: Path, cfg: Config, model, side, store: LocalStore) -> dict:
    splits = load_data(cfg)
    train, val = splits["train"], splits.get("val")
    if val is None or len(val) == 0:
        return {"k": 0, "weight": 0.0, "why": "no validation views: the rerank stays off"}
    n_train = len(train)
    val_in_db = holds(side, val, n_train)
    if not holds(side, train):  # the candidates' ids must be database rows, whose features the store holds
        raise GeolocError(f"{run_dir}: index.rerank=auto chooses on the validation views against the training "
                          "photos, but the index does not start with them; set index.rerank=on (rerank.k, "
                          "rerank.weight) or rebuild the index from the run's own data")
    db = training_database(run_dir, cfg, model, side, train, "rerank")
    # the validation photos' rows too, when they follow the training photos' (a run's own index): read, not
    # computed again
    stored = Run(run_dir).index_dir / EMBEDDINGS
    rows = np.load(stored, mmap_mode="r") if stored.is_file() else None
    if rows is not None and val_in_db:
        q = np.asarray(rows[n_train:n_train + len(val)], dtype=np.float32)
    else:
        q = embed(model, decode_images(val, cfg.data.resize, "rerank: decode val"), cfg, "rerank: embed val")
    sims, ids = nearest_of(db, q, min(max(AUTO_KS), n_train))
    feats = validation_features(store, side, train, val, cfg)
    with tqdm(total=len(val), desc="rerank: match val", unit="img") as bar:
        inl = inlier_table(feats, ids, store.features, ids.shape[1], cfg.rerank.ratio, bar.update)
    best, recall = choose(sims, ids, inl, train.lat, train.lon, val.lat, val.lon, RADIUS_M)
    tqdm.write(f"rerank: {label(best)} on {len(val)} validation views (R@1 within 25 m: "
               + ", ".join(f"{s} {r:.1%}" for s, r in recall.items()) + ")")
    return {"k": best.k, "weight": float(best.weight), "val_recall@1_25m": recall, "val_views": len(val)}


def validation_features(store: LocalStore, side, train, val, cfg: Config) -> list:
    """The validation photos' local features: read from the store when the database holds them right after
    the training photos (a run's own index), else extracted from their files."""
    n = len(train)
    if holds(side, val, n):
        return [store.features(n + i) for i in range(len(val))]
    return [query_features(load_rgb(p, val.describe(i)), cfg) for i, p in enumerate(val.paths)]


def query_features(image: Image.Image, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """A query photo's local features, taken as the database's were (rerank.size, rerank.keypoints)."""
    return extract(image, cfg.rerank.size, cfg.rerank.keypoints)


def check(setting: Setting, store: LocalStore | None, cfg: Config, sims: np.ndarray, ids: np.ndarray,
          feats: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, ids, inliers) of queries' neighbours after the geometric check (retrieval.answering.geometry.rescore);
    inliers -1 where a neighbour was not checked. feats: each query's query_features."""
    if setting.off or store is None:
        return sims, ids, np.full(ids.shape, -1, np.int32)
    inl = inlier_table(feats, ids, store.features, setting.k, cfg.rerank.ratio)
    return rescore(sims, ids, inl, setting)
