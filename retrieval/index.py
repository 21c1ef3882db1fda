"""FAISS indexes of training-photo embeddings, saved with a sidecar that ties them to their model.

An index folder holds index.faiss (the FAISS index), index.npz (coordinates and photo paths, row i =
FAISS id i) and index.json (format version, kind, dimension, count, search parameters, sha256 of the
model checkpoint and of index.faiss). index.json is written last, so a folder whose JSON matches its
other files was saved completely. Embeddings are L2-normalised, so inner product = cosine similarity.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from retrieval import GeolocError
from retrieval.util import atomic_write, atomic_write_json

FORMAT_VERSION = 1
KINDS = ("flat", "ivfpq", "hnsw")
INDEX_FILE, ARRAYS_FILE, META_FILE = "index.faiss", "index.npz", "index.json"
ADD_CHUNK = 65536
SEARCH_PARAMS = ("nprobe", "k_factor", "ef_search")
REFINES = {"flat": ",RFlat", "sq8": ",Refine(SQ8)", "none": ""}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _as_matrix(x, what: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or (dim is not None and x.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise GeolocError(f"{what}: expected a non-empty {want} array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise GeolocError(f"{what}: row {int(np.argwhere(~np.isfinite(x))[0, 0])} is not finite (NaN or inf)")
    return x


def build_index(embeddings, kind: str = "flat", nlist: int = 1024, pq_m: int = 64, pq_nbits: int = 8,
                refine: str = "flat", nprobe: int = 64, k_factor: float = 16.0, hnsw_m: int = 32,
                ef_construction: int = 80, ef_search: int = 64, train_size: int = 0, seed: int = 0,
                progress: bool = True) -> faiss.Index:
    """A FAISS inner-product index over the rows of `embeddings` (FAISS id = row).

    flat: exact. ivfpq: IVF with nlist lists and PQ codes of pq_m x pq_nbits bits, trained on train_size
    random rows (0: 64 per list), whose k_factor * k best candidates are re-ranked with the full vectors
    (refine flat: exact, 4 bytes per dimension more), 8-bit scalar-quantised ones (sq8: 1 byte) or not at
    all (none: PQ alone ranks poorly, see benchmarks/RESULTS.md). hnsw: HNSW graph with hnsw_m links per
    node. The search parameters (nprobe lists searched, k_factor, HNSW ef_search) are set on the index;
    the defaults reach recall@10 >= 0.95 at a million photos (benchmarks/RESULTS.md).
    """
    x = _as_matrix(embeddings, "embeddings")
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivfpq":
        if d % pq_m:
            raise GeolocError(f"ivfpq: pq_m {pq_m} must divide the embedding dimension {d}")
        if n < max(nlist, 2 ** pq_nbits):
            raise GeolocError(f"ivfpq: {n} embeddings are too few for nlist {nlist} and {2 ** pq_nbits} PQ "
                              f"centroids; use kind flat (exact, and fast at this size)")
        if refine not in REFINES:
            raise GeolocError(f"ivfpq refine {refine!r}: expected one of {', '.join(REFINES)}")
        index = faiss.index_factory(d, f"IVF{nlist},PQ{pq_m}x{pq_nbits}{REFINES[refine]}",
                                    faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = seed
        # polysemous code ordering only helps Hamming-distance filtering, which search never uses, and
        # would dominate the training time
        ivf.do_polysemous_training = False
        rows = np.random.default_rng(seed).choice(n, min(n, train_size or 64 * nlist), replace=False)
        index.train(x[np.sort(rows)])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise GeolocError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    with tqdm(total=n, desc=f"index {kind}", unit="vec", disable=not progress) as bar:
        for start in range(0, n, ADD_CHUNK):
            index.add(x[start:start + ADD_CHUNK])
            bar.update(min(ADD_CHUNK, n - start))
    set_search_params(index, nprobe=nprobe, k_factor=k_factor, ef_search=ef_search)
    return index


def index_params(cfg) -> dict:
    """build_index keyword arguments from an IndexConfig."""
    return dict(kind=cfg.kind, nlist=cfg.nlist, pq_m=cfg.pq_m, pq_nbits=cfg.pq_nbits, refine=cfg.refine,
                hnsw_m=cfg.hnsw_m, ef_construction=cfg.ef_construction, train_size=cfg.train_size,
                nprobe=cfg.nprobe, k_factor=cfg.k_factor, ef_search=cfg.ef_search)


def set_search_params(index: faiss.Index, nprobe: int | None = None, k_factor: float | None = None,
                      ef_search: int | None = None) -> dict:
    """Set whichever search parameters apply to this index; returns those that did."""
    used = {}
    if isinstance(index, faiss.IndexRefine):
        if k_factor is not None:
            index.k_factor = float(k_factor)
        used["k_factor"] = float(index.k_factor)
        index = faiss.downcast_index(index.base_index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        if nprobe is not None:
            ivf.nprobe = int(nprobe)
        used["nprobe"] = int(ivf.nprobe)
    if isinstance(index, faiss.IndexHNSW):
        if ef_search is not None:
            index.hnsw.efSearch = int(ef_search)
        used["ef_search"] = int(index.hnsw.efSearch)
    return used


def search(index: faiss.Index, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids), each (queries, min(k, index size)), best first; id -1 where an approximate
    index found fewer than k candidates."""
    q = _as_matrix(queries, "queries", index.d)
    k = min(int(k), index.ntotal)
    if k < 1:
        raise GeolocError("search: the index is empty, or k < 1")
    sims, ids = index.search(q, k)
    return sims, ids


