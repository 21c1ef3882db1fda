"""A trained embedding run's index (RUN/index): the database photos embedded (resumably, a chunk at a
time), optionally replaced by their place means, and a FAISS index of them with its sidecar; with
index.rerank, the photos' local features too (RUN/index/local: retrieval.answering.local_features)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from retrieval.learning import distributed
from retrieval.config import Config, descriptor_dim
from retrieval.files import atomic_write, atomic_write_json, create_npy
from retrieval.answering.index import (META_FILE, NpyRows, Sidecar, build_index, index_params, load_index, read_meta, save_index,
                             shards_of)
from retrieval.answering.local_features import extract_database
from retrieval.answering.places import place_means, place_neighbours
from retrieval.data.manifests import Manifest, concat_manifests
from retrieval.data.splits import load_data
from retrieval.learning.inference import embed, load_embedding_model
from retrieval.learning.precision import resolve_precision
from retrieval.learning.transforms import decode_images
from retrieval.run import Run

EMBEDDINGS, PROGRESS = "embeddings.npy", "embeddings.json"
PLACE_EMBEDDINGS = "place_embeddings.npy"  # what the index holds when index.place_mean_m > 0
# Photos decoded and embedded between two progress records: the most a killed build loses, and the
# most uint8 images (at data.resize) it holds in memory.
EMBED_CHUNK = 1024


def database(cfg: Config) -> Manifest:
    """Every photo the model may learn from (train and validation) is a candidate neighbour."""

    splits = load_data(cfg)
    return concat_manifests([splits[s] for s in ("train", "val") if s in splits])


def photos_sha256(db: Manifest) -> str:
    """The photos in order, with each file's size and modification time: stored embeddings are reused
    only for the same files."""
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
    and how many photos this call embedded; on_chunk(rows_done) is called after each chunk is recorded.
    Under torchrun each process embeds every world-th photo of a chunk and rank 0 alone writes."""
    main = distributed.is_main()
    store, record = folder / EMBEDDINGS, folder / PROGRESS
    key = {"checkpoint_sha256": sha, "photos_sha256": photos_sha256(db), "photos": len(db),
           "dim": descriptor_dim(cfg.model), "resize": cfg.data.resize, "image_size": cfg.data.image_size,
           "precision": resolve_precision(cfg.train.precision)}
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        state = _resumable(record, key, store)
        if state is None:
            record.unlink(missing_ok=True)  # before the file it describes is replaced
            create_npy(store, (len(db), descriptor_dim(cfg.model)))
            state = {**key, "rows_done": 0, "embed_seconds": 0.0}
            atomic_write_json(record, state)
    state = distributed.gather_objects(state if main else None)[0]  # rank 0's record, for every rank
    first, rank, world = state["rows_done"], distributed.rank(), distributed.world_size()
    with tqdm(total=len(db), initial=first, desc="embed database", unit="img") as bar:
        for start in range(first, len(db), chunk):
            stop = min(len(db), start + chunk)
            t0 = time.perf_counter()
            mine = np.arange(start, stop)[rank::world]
            images = decode_images(db.subset(mine), cfg.data.resize, "decode") if len(mine) else []
            emb = embed(model, images, cfg, "embed") if len(mine) else np.zeros((0, key["dim"]), np.float32)
            parts = distributed.gather_objects(emb)
            if main:
                rows = open_memmap(store, mode="r+")  # mapped only while writing: its pages leave with it
                for r, part in enumerate(parts):
                    rows[start + r:stop:world] = part
                rows.flush()
                del rows
            del images, parts
            state = {**state, "rows_done": stop, "embed_seconds": state["embed_seconds"] + time.perf_counter() - t0}
            if main:
                atomic_write_json(record, state)
            bar.update(stop - start)
            if on_chunk is not None:
                on_chunk(stop)
    return store, state, state["rows_done"] - first


