"""The main method's training: a ResNet + GeM embedding trained with a metric loss whose positives and
negatives are chosen by distance on the ground (walking distance along the streets, or straight-line for
the ablation) and, where headings are known, by which way the camera faced. The run's index
(retrieval.answering.run_index) and the Locator (retrieval.answering.locator) then place a query by a vote of its neighbours.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
from pytorch_metric_learning import losses
from torch.utils.data import DataLoader
from tqdm import tqdm

from retrieval.data.grids import cell_classes_of
from retrieval import GeolocError
from retrieval.learning import distributed
from retrieval.data.cities import CITIES_FILE, city_of_photos, read_cities
from retrieval.config import Config, descriptor_dim
from retrieval.answering.index import nearest_of
from retrieval.learning.inference import embed
from retrieval.learning.losses import make_loss, make_miner
from retrieval.data.manifests import Manifest, load_rgb
from retrieval.metrics import Predictions, error_metrics, errors_m, knn_floor, recall_at_n
from retrieval.learning.mining import (GroundRules, PhotoMemory, PlaceBatchSampler, kept_photos, positive_candidates,
                              resolve_supervision)
from retrieval.answering.locator import Locator
from retrieval.answering.places import place_means, place_neighbours
from retrieval.answering.rerank import check, query_features
from retrieval.answering.run_index import ensure_index
from retrieval.answering.vote import vote
from retrieval.choices import VOTE_MODES
from retrieval.data.splits import load_data
from retrieval.data.streets import euclidean_neighbours, photo_distances, street_source
from retrieval.learning.models import embedding_net
from retrieval.learning.train import fit, seed_everything
from retrieval.learning.transforms import CachedImages, decode_images, train_transform
from retrieval.methods.cell_prior import budgets, record_in_run, train_prior
from retrieval.run import Run


def ground_distances(cfg: Config, train: Manifest) -> sp.csr_matrix:
    """Sparse distances between training photos up to neg_radius_m, by embedding.positives; in a data set
    of several cities (retrieval.data.cities), within each city on its own street graph, and none across."""
    e = cfg.embedding
    cities = read_cities(cfg.data.train)
    if not cities:
        return photo_distances(train.lat, train.lon, e.neg_radius_m, e.positives, street_source(cfg),
                               e.max_snap_m, e.network_type, describe=train.describe)
    city = city_of_photos(train.paths, cities)
    rows, cols, vals = [], [], []
    for c, info in enumerate(cities):
        idx = np.flatnonzero(city == c)
        d = photo_distances(train.lat[idx], train.lon[idx], e.neg_radius_m, e.positives, info["streets"],
                            e.max_snap_m, e.network_type, describe=lambda i, idx=idx: train.describe(idx[i])).tocoo()
        rows.append(idx[d.row]), cols.append(idx[d.col]), vals.append(d.data)
    # Built at once from coordinates: summing matrices would drop the stored zeros (photos of one spot).
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(len(train), len(train)))
    out.sort_indices()
    return out


HARD_NEIGHBOURS = 64  # look-alikes kept per photo for hard batches: enough to fill a group past blocked ones


def nearest_photos(emb: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's k most similar rows (inner product, itself excluded), exact (FAISS)."""
    ids = nearest_of(emb, emb, k + 1)[1]
    return np.array([row[row != i][:k] for i, row in enumerate(ids)])


