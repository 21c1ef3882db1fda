"""FAISS indexes of training-photo embeddings, saved with a sidecar that ties them to their model.

An index folder holds the FAISS index (index.faiss, or shards index-000.faiss, index-001.faiss, ...
of at most index.shard_size vectors each), index.npz (coordinates and photo paths, row i = FAISS id i)
and index.json (format version, kind, dimension, count, search parameters, sha256 of the model
checkpoint and of every index file). index.json is written last, so a folder whose JSON matches its
other files was saved completely. Embeddings are L2-normalised, so inner product = cosine similarity.

Embeddings may come from an array or from a .npy file on disk (`NpyRows`): building reads them
ADD_CHUNK rows at a time, so a million 512-d vectors (2 GiB) never need to be in memory at once.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from retrieval import GeolocError
from retrieval.choices import INDEX_KINDS, REFINES
from retrieval.files import STALE_TMP_S, atomic_write, atomic_write_json, remove_stale_tmp, sha256_file

FORMAT_VERSION = 2  # 2: index files listed under "shards" (1 had a single index_sha256)
INDEX_FILE, ARRAYS_FILE, META_FILE = "index.faiss", "index.npz", "index.json"
SHARD_FILE = re.compile(r"index(-\d{3})?\.faiss")
ADD_CHUNK = 65536
SEARCH_PARAMS = ("nprobe", "k_factor", "ef_search")
REFINE_FACTORY = {"flat": ",RFlat", "sq8": ",Refine(SQ8)", "none": ""}  # index.refine -> faiss.index_factory's suffix
# Shards searched in parallel, a thread each: one query then uses every core (FAISS searches one
# query's lists on one thread), 1.8x faster with 4 shards of 1M photos; batches take as long either
# way (benchmarks/RESULTS.md, "Chunked and sharded index build").
THREADED_SHARDS = True


class NpyRows:
    """The rows of a 2-D .npy file, read a slice at a time. Each read maps the file only while copying
    the slice: a long-lived np.memmap would keep every page it has touched in this process's memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        m = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype = m.shape, m.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.array(np.load(self.path, mmap_mode="r")[rows])


def _shape(x, what: str, dim: int | None = None) -> tuple[int, int]:
    shape = tuple(x.shape)
    if len(shape) != 2 or shape[0] == 0 or (dim is not None and shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise GeolocError(f"{what}: expected a non-empty {want} array, got shape {shape}")
    return shape


def _rows(x, start: int, stop: int, what: str) -> np.ndarray:
    """Rows start:stop as a float32 matrix (no copy for a float32 array), checked finite."""
    rows = np.ascontiguousarray(x[start:stop], dtype=np.float32)
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise GeolocError(f"{what}: row {start + int(np.argmax(bad))} is not finite (NaN or inf)")
    return rows


def _as_matrix(x, what: str, dim: int | None = None) -> np.ndarray:
    x = x if hasattr(x, "shape") else np.asarray(x, dtype=np.float32)
    return _rows(x, 0, _shape(x, what, dim)[0], what)


def _sample(x, n: int, size: int, seed: int) -> np.ndarray:
    """`size` random rows of x, gathered chunk by chunk in row order."""
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, size), replace=False))
    parts = []
    for start in range(0, n, ADD_CHUNK):
        lo, hi = np.searchsorted(rows, [start, start + ADD_CHUNK])
        if hi > lo:
            parts.append(_rows(x, start, start + ADD_CHUNK, "embeddings")[rows[lo:hi] - start])
    return np.concatenate(parts)


