"""The main method: a ResNet + GeM embedding trained with a metric loss whose positives and negatives are
chosen by distance on the ground (walking distance along the streets, or straight-line for the ablation)
and, where headings are known, by which way the camera faced; then a FAISS index of the training photos
and a k-NN vote to place a query.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from retrieval import GeolocError, distributed
from retrieval.config import Config
from retrieval.data import Manifest
from retrieval.metrics import errors_m
from retrieval.mining import (GroundRules, PhotoMemory, PlaceBatchSampler, kept_photos, make_loss, make_miner,
                              positive_candidates, resolve_supervision)
from retrieval.models import embedding_net
from retrieval.places import place_means, same_place
from retrieval.vote import VOTE_MODES
from retrieval.streets import euclidean_neighbours, photo_distances
from retrieval.train import fit, infer, load_data, resolve_precision, seed_everything
from retrieval.transforms import CachedImages, decode_images, test_transform, train_transform


def street_source(cfg: Config) -> str:
    """embedding.streets, else the street graph the renderer saved beside the data."""
    if cfg.embedding.streets:
        return cfg.embedding.streets
    data = Path(cfg.data.train)
    folder = data if data.is_dir() else data.parent
    graph = folder / "streets.graphml"
    return str(graph) if graph.is_file() else ""


def ground_distances(cfg: Config, train: Manifest):
    """Sparse distances between training photos up to neg_radius_m, by embedding.positives."""
    e = cfg.embedding
    if not e.pos_radius_m < e.neg_radius_m:
        raise GeolocError(f"embedding.pos_radius_m ({e.pos_radius_m:g}) must be below neg_radius_m ({e.neg_radius_m:g})")
    return photo_distances(train.lat, train.lon, e.neg_radius_m, e.positives, street_source(cfg), e.max_snap_m,
                           describe=train.describe)


HARD_NEIGHBOURS = 64  # look-alikes kept per photo for hard batches: enough to fill a group past blocked ones


def nearest_photos(emb: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's k most similar rows (inner product, itself excluded), exact (FAISS)."""
    ids = nearest_of(emb, emb, k + 1)[1]
    return np.array([row[row != i][:k] for i, row in enumerate(ids)])


def place_neighbours(cfg: Config, db: Manifest):
    """The same-place neighbours of index.place_mean_m among db's photos, or None when it is off."""
    i = cfg.index
    if i.place_mean_m <= 0:
        return None
    return same_place(db.lat, db.lon, db.heading, i.place_mean_m, i.place_mean_heading_deg)


def nearest_of(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) similarities and indices of each query's k most similar db rows (inner product), exact (FAISS)."""
    import faiss

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, np.float32))
    return index.search(np.ascontiguousarray(q, np.float32), min(k, len(db)))


def embed(model, images: list[torch.Tensor], cfg: Config, desc: str = "embed") -> np.ndarray:
    precision = resolve_precision(cfg.train.precision)
    return infer(model, images, test_transform(cfg.data), cfg.train.batch_size, precision, desc=desc).numpy()


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
        self.model = embedding_net(cfg.model.weights, cfg.model.embed_dim, cfg.model.lock_factor, cfg.model.arch)
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
        from pytorch_metric_learning import losses

        from baselines.cells import cell_classes_of

        bins = cfg.embedding.cell_heading_bins
        if bins > 1 and (self.train.heading is None or np.isnan(self.train.heading).any()):
            raise GeolocError(f"embedding.cell_heading_bins={bins}: needs a heading for every training photo, "
                              f"and {cfg.data.train} lacks some")
        cell_of_photo = torch.as_tensor(cell_classes_of(cfg, self.train, bins))
        return cell_of_photo, losses.NormalizedSoftmaxLoss(int(cell_of_photo.max()) + 1, cfg.model.embed_dim)

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
        from retrieval.floors import knn_floor
        from retrieval.vote import vote

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
        return {"positives": e.positives, "streets": street_source(self.cfg), "loss": e.loss, "miner": e.miner,
                "supervision": self.supervision, "arch": self.cfg.model.arch,
                "cell_loss_weight": e.cell_loss_weight, "cell_heading_bins": e.cell_heading_bins,
                "hard_places": e.hard_places,
                "cell_classes": None if self.extra is None else int(self.extra.W.shape[1]),
                "positive_candidates": int(self.rules.cand.nnz),
                "excluded_from_mining": self.excluded, "pairs_within_neg_radius": int(self.dist.nnz),
                "batches_per_epoch": len(self.sampler)}