class EmbeddingTask:
    kind = "embedding"
    metric = "val_recall@1_25m"
    maximize = True

    def __init__(self, cfg: Config, splits: dict[str, Manifest]):
        e = cfg.embedding
        self.cfg, self.train = cfg, splits["train"]
        self.dist = ground_distances(cfg, self.train)
        self.excluded = int((~kept_photos(self.dist)).sum())
        self.supervision = resolve_supervision(e.supervision, self.train.heading)
        cand = positive_candidates(self.dist, e.pos_radius_m,
                                   self.train.heading if self.supervision == "heading" else None, e.heading_tol_deg)
        near = None
        if e.positives == "geodesic" and e.never_negative_within_m > 0:
            near = euclidean_neighbours(self.train.lat, self.train.lon, e.never_negative_within_m)
        self.rules = GroundRules(self.dist, cand, e.neg_radius_m, weak=self.supervision == "weak",
                                 never_negative=near)
        images = decode_images(self.train, cfg.data.resize, "decode train")
        self.sampler = PlaceBatchSampler(self.dist, e.places_per_batch, e.photos_per_place, e.pos_radius_m,
                                         candidates=cand, batches=cfg.train.max_steps_per_epoch,
                                         seed=cfg.seed, rank=distributed.rank(),
                                         world=distributed.world_size(), hard_places=e.hard_places)
        if e.hard_places and distributed.world_size() > 1:
            raise GeolocError(f"embedding.hard_places={e.hard_places}: one process only (the embedding-space "
                              "neighbours come from rank 0's validation)")
        ds = CachedImages(images, torch.arange(len(images)), train_transform(cfg.data, cfg.augment))
        self.train_loader = DataLoader(ds, batch_sampler=self.sampler, num_workers=cfg.data.num_workers,
                                       persistent_workers=cfg.data.num_workers > 0)
        self.images = images
        self.model = embedding_net(cfg.model.weights, cfg.model.embed_dim, cfg.model.lock_factor, cfg.model.arch,
                                   cfg.model.pooling)
        self.loss_fn, self.miner = make_loss(e), make_miner(e, self.rules)
        self.memory = PhotoMemory(e.memory_size) if e.memory_size > 0 else None
        self.cell_of_photo, self.extra = self._cell_head(cfg) if e.cell_loss_weight > 0 else (None, None)
        self.val = splits.get("val")
        if self.val is not None:
            self.val_images = decode_images(self.val, cfg.data.resize, "decode val")
            self.place_nb = place_neighbours(cfg, self.train)  # validation searches what the index holds

    def _cell_head(self, cfg: Config) -> tuple[torch.Tensor, torch.nn.Module]:
        """Each training photo's class (its cell, or its cell and heading bin), and the cosine classifier
        over those classes."""
        bins = cfg.embedding.cell_heading_bins
        if bins > 1 and (self.train.heading is None or np.isnan(self.train.heading).any()):
            raise GeolocError(f"embedding.cell_heading_bins={bins}: needs a heading for every training photo, "
                              f"and {cfg.data.train} lacks some")
        cell_of_photo = torch.as_tensor(cell_classes_of(cfg, self.train, bins))
        return cell_of_photo, losses.NormalizedSoftmaxLoss(int(cell_of_photo.max()) + 1, descriptor_dim(cfg.model))

    def loss(self, model, batch) -> torch.Tensor:
        images, _, idx = batch
        # Under torchrun the miner sees every rank's photos, so triplets can cross ranks.
        emb, idx = distributed.gather_batch(model(images).float(), idx)
        if self.memory is None:
            loss = self.loss_fn(emb, indices_tuple=self.miner(emb, idx))
        else:
            ref, ref_idx = self.memory.references(emb, idx)
            loss = self.loss_fn(emb, indices_tuple=self.miner(emb, idx, ref, ref_idx), ref_emb=ref)
            self.memory.push(emb, idx)
        if self.extra is not None:
            # Every rank scores the same gathered batch, so the classifier's weights stay equal on all ranks.
            cells = self.cell_of_photo[idx.cpu()].to(emb.device)
            loss = loss + self.cfg.embedding.cell_loss_weight * self.extra(emb, cells)
        return loss

    def validate(self, model) -> dict[str, float]:
        if self.val is None and not self.sampler.hard:
            return {}
        db = embed(model, self.images, self.cfg, "validate: database")
        if self.sampler.hard:
            self.sampler.set_neighbours(nearest_photos(db, HARD_NEIGHBOURS))
        if self.val is None:
            return {}
        q = embed(model, self.val_images, self.cfg, "validate: queries")
        if self.place_nb is not None:
            db = place_means(db, self.place_nb)
        sims = q @ db.T
        ids = np.argsort(-sims, axis=1)[:, :min(self.cfg.index.k, len(db))]
        mode = "pool" if self.cfg.index.vote == "auto" else self.cfg.index.vote  # auto chooses after training
        v = vote(self.train.lat[ids], self.train.lon[ids], np.take_along_axis(sims, ids, 1), mode,
                 self.cfg.index.vote_radius_m)
        r = knn_floor(db, q, self.train.lat, self.train.lon, self.val.lat, self.val.lon)  # the same k-NN rule
        return {"val_recall@1_25m": r["recall@1_25m"], "val_recall@5_25m": r["recall@5_25m"],
                "val_median_error_m": float(np.median(errors_m(v.lat, v.lon, self.val.lat, self.val.lon)))}

    def info(self) -> dict:
        e = self.cfg.embedding
        streets = f"each city's own ({CITIES_FILE})" if read_cities(self.cfg.data.train) else street_source(self.cfg)
        return {"positives": e.positives, "streets": streets, "loss": e.loss, "miner": e.miner,
                "supervision": self.supervision, "arch": self.cfg.model.arch,
                "cell_loss_weight": e.cell_loss_weight, "cell_heading_bins": e.cell_heading_bins,
                "hard_places": e.hard_places,
                "cell_classes": None if self.extra is None else int(self.extra.W.shape[1]),
                "positive_candidates": int(self.rules.cand.nnz),
                "excluded_from_mining": self.excluded, "pairs_within_neg_radius": int(self.dist.nnz),
                "batches_per_epoch": len(self.sampler)}