def build_run_index(run_dir: str | Path, cfg: Config, db: Manifest | None = None, chunk: int = EMBED_CHUNK,
                    on_chunk=None) -> dict:
    """Embed the database photos with the run's model (streamed to RUN/index/embeddings.npy, resumable:
    see embed_database) and save a FAISS index of them in RUN/index, built from that file chunk by chunk.
    The embeddings stay, so rebuilding with other index settings embeds nothing again. Under torchrun
    every process embeds its share and rank 0 builds the index; the other ranks return {}."""
    run_dir = Path(run_dir)
    db = db if db is not None else database(cfg)
    model, sha = load_embedding_model(run_dir, cfg)
    t0 = time.perf_counter()
    store, state, embedded = embed_database(model, sha, db, cfg, Run(run_dir).index_dir, chunk, on_chunk)
    if not distributed.is_main():  # under torchrun rank 0 alone builds and writes the index
        return {}
    rows, place_mean = indexed_rows(store, db, cfg, chunk)
    index = build_index(NpyRows(rows), seed=cfg.seed, **index_params(cfg.index))
    save_index(run_dir / Run.INDEX_DIR, index, Sidecar(paths=[str(p) for p in db.paths], lat=db.lat, lon=db.lon,
                                                   dim=descriptor_dim(cfg.model), checkpoint_sha256=sha, kind=cfg.index.kind,
                                                   place_mean=place_mean))
    local = build_local_features(run_dir, cfg, db)
    return {"photos": len(db), "dim": descriptor_dim(cfg.model), "kind": cfg.index.kind, "shards": len(shards_of(index)),
            "embedded": embedded, "embed_images_per_s": round(len(db) / max(state["embed_seconds"], 1e-9), 2),
            "seconds": round(time.perf_counter() - t0, 2), **local}


def build_local_features(run_dir: str | Path, cfg: Config, db: Manifest | None = None) -> dict:
    """With index.rerank: the database photos' local features (resumable), and what they cost per photo."""
    if cfg.index.rerank == "off":
        return {}
    db = db if db is not None else database(cfg)
    rec = extract_database(db, photos_sha256(db), cfg.rerank, Run(run_dir).local_dir)
    return {"local_bytes_per_photo": rec["bytes_per_photo"], "local_ms_per_photo": rec["ms_per_photo"]}


def indexed_rows(store: Path, db: Manifest, cfg: Config, chunk: int = EMBED_CHUNK) -> tuple[Path, dict]:
    """The vectors to index: the embeddings file itself, or with index.place_mean_m > 0 their place means
    (retrieval.answering.places), written beside it a chunk of rows at a time. Returns the file and the settings."""
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


def holds(side, photos: Manifest, start: int = 0) -> bool:
    """Whether the index's rows from `start` are these photos, in order (a run's own index holds the
    training photos first, then the validation photos)."""
    return side.paths[start:start + len(photos)] == [str(p) for p in photos.paths]


def training_database(run_dir, cfg: Config, model, side, train: Manifest, desc: str) -> np.ndarray:
    """The training photos' descriptors as the index holds them (place means included), the database of the
    choices made on the validation views (vote mode, rerank): read from RUN/index's stored rows when the
    index starts with the training photos (a run's own index), else embedded."""
    stored = Run(run_dir).index_dir / EMBEDDINGS
    if stored.is_file() and holds(side, train):
        db = np.asarray(np.load(stored, mmap_mode="r")[:len(train)], dtype=np.float32)
    else:
        db = embed(model, decode_images(train, cfg.data.resize, f"{desc}: decode train"), cfg, f"{desc}: embed train")
    nb = place_neighbours(cfg, train)
    return place_means(db, nb) if nb is not None else db


def place_setting(source) -> tuple:
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
    model, sha = load_embedding_model(run_dir, cfg)
    index, side = load_index(Run(run_dir).index_dir, expected_checkpoint_hash=sha,
                             expected_dim=descriptor_dim(cfg.model))
    return model, index, side


def ensure_index(run_dir: str | Path, cfg: Config) -> None:
    """Build RUN/index when it is missing or holds other place means than cfg asks for (the stored
    embeddings are reused, so only the place means are recomputed), and the local features index.rerank
    asks for."""
    folder = Run(run_dir).index_dir
    if not (folder / META_FILE).is_file():
        build_run_index(run_dir, cfg)
        return
    record = read_meta(folder / META_FILE).get("place_mean")
    if place_setting(record if isinstance(record, dict) else {}) != place_setting(cfg):
        build_run_index(run_dir, cfg)
    else:
        build_local_features(run_dir, cfg)  # extracts nothing when they are there with these settings