def empty_index(embeddings, kind: str = "flat", nlist: int = 1024, pq_m: int = 64, pq_nbits: int = 8,
                refine: str = "flat", hnsw_m: int = 32, ef_construction: int = 80, train_size: int = 0,
                seed: int = 0) -> faiss.Index:
    """An index of this kind, trained (ivfpq) on a sample of `embeddings` but holding none of them."""
    n, d = _shape(embeddings, "embeddings")
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        return index
    if kind != "ivfpq":
        raise GeolocError(f"index kind {kind!r}: expected one of {', '.join(INDEX_KINDS)}")
    if d % pq_m:
        raise GeolocError(f"ivfpq: pq_m {pq_m} must divide the embedding dimension {d}")
    if n < max(nlist, 2 ** pq_nbits):
        raise GeolocError(f"ivfpq: {n} embeddings are too few for nlist {nlist} and {2 ** pq_nbits} PQ "
                          f"centroids; use kind flat (exact, and fast at this size)")
    if refine not in REFINES:
        raise GeolocError(f"ivfpq refine {refine!r}: expected one of {', '.join(REFINES)}")
    index = faiss.index_factory(d, f"IVF{nlist},PQ{pq_m}x{pq_nbits}{REFINE_FACTORY[refine]}", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.seed = seed
    # polysemous code ordering only helps Hamming-distance filtering, which search never uses, and
    # would dominate the training time
    ivf.do_polysemous_training = False
    index.train(_sample(embeddings, n, train_size or 64 * nlist, seed))
    return index


def combine_shards(shards: list[faiss.Index]) -> faiss.Index:
    """One index over several whose ids follow on (the first vector of shard 1 is id len(shard 0))."""
    if len(shards) == 1:
        return shards[0]
    index = faiss.IndexShards(shards[0].d, THREADED_SHARDS, True)
    for s in shards:
        index.add_shard(s)
    return index


def shards_of(index: faiss.Index) -> list[faiss.Index]:
    """The shards of an IndexShards (views, valid while `index` lives), or [index]."""
    if isinstance(index, faiss.IndexShards):
        return [faiss.downcast_index(index.at(i)) for i in range(index.count())]
    return [index]


def fill(empty: faiss.Index, embeddings, shard_size: int = 0, progress: bool = True) -> faiss.Index:
    """A copy of `empty` holding every row of `embeddings` (FAISS id = row), added ADD_CHUNK rows at a
    time; with shard_size, several copies of at most shard_size vectors each. ivfpq copies share the
    trained coarse quantizer and codebooks, so a vector gets the same code in whichever shard it lands."""
    n, _ = _shape(embeddings, "embeddings")
    size = shard_size if 0 < shard_size < n else n
    shards = []
    with tqdm(total=n, desc="index", unit="vec", disable=not progress) as bar:
        for first in range(0, n, size):
            shard = faiss.clone_index(empty)
            for start in range(first, min(n, first + size), ADD_CHUNK):
                stop = min(n, first + size, start + ADD_CHUNK)
                shard.add(_rows(embeddings, start, stop, "embeddings"))
                bar.update(stop - start)
            shards.append(shard)
    return combine_shards(shards)


def build_index(embeddings, kind: str = "flat", nlist: int = 1024, pq_m: int = 64, pq_nbits: int = 8,
                refine: str = "flat", nprobe: int = 64, k_factor: float = 16.0, hnsw_m: int = 32,
                ef_construction: int = 80, ef_search: int = 64, train_size: int = 0, shard_size: int = 0,
                seed: int = 0, progress: bool = True) -> faiss.Index:
    """A FAISS inner-product index over the rows of `embeddings` (an array, np.memmap or NpyRows;
    FAISS id = row).

    flat: exact. ivfpq: IVF with nlist lists and PQ codes of pq_m x pq_nbits bits, trained on train_size
    random rows (0: 64 per list), whose k_factor * k best candidates are re-ranked with the full vectors
    (refine flat: exact, 4 bytes per dimension more), 8-bit scalar-quantised ones (sq8: 1 byte) or not at
    all (none: PQ alone ranks poorly, see benchmarks/RESULTS.md). hnsw: HNSW graph with hnsw_m links per
    node. The search parameters (nprobe lists searched, k_factor, HNSW ef_search) are set on the index;
    the defaults reach recall@10 >= 0.95 at a million photos (benchmarks/RESULTS.md).
    shard_size > 0 splits the index into faiss.IndexShards of at most that many vectors, saved as one
    file each; every shard re-ranks its own k_factor * k candidates, so recall can only rise.
    """
    empty = empty_index(embeddings, kind, nlist=nlist, pq_m=pq_m, pq_nbits=pq_nbits, refine=refine,
                        hnsw_m=hnsw_m, ef_construction=ef_construction, train_size=train_size, seed=seed)
    index = fill(empty, embeddings, shard_size, progress)
    set_search_params(index, nprobe=nprobe, k_factor=k_factor, ef_search=ef_search)
    return index


def index_params(cfg) -> dict:
    """build_index keyword arguments from an IndexConfig."""
    return dict(kind=cfg.kind, nlist=cfg.nlist, pq_m=cfg.pq_m, pq_nbits=cfg.pq_nbits, refine=cfg.refine,
                hnsw_m=cfg.hnsw_m, ef_construction=cfg.ef_construction, train_size=cfg.train_size,
                nprobe=cfg.nprobe, k_factor=cfg.k_factor, ef_search=cfg.ef_search, shard_size=cfg.shard_size)


def set_search_params(index: faiss.Index, nprobe: int | None = None, k_factor: float | None = None,
                      ef_search: int | None = None) -> dict:
    """Set whichever search parameters apply to this index (to every shard); returns those that did."""
    if isinstance(index, faiss.IndexShards):
        return [set_search_params(s, nprobe, k_factor, ef_search) for s in shards_of(index)][0]
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
    place_mean: dict = field(default_factory=dict)  # how the rows were made from the embeddings (empty: as embedded)


def save_index(folder: str | Path, index: faiss.Index, sidecar: Sidecar) -> Path:
    """Write the index file(s), index.npz and (last) index.json into folder, each atomically."""
    folder = Path(folder)
    n = index.ntotal
    if not (len(sidecar.paths) == len(sidecar.lat) == len(sidecar.lon) == n):
        raise GeolocError(f"save_index: {n} vectors but {len(sidecar.paths)} paths, {len(sidecar.lat)} lat, "
                          f"{len(sidecar.lon)} lon")
    if index.d != sidecar.dim:
        raise GeolocError(f"save_index: index dimension {index.d} != sidecar dim {sidecar.dim}")
    parts = shards_of(index)
    # temporary files a killed build left (".index.faiss.xxxx.tmp", ...): never read, only in the way
    remove_stale_tmp(folder, [INDEX_FILE, ARRAYS_FILE, META_FILE, *(f"index-{i:03d}.faiss" for i in range(len(parts)))],
                     min_age_s=STALE_TMP_S)
    shards = []
    for i, part in enumerate(parts):
        name = INDEX_FILE if len(parts) == 1 else f"index-{i:03d}.faiss"
        path = atomic_write(folder / name, lambda p: faiss.write_index(part, str(p)))
        shards.append({"file": name, "count": int(part.ntotal), "sha256": sha256_file(path)})

    def arrays(p: Path) -> None:
        with open(p, "wb") as f:  # np.savez on a name would append ".npz" to the temporary file's name
            np.savez(f, lat=np.asarray(sidecar.lat, dtype=np.float64), lon=np.asarray(sidecar.lon, dtype=np.float64),
                     paths=np.array([str(s) for s in sidecar.paths], dtype=str))

    atomic_write(folder / ARRAYS_FILE, arrays)
    atomic_write_json(folder / META_FILE, {
        "format_version": FORMAT_VERSION, "kind": sidecar.kind, "dim": int(sidecar.dim), "count": int(n),
        "metric": "inner_product", "checkpoint_sha256": sidecar.checkpoint_sha256, "shards": shards,
        "arrays_sha256": sha256_file(folder / ARRAYS_FILE),
        "search_params": {**sidecar.search_params, **set_search_params(index)},
        "place_mean": sidecar.place_mean,
    })
    # files of an earlier build with other sharding, which the new index.json no longer lists
    kept = {s["file"] for s in shards}
    for old in folder.glob("index*.faiss"):
        if old.name not in kept:
            old.unlink()
    return folder


def read_meta(path: Path) -> dict:
    """An index folder's index.json, checked field by field (a sidecar cannot point outside its folder)."""
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
    fields = {"kind": str, "dim": int, "count": int, "checkpoint_sha256": str, "shards": list,
              "arrays_sha256": str, "search_params": dict}
    for name, tp in fields.items():
        if not isinstance(meta.get(name), tp) or isinstance(meta.get(name), bool):
            raise GeolocError(f"{path}: corrupt index sidecar (field '{name}' missing or not {tp.__name__})")
    unknown = set(meta["search_params"]) - set(SEARCH_PARAMS)
    if unknown:
        raise GeolocError(f"{path}: corrupt index sidecar (unknown search parameter '{sorted(unknown)[0]}')")
    for i, s in enumerate(meta["shards"]):
        # the file name must be one save_index writes: a sidecar cannot point outside its folder
        if not (isinstance(s, dict) and isinstance(s.get("file"), str) and SHARD_FILE.fullmatch(s["file"])
                and isinstance(s.get("count"), int) and isinstance(s.get("sha256"), str)):
            raise GeolocError(f"{path}: corrupt index sidecar (shards[{i}] is not {{file: index[-NNN].faiss, "
                              f"count, sha256}})")
    if not meta["shards"]:
        raise GeolocError(f"{path}: corrupt index sidecar (no index file listed under 'shards')")
    return meta


def _check_file(path: Path, sha256: str) -> None:
    if not path.is_file():
        raise GeolocError(f"{path}: missing (the index folder is incomplete)")
    if sha256_file(path) != sha256:
        raise GeolocError(f"{path}: does not match {META_FILE} (damaged, or replaced after saving)")


def _read(folder: Path, what, reader):
    try:
        return reader()
    except Exception as exc:  # faiss raises RuntimeError, numpy ValueError/KeyError/BadZipFile
        raise GeolocError(f"{folder / what}: cannot read ({type(exc).__name__}: {exc})".splitlines()[0]) from exc


def load_index(folder: str | Path, expected_checkpoint_hash: str | None = None,
               expected_dim: int | None = None) -> tuple[faiss.Index, Sidecar]:
    """Read an index folder, refusing one that does not belong to the expected model or is damaged.
    Several shard files come back as one faiss.IndexShards whose ids are row numbers."""
    folder = Path(folder)
    meta = read_meta(folder / META_FILE)
    if expected_checkpoint_hash is not None and meta["checkpoint_sha256"] != expected_checkpoint_hash:
        raise GeolocError(f"{folder}: index was built with model checkpoint sha256 {meta['checkpoint_sha256'][:12]}, "
                          f"not this model's {expected_checkpoint_hash[:12]}; rebuild it with `geoloc index build`")
    if expected_dim is not None and meta["dim"] != expected_dim:
        raise GeolocError(f"{folder}: index holds {meta['dim']}-d embeddings, the model makes {expected_dim}-d")
    _check_file(folder / ARRAYS_FILE, meta["arrays_sha256"])
    shards = []
    for s in meta["shards"]:
        path = folder / s["file"]
        _check_file(path, s["sha256"])
        shard = _read(folder, s["file"], lambda: faiss.read_index(str(path)))
        if shard.ntotal != s["count"] or shard.d != meta["dim"]:
            raise GeolocError(f"{path}: holds {shard.ntotal} x {shard.d} vectors, {META_FILE} lists "
                              f"{s['count']} x {meta['dim']}")
        shards.append(shard)
    index = combine_shards(shards)

    def arrays():
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
            return z["lat"], z["lon"], z["paths"].tolist()

    lat, lon, paths = _read(folder, ARRAYS_FILE, arrays)
    if not (index.ntotal == len(lat) == len(lon) == len(paths) == meta["count"]):
        raise GeolocError(f"{folder}: index holds {index.ntotal} x {index.d} vectors but the sidecar describes "
                          f"{meta['count']} x {meta['dim']} ({len(paths)} paths)")
    set_search_params(index, **meta["search_params"])
    return index, Sidecar(paths=paths, lat=lat, lon=lon, dim=meta["dim"], kind=meta["kind"],
                          checkpoint_sha256=meta["checkpoint_sha256"], search_params=meta["search_params"],
                          place_mean=meta.get("place_mean") if isinstance(meta.get("place_mean"), dict) else {})


def nearest_of(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) similarities and indices of each query's k most similar db rows (inner product), exact."""
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, np.float32))
    return index.search(np.ascontiguousarray(q, np.float32), min(k, len(db)))