def train_embedding(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    distributed.init()  # before the task, whose sampler takes this process's rank
    splits = load_data(cfg)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    task = EmbeddingTask(cfg, splits)
    info = task.info()
    tqdm.write(f"{info['positives']} distances in {time.perf_counter() - t0:.1f} s; "
               f"{info['excluded_from_mining']} photos excluded from mining (too far from a street); "
               f"{info['batches_per_epoch']} batches of {cfg.embedding.places_per_batch} places x "
               f"{cfg.embedding.photos_per_place} photos per epoch")
    return fit(task, cfg, run_dir, resume)


def train_embedding_and_prior(cfg: Config, run_dir: str | Path, resume: bool = False, *,
                              train_cells: Callable) -> dict:
    """The embedding method's training (retrieval.methods): the embedding, then with
    embedding.cell_prior_share > 0 the cells prior in that share of the budget, trained by train_cells
    (the cells method's, handed over by the registry)."""
    if cfg.embedding.cell_prior_share <= 0:
        return train_embedding(cfg, run_dir, resume)
    distributed.init()
    if distributed.world_size() > 1:
        raise GeolocError("embedding.cell_prior_share: one process only (the cells prior trains after the "
                          "embedding, on rank 0's data)")
    summary = train_embedding(budgets(cfg)[0], run_dir, resume)
    tqdm.write(f"== cells prior: {cfg.embedding.cell_prior_share:g} of the budget, in {Run(run_dir).prior_run.path}")
    return record_in_run(Path(run_dir), summary, train_prior(cfg, Path(run_dir), resume, train_cells))


# --- test predictions ------------------------------------------------------------------------------

def score_neighbours(sims, nb_lat, nb_lon, true_lat, true_lon, k: int, radius_m: float, headline: str):
    """The headline vote's (lat, lon, confidence), the neighbours' distances to the truth, and the metrics
    (recall@N within 25 m, every vote mode's errors) of queries whose positions are known. Neighbours
    given as NaN (none found) do not vote and count as infinitely far."""
    nb_dist = np.where(np.isnan(nb_lat), np.inf, errors_m(nb_lat, nb_lon, true_lat[:, None], true_lon[:, None]))
    modes = {}
    for mode in VOTE_MODES:
        v = vote(nb_lat[:, :k], nb_lon[:, :k], sims[:, :k], mode, radius_m)
        modes[mode] = (v.lat, v.lon, v.confidence)
    lat, lon, conf = modes[headline]
    metrics = {**recall_at_n(nb_dist, (1, 5, 10), 25.0), "vote": headline,
               "vote_modes": {m: error_metrics(errors_m(a, b, true_lat, true_lon)) for m, (a, b, _) in modes.items()},
               "median_confidence": float(np.median(conf))}
    return (lat, lon, conf), nb_dist, metrics


def predict_test(run_dir: Path, cfg: Config, test: Manifest) -> Predictions:
    """The embedding method's predict (retrieval.methods): the Locator's test-photo locations by each vote mode (the
    chosen one is the headline) and recall@N within 25 m. With a cells prior the embedding alone's
    figures stay in metrics["cell_prior"]["without"]."""
    ensure_index(run_dir, cfg)
    loc = Locator.load(run_dir, cfg, choose=True)
    images = decode_images(test, cfg.data.resize, "decode test")
    n, i = max(cfg.index.k, 10), cfg.index

    q = embed(loc.model, images, cfg, "embed test")
    t0 = time.perf_counter()
    feats = [] if loc.check.off else [query_features(load_rgb(p, test.describe(j)), cfg)
                                      for j, p in enumerate(tqdm(test.paths, desc="test: local features", unit="img"))]
    check_ms = [0.0 if loc.check.off else 1000 * (time.perf_counter() - t0)]  # off adds nothing, not noise

    def scored(use_prior: bool, use_check: bool = True):
        sims, ids = loc.ranked(q, images, max(n, loc.check.k), use_prior)
        if use_check and not loc.check.off:
            t1 = time.perf_counter()
            sims, ids, _ = check(loc.check, loc.local, cfg, sims, ids, feats)
            check_ms.append(1000 * (time.perf_counter() - t1))
        sims, ids = sims[:, :n], ids[:, :n]
        nb_lat, nb_lon = loc.positions(ids)
        return sims, ids, score_neighbours(np.where(ids < 0, np.nan, sims), nb_lat, nb_lon, test.lat, test.lon,
                                           i.k, i.vote_radius_m, loc.mode)

    sims, ids, ((lat, lon, conf), nb_dist, metrics) = scored(True)
    if loc.vote_record:
        metrics["vote_choice"] = {k: loc.vote_record[k] for k in ("val_median_error_m", "val_views", "why")
                                  if k in loc.vote_record}
    if loc.prior is not None:
        metrics["cell_prior"] = {"weight": loc.prior.weight, "without": scored(False)[2][2]}
    if cfg.index.rerank != "off":
        metrics["rerank"] = {"mode": cfg.index.rerank, "k": loc.check.k, "weight": loc.check.weight,
                             **{k: v for k, v in loc.check_record.items() if k in ("val_recall@1_25m", "val_views", "why")},
                             "ms_per_query": round(sum(check_ms[:2]) / max(len(test), 1), 2),
                             "without": scored(True, False)[2][2]}
    return Predictions(lat=lat, lon=lon, metrics=metrics,
                       columns={"confidence": np.round(conf, 4), "top1_error_m": np.round(nb_dist[:, 0], 2)},
                       arrays={"neighbour_ids": ids, "similarities": sims, "confidence": conf})