def train_embedding(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    from retrieval import prior

    distributed.init()  # before the task, whose sampler takes this process's rank
    full, cfg = cfg, prior.budgets(cfg)[0] if cfg.embedding.cell_prior_share > 0 else cfg
    if full is not cfg and distributed.world_size() > 1:
        raise GeolocError("embedding.cell_prior_share: one process only (the cells prior trains after the "
                          "embedding, on rank 0's data)")
    splits = load_data(cfg)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    task = EmbeddingTask(cfg, splits)
    info = task.info()
    from tqdm import tqdm

    tqdm.write(f"{info['positives']} distances in {time.perf_counter() - t0:.1f} s; "
               f"{info['excluded_from_mining']} photos excluded from mining (too far from a street); "
               f"{info['batches_per_epoch']} batches of {cfg.embedding.places_per_batch} places x "
               f"{cfg.embedding.photos_per_place} photos per epoch")
    summary = fit(task, cfg, run_dir, resume)
    if full is not cfg:
        del task  # its decoded images
        tqdm.write(f"== cells prior: {full.embedding.cell_prior_share:g} of the budget, in {Path(run_dir) / prior.PRIOR_DIR}")
        summary = prior.record_in_run(Path(run_dir), summary, prior.train_prior(full, Path(run_dir), resume))
    return summary


# --- index and prediction --------------------------------------------------------------------------

INDEX_DIR = "index"
EMBEDDINGS, PROGRESS = "embeddings.npy", "embeddings.json"
PLACE_EMBEDDINGS = "place_embeddings.npy"  # what the index holds when index.place_mean_m > 0
# Photos decoded and embedded between two progress records: the most a killed build loses, and the
# most uint8 images (at data.resize) it holds in memory.
EMBED_CHUNK = 1024


def load_model(run_dir: Path, cfg: Config):
    """The run's embedding model (best.pt, else last.pt) and that checkpoint's sha256."""
    from retrieval.index import sha256_file
    from retrieval.train import load_trained, prepare_model

    run_dir = Path(run_dir)
    path = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    model = embedding_net("none", cfg.model.embed_dim, arch=cfg.model.arch)
    load_trained(model, run_dir)
    # channels_last weights, as infer() feeds channels_last images under bf16
    return prepare_model(model, cfg.train.precision).eval(), sha256_file(path)


def database(cfg: Config) -> Manifest:
    """Every photo the model may learn from (train and validation) is a candidate neighbour."""
    from retrieval.data import concat_manifests

    splits = load_data(cfg)
    return concat_manifests([splits[s] for s in ("train", "val") if s in splits])


def photos_sha256(db: Manifest) -> str:
    """The photos in order, with each file's size and modification time: stored embeddings are reused
    only for the same files."""
    import hashlib
    import os

    h = hashlib.sha256()
    for p in db.paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:  # decoding will name the file
            h.update(f"{p}\t-\n".encode())
    return h.hexdigest()


def _resumable(record: Path, key: dict, store: Path) -> dict | None:
    """The progress record of an earlier build with the same key, if its embeddings file is intact."""
    import json

    try:
        state = json.loads(record.read_text(encoding="utf-8"))
        shape = np.load(store, mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    if (not isinstance(state, dict) or any(state.get(k) != v for k, v in key.items())
            or shape != (key["photos"], key["dim"]) or not isinstance(state.get("rows_done"), int)):
        return None
    return state


def embed_database(model, sha: str, db: Manifest, cfg: Config, folder: Path, chunk: int = EMBED_CHUNK,
                   on_chunk=None) -> tuple[Path, dict, int]:
    """Embed db's photos into folder/embeddings.npy a chunk at a time, recording after each chunk the
    rows done (folder/embeddings.json). A killed build resumes after the last chunk it finished, and a
    rebuild with the same model, photos and preprocessing embeds nothing. Returns the file, the record
    and how many photos this call embedded; on_chunk(rows_done) is called after each chunk is recorded."""
    from numpy.lib.format import open_memmap
    from tqdm import tqdm

    from retrieval.util import atomic_write_json, create_npy

    folder.mkdir(parents=True, exist_ok=True)
    store, record = folder / EMBEDDINGS, folder / PROGRESS
    key = {"checkpoint_sha256": sha, "photos_sha256": photos_sha256(db), "photos": len(db),
           "dim": cfg.model.embed_dim, "resize": cfg.data.resize, "image_size": cfg.data.image_size,
           "precision": resolve_precision(cfg.train.precision)}
    state = _resumable(record, key, store)
    if state is None:
        record.unlink(missing_ok=True)  # before the file it describes is replaced
        create_npy(store, (len(db), cfg.model.embed_dim))
        state = {**key, "rows_done": 0, "embed_seconds": 0.0}
        atomic_write_json(record, state)
    first = state["rows_done"]
    with tqdm(total=len(db), initial=first, desc="embed database", unit="img") as bar:
        for start in range(state["rows_done"], len(db), chunk):
            stop = min(len(db), start + chunk)
            t0 = time.perf_counter()
            images = decode_images(db.subset(np.arange(start, stop)), cfg.data.resize, "decode")
            emb = embed(model, images, cfg, "embed")
            rows = open_memmap(store, mode="r+")  # mapped only while writing: its pages leave with it
            rows[start:stop] = emb
            rows.flush()
            del rows, images
            state = {**state, "rows_done": stop, "embed_seconds": state["embed_seconds"] + time.perf_counter() - t0}
            atomic_write_json(record, state)
            bar.update(stop - start)
            if on_chunk is not None:
                on_chunk(stop)
    return store, state, state["rows_done"] - first


def build_run_index(run_dir: str | Path, cfg: Config, db: Manifest | None = None, chunk: int = EMBED_CHUNK,
                    on_chunk=None) -> dict:
    """Embed the database photos with the run's model (streamed to RUN/index/embeddings.npy, resumable:
    see embed_database) and save a FAISS index of them in RUN/index, built from that file chunk by chunk.
    The embeddings stay, so rebuilding with other index settings embeds nothing again."""
    from retrieval.index import NpyRows, Sidecar, build_index, index_params, save_index, shards_of

    run_dir = Path(run_dir)
    db = db if db is not None else database(cfg)
    model, sha = load_model(run_dir, cfg)
    t0 = time.perf_counter()
    store, state, embedded = embed_database(model, sha, db, cfg, run_dir / INDEX_DIR, chunk, on_chunk)
    rows, place_mean = indexed_rows(store, db, cfg, chunk)
    index = build_index(NpyRows(rows), seed=cfg.seed, **index_params(cfg.index))
    save_index(run_dir / INDEX_DIR, index, Sidecar(paths=[str(p) for p in db.paths], lat=db.lat, lon=db.lon,
                                                   dim=cfg.model.embed_dim, checkpoint_sha256=sha, kind=cfg.index.kind,
                                                   place_mean=place_mean))
    return {"photos": len(db), "dim": cfg.model.embed_dim, "kind": cfg.index.kind, "shards": len(shards_of(index)),
            "embedded": embedded, "embed_images_per_s": round(len(db) / max(state["embed_seconds"], 1e-9), 2),
            "seconds": round(time.perf_counter() - t0, 2)}


def indexed_rows(store: Path, db: Manifest, cfg: Config, chunk: int = EMBED_CHUNK) -> tuple[Path, dict]:
    """The vectors to index: the embeddings file itself, or with index.place_mean_m > 0 their place means
    (retrieval.places), written beside it a chunk of rows at a time. Returns the file and the settings."""
    from numpy.lib.format import open_memmap

    from retrieval.util import atomic_write, create_npy

    place = store.parent / PLACE_EMBEDDINGS
    nb = place_neighbours(cfg, db)
    if nb is None:
        place.unlink(missing_ok=True)  # a file of an earlier build would no longer be what the index holds
        return store, {}
    emb = np.load(store, mmap_mode="r")

    def write(tmp: Path) -> None:
        create_npy(tmp, emb.shape)
        out = open_memmap(tmp, mode="r+")
        for start in range(0, len(emb), chunk):
            out[start:start + chunk] = place_means(emb, nb, slice(start, start + chunk))
        out.flush()
        del out

    atomic_write(place, write)
    return place, {"radius_m": cfg.index.place_mean_m, "heading_tol_deg": cfg.index.place_mean_heading_deg,
                   "photos_with_neighbours": int((np.diff(nb.indptr) > 0).sum())}


def _place_setting(source) -> tuple:
    """(radius, heading tolerance) of place means, from a Config or an index's place_mean record; () if off."""
    if isinstance(source, dict):
        return (source.get("radius_m"), source.get("heading_tol_deg")) if source else ()
    i = source.index
    return (i.place_mean_m, i.place_mean_heading_deg) if i.place_mean_m > 0 else ()


def indexed_file(folder: Path) -> Path:
    """The vectors an index folder's index was built from (see indexed_rows)."""
    place = Path(folder) / PLACE_EMBEDDINGS
    return place if place.is_file() else Path(folder) / EMBEDDINGS


def open_index(run_dir: Path, cfg: Config):
    """Model, index and sidecar of a run, checked to belong together."""
    from retrieval.index import load_index

    model, sha = load_model(run_dir, cfg)
    index, side = load_index(Path(run_dir) / INDEX_DIR, expected_checkpoint_hash=sha,
                             expected_dim=cfg.model.embed_dim)
    return model, index, side


VOTE_FILE = "vote.json"


def resolve_vote(run_dir: Path, cfg: Config, model, side) -> tuple[str, dict]:
    """index.vote, or for auto the mode chosen on the validation views (searched against the training
    photos alone, with the index's place means) and its record; chosen once per checkpoint and kept in
    RUN/vote.json. The training photos' stored index rows are reused when the index holds them first."""
    from retrieval.util import atomic_write_json, matching_record
    from retrieval.vote import choose_mode

    if cfg.index.vote != "auto":
        return cfg.index.vote, {}
    path, key = Path(run_dir) / VOTE_FILE, {"checkpoint_sha256": side.checkpoint_sha256,
                                           "place_mean": list(_place_setting(cfg)), "k": cfg.index.k,
                                           "vote_radius_m": cfg.index.vote_radius_m}
    rec = matching_record(path, key, lambda r: r.get("mode") in VOTE_MODES)
    if rec is not None:
        return rec["mode"], rec
    splits = load_data(cfg)
    train, val = splits["train"], splits.get("val")
    if val is None or len(val) == 0:
        rec = {**key, "mode": "pool", "why": "no validation views: the default mode"}
    else:
        stored = Path(run_dir) / INDEX_DIR / EMBEDDINGS
        if stored.is_file() and side.paths[:len(train)] == [str(p) for p in train.paths]:
            db = np.asarray(np.load(stored, mmap_mode="r")[:len(train)], dtype=np.float32)
        else:
            db = embed(model, decode_images(train, cfg.data.resize, "vote: decode train"), cfg, "vote: embed train")
        nb = place_neighbours(cfg, train)
        db = place_means(db, nb) if nb is not None else db
        q = embed(model, decode_images(val, cfg.data.resize, "vote: decode val"), cfg, "vote: embed val")
        sims, ids = nearest_of(db, q, cfg.index.k)
        mode, medians = choose_mode(train.lat[ids], train.lon[ids], sims, val.lat, val.lon, cfg.index.vote_radius_m)
        rec = {**key, "mode": mode, "val_median_error_m": medians, "val_views": len(val)}
    atomic_write_json(path, rec)
    return rec["mode"], rec


def predict(run_dir: Path, cfg: Config, test: Manifest):
    """Test-photo locations by each vote mode (cfg.index.vote is the headline), plus recall@N within 25 m.
    With a cells prior (retrieval.prior) the neighbours are reranked first; the embedding alone's figures
    stay in metrics["cell_prior"]["without"]."""
    from retrieval.evaluate import Predictions
    from retrieval.index import search
    from retrieval.prior import CellPrior, check_complete, rerank

    run_dir = Path(run_dir)
    check_complete(run_dir, cfg)
    if not (run_dir / INDEX_DIR / "index.json").is_file():
        build_run_index(run_dir, cfg)
    model, index, side = open_index(run_dir, cfg)
    if _place_setting(side.place_mean) != _place_setting(cfg):
        build_run_index(run_dir, cfg)  # index.place_mean_* changed: the stored embeddings are reused
        model, index, side = open_index(run_dir, cfg)
    mode, choice = resolve_vote(run_dir, cfg, model, side)
    images = decode_images(test, cfg.data.resize, "decode test")
    q = embed(model, images, cfg, "embed test")
    prior = CellPrior.load(run_dir)
    n = max(cfg.index.k, 10)
    sims, ids = search(index, q, max(n, cfg.index.cell_prior_candidates) if prior else n)
    alone = None
    if prior is not None:
        alone = _scores(sims[:, :n], ids[:, :n], side, test, cfg, mode)[2]
        sims, ids = rerank(sims, ids, prior.log_probs(images), prior.classes(side.lat, side.lon), prior.weight)
    sims, ids = sims[:, :n], ids[:, :n]
    (lat, lon, conf), nb_dist, metrics = _scores(sims, ids, side, test, cfg, mode)
    if choice:
        metrics["vote_choice"] = {k: choice[k] for k in ("val_median_error_m", "val_views", "why") if k in choice}
    if prior is not None:
        metrics["cell_prior"] = {"weight": prior.weight, "without": alone}
    return Predictions(lat=lat, lon=lon, metrics=metrics,
                       columns={"confidence": np.round(conf, 4), "top1_error_m": np.round(nb_dist[:, 0], 2)},
                       arrays={"neighbour_ids": ids, "similarities": sims, "confidence": conf})


def _scores(sims, ids, side, test: Manifest, cfg: Config, headline: str):
    """The headline vote's (lat, lon, confidence), the neighbours' distances to the truth, and the metrics
    (recall@N within 25 m, every vote mode's errors)."""
    from retrieval.metrics import error_metrics, recall_at_n
    from retrieval.vote import VOTE_MODES, vote

    missing = ids < 0  # an approximate index may find fewer than k
    nb_lat, nb_lon = np.where(missing, np.nan, side.lat[ids]), np.where(missing, np.nan, side.lon[ids])
    nb_dist = np.where(missing, np.inf, errors_m(nb_lat, nb_lon, test.lat[:, None], test.lon[:, None]))
    k = cfg.index.k
    modes = {}
    for mode in VOTE_MODES:
        v = vote(nb_lat[:, :k], nb_lon[:, :k], sims[:, :k], mode, cfg.index.vote_radius_m)
        modes[mode] = (v.lat, v.lon, v.confidence)
    lat, lon, conf = modes[headline]
    metrics = {**recall_at_n(nb_dist, (1, 5, 10), 25.0), "vote": headline,
               "vote_modes": {m: error_metrics(errors_m(a, b, test.lat, test.lon)) for m, (a, b, _) in modes.items()},
               "median_confidence": float(np.median(conf))}
    return (lat, lon, conf), nb_dist, metrics