@dataclass
class Sidecar:
    """What an index's rows are: where each training photo was taken, and which model embedded them."""

    paths: list[str]
    lat: np.ndarray
    lon: np.ndarray
    dim: int
    checkpoint_sha256: str
    kind: str = "flat"
    search_params: dict = field(default_factory=dict)


def save_index(folder: str | Path, index: faiss.Index, sidecar: Sidecar) -> Path:
    """Write index.faiss, index.npz and (last) index.json into folder, each atomically."""
    folder = Path(folder)
    n = index.ntotal
    if not (len(sidecar.paths) == len(sidecar.lat) == len(sidecar.lon) == n):
        raise GeolocError(f"save_index: {n} vectors but {len(sidecar.paths)} paths, {len(sidecar.lat)} lat, "
                          f"{len(sidecar.lon)} lon")
    if index.d != sidecar.dim:
        raise GeolocError(f"save_index: index dimension {index.d} != sidecar dim {sidecar.dim}")
    index_path = atomic_write(folder / INDEX_FILE, lambda p: faiss.write_index(index, str(p)))

    def arrays(p: Path) -> None:
        with open(p, "wb") as f:  # np.savez on a name would append ".npz" to the temporary file's name
            np.savez(f, lat=np.asarray(sidecar.lat, dtype=np.float64), lon=np.asarray(sidecar.lon, dtype=np.float64),
                     paths=np.array([str(s) for s in sidecar.paths], dtype=str))

    atomic_write(folder / ARRAYS_FILE, arrays)
    atomic_write_json(folder / META_FILE, {
        "format_version": FORMAT_VERSION, "kind": sidecar.kind, "dim": int(sidecar.dim), "count": int(n),
        "metric": "inner_product", "checkpoint_sha256": sidecar.checkpoint_sha256,
        "index_sha256": sha256_file(index_path), "arrays_sha256": sha256_file(folder / ARRAYS_FILE),
        "search_params": {**sidecar.search_params, **set_search_params(index)},
    })
    return folder


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise GeolocError(f"{path.parent}: no index here ({path.name} missing); build one with `geoloc index build`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeolocError(f"{path}: corrupt index sidecar ({str(exc).splitlines()[0]})") from exc
    if not isinstance(meta, dict):
        raise GeolocError(f"{path}: corrupt index sidecar (not a JSON object)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise GeolocError(f"{path}: index format version {meta.get('format_version')!r}, this geoloc reads "
                          f"{FORMAT_VERSION}; rebuild the index with `geoloc index build`")
    fields = {"kind": str, "dim": int, "count": int, "checkpoint_sha256": str, "index_sha256": str,
              "arrays_sha256": str, "search_params": dict}
    for name, tp in fields.items():
        if not isinstance(meta.get(name), tp) or isinstance(meta.get(name), bool):
            raise GeolocError(f"{path}: corrupt index sidecar (field '{name}' missing or not {tp.__name__})")
    unknown = set(meta["search_params"]) - set(SEARCH_PARAMS)
    if unknown:
        raise GeolocError(f"{path}: corrupt index sidecar (unknown search parameter '{sorted(unknown)[0]}')")
    return meta


def load_index(folder: str | Path, expected_checkpoint_hash: str | None = None,
               expected_dim: int | None = None) -> tuple[faiss.Index, Sidecar]:
    """Read an index folder, refusing one that does not belong to the expected model or is damaged."""
    folder = Path(folder)
    meta = _read_meta(folder / META_FILE)
    if expected_checkpoint_hash is not None and meta["checkpoint_sha256"] != expected_checkpoint_hash:
        raise GeolocError(f"{folder}: index was built with model checkpoint sha256 {meta['checkpoint_sha256'][:12]}, "
                          f"not this model's {expected_checkpoint_hash[:12]}; rebuild it with `geoloc index build`")
    if expected_dim is not None and meta["dim"] != expected_dim:
        raise GeolocError(f"{folder}: index holds {meta['dim']}-d embeddings, the model makes {expected_dim}-d")
    for name, key in ((INDEX_FILE, "index_sha256"), (ARRAYS_FILE, "arrays_sha256")):
        path = folder / name
        if not path.is_file():
            raise GeolocError(f"{path}: missing (the index folder is incomplete)")
        if sha256_file(path) != meta[key]:
            raise GeolocError(f"{path}: does not match {META_FILE} (damaged, or replaced after saving)")
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
            lat, lon, paths = z["lat"], z["lon"], z["paths"].tolist()
    except Exception as exc:  # faiss raises RuntimeError, numpy ValueError/KeyError/BadZipFile
        raise GeolocError(f"{folder}: cannot read index ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if not (index.ntotal == len(lat) == len(lon) == len(paths) == meta["count"]) or index.d != meta["dim"]:
        raise GeolocError(f"{folder}: index holds {index.ntotal} x {index.d} vectors but the sidecar describes "
                          f"{meta['count']} x {meta['dim']} ({len(paths)} paths)")
    set_search_params(index, **meta["search_params"])
    return index, Sidecar(paths=paths, lat=lat, lon=lon, dim=meta["dim"], kind=meta["kind"],
                          checkpoint_sha256=meta["checkpoint_sha256"], search_params=meta["search_params"])
