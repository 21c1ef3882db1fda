"""The Python API: a trained embedding run loaded once and asked many times.

    from retrieval.api import Locator

    loc = Locator.load("runs/demo/methods/embedding_geodesic")
    for a in loc.locate(["photo.jpg", "more_photos/"]):
        print(a.source, a.lat, a.lon, a.confidence, a.error or a.warning or "")

`geoloc query`, `geoloc evaluate` (for embedding runs), the benchmark and scripts/bench_query.py all
locate photos through a Locator.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval import GeolocError
from retrieval.answering.geometry import OFF, Setting
from retrieval.answering.index import nearest_of, search
from retrieval.answering.prior import CellPrior, check_complete, rerank
from retrieval.answering.rerank import check, local_store, query_features, resolve_rerank, validation_features
from retrieval.answering.route import Route, StreetWalks, order_photos, read_route_list, route_of
from retrieval.answering.run_index import holds, open_index, place_setting, training_database
from retrieval.answering.vote import VOTE_MODES, VOTE_RULES, choose_mode, vote
from retrieval.config import Config
from retrieval.data.manifests import IMAGE_SUFFIXES, load_rgb
from retrieval.data.splits import load_data
from retrieval.data.streets import load_graph, street_source
from retrieval.files import atomic_write_json, matching_record
from retrieval.geo import haversine_m
from retrieval.learning.inference import embed
from retrieval.learning.transforms import decode_images, to_cached
from retrieval.run import Run

MIN_SIDE_PX = 32  # smaller images hold too little to locate: refused, not answered
MAX_ASPECT = 4.0  # a panorama strip or a sliver: answered from its centre crop only, with a warning
CHUNK = 256  # images decoded and embedded together by locate(): bounds the memory a large folder takes


@dataclass
class Neighbour:
    path: str
    lat: float
    lon: float
    similarity: float  # after a geometric rerank, its score (retrieval.answering.geometry)
    distance_m: float  # from the answer
    inliers: int = -1  # local features matched under one geometry (index.rerank); -1: not checked


@dataclass
class Answer:
    source: str  # the file, or "<image N>" for an image passed in memory
    lat: float = float("nan")
    lon: float = float("nan")
    confidence: float = 0.0
    neighbours: list[Neighbour] = field(default_factory=list)  # the top k, best first
    vote: str = ""
    ms: float = 0.0  # this photo's share of the time from decoding to the answer
    warning: str | None = None
    error: str | None = None  # set when the image could not be located; nothing else is then

    def to_dict(self) -> dict:
        """What `geoloc query --json` prints for this photo."""
        if self.error:
            return {"path": self.source, "error": self.error}
        out = {"path": self.source, "lat": self.lat, "lon": self.lon, "confidence": self.confidence,
               "vote": self.vote, "ms": round(self.ms, 1),
               "neighbours": [asdict(n) for n in self.neighbours]}
        return {**out, "warning": self.warning} if self.warning else out


# --- inputs ----------------------------------------------------------------------------------------

def image_files(folder: Path) -> list[Path]:
    found = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not found:
        raise GeolocError(f"{folder}: no .jpg/.jpeg/.png images in this folder")
    return found


def check_shape(image: Image.Image, source: str) -> str | None:
    """Refuse images too small to locate; return a warning for very elongated ones (None otherwise)."""
    w, h = image.size
    if min(w, h) < MIN_SIDE_PX:
        raise GeolocError(f"{source}: image is {w} x {h} px, too small to locate (need at least "
                          f"{MIN_SIDE_PX} px a side)")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return (f"{source}: image is {w} x {h} px (aspect {max(w, h) / min(w, h):.1f}:1): only its centre "
                "square is seen, the answer may be unreliable")
    return None


def _from_array(a: np.ndarray, source: str) -> Image.Image:
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise GeolocError(f"{source}: expected a uint8 array of H x W or H x W x 3 (RGB) or 4 (RGBA), "
                          f"got {a.dtype} {tuple(a.shape)}")
    return Image.fromarray(a).convert("RGB")


def _sources(images) -> list[tuple[str, object]]:
    """(name, item) for every image asked about: folders expanded, in-memory images named by position;
    an item that names nothing readable stays, to be answered with its error."""
    items = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
    out: list[tuple[str, object]] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            p = Path(item)
            if p.is_dir():
                try:
                    out += [(str(f), f) for f in image_files(p)]
                except GeolocError as exc:
                    out.append((str(p), exc))
            else:
                out.append((str(p), p if p.is_file() else GeolocError(f"{p}: no such image or folder")))
        else:
            out.append((f"<image {i}>", item))
    return out


def _read(source: str, item) -> Image.Image:
    if isinstance(item, GeolocError):
        raise item
    if isinstance(item, Path):
        return load_rgb(item)
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        return _from_array(item, source)
    raise GeolocError(f"{source}: not an image (a path, a PIL image or a uint8 array), got {type(item).__name__}")


# --- the vote mode, chosen once per checkpoint -----------------------------------------------------

def resolve_vote(run_dir: Path, cfg: Config, model, side, choose: bool = True, rerank_setting: Setting = OFF,
                 store=None) -> tuple[str, dict]:
    """index.vote, or for auto the mode chosen on the validation views (searched against the training
    photos alone, with the index's place means) and its record; chosen once per checkpoint and kept in
    RUN/vote.json. The training photos' stored index rows are reused when the index holds them first.
    choose False (answering: the run alone, no data): without a record for this checkpoint, pool. With a
    geometric rerank (rerank_setting, the database's local features in store) the validation views'
    neighbours are reranked before the modes are compared, as the answers will be."""
    if cfg.index.vote != "auto":
        return cfg.index.vote, {}
    path, key = Run(run_dir).vote, {"checkpoint_sha256": side.checkpoint_sha256,
                                           "place_mean": list(place_setting(cfg)), "k": cfg.index.k,
                                           "vote_radius_m": cfg.index.vote_radius_m, "rules": VOTE_RULES}
    reranked = not rerank_setting.off and store is not None
    # a record chosen with another rerank setting, or with none, is chosen again (a record from before the
    # rerank existed has no such field: it reads as none)
    key["rerank"] = [rerank_setting.k, rerank_setting.weight] if reranked else None
    rec = matching_record(path, key, lambda r: r.get("mode") in VOTE_MODES)
    if rec is not None:
        return rec["mode"], rec
    if not choose:
        warnings.warn(f"{run_dir}: index.vote=auto, but no mode was chosen for this checkpoint ({Run.VOTE}): "
                      f"answering with pool; `geoloc index build --run {run_dir}` chooses it", stacklevel=3)
        return "pool", {}
    splits = load_data(cfg)
    train, val = splits["train"], splits.get("val")
    if val is None or len(val) == 0:
        rec = {**key, "mode": "pool", "why": "no validation views: the default mode"}
    else:
        # the check reads database rows' features: the candidates must be the training photos' own rows
        reranked = reranked and holds(side, train)
        db = training_database(run_dir, cfg, model, side, train, "vote")
        q = embed(model, decode_images(val, cfg.data.resize, "vote: decode val"), cfg, "vote: embed val")
        sims, ids = nearest_of(db, q, max(cfg.index.k, rerank_setting.k) if reranked else cfg.index.k)
        if reranked:
            feats = validation_features(store, side, train, val, cfg)
            sims, ids, _ = check(rerank_setting, store, cfg, sims, ids, feats)
            sims, ids = sims[:, :cfg.index.k], ids[:, :cfg.index.k]
        mode, medians = choose_mode(train.lat[ids], train.lon[ids], sims, val.lat, val.lon, cfg.index.vote_radius_m)
        rec = {**key, "mode": mode, "val_median_error_m": medians, "val_views": len(val)}
    atomic_write_json(path, rec)
    return rec["mode"], rec


# --- the Locator -----------------------------------------------------------------------------------

@dataclass
class Locator:
    run: Run  # the run folder it answers with
    cfg: Config
    model: object
    index: object  # faiss.Index
    side: object  # retrieval.answering.index.Sidecar: the database photos' paths and positions
    mode: str  # the vote mode
    vote_record: dict  # how the mode was chosen ({} when index.vote names it)
    prior: CellPrior | None
    check: Setting = OFF  # the geometric rerank (index.rerank; retrieval.answering.rerank)
    check_record: dict = field(default_factory=dict)  # how it was chosen ({} unless index.rerank is auto)
    local: object = None  # retrieval.answering.local_features.LocalStore of the database, when it reranks

    @classmethod
    def load(cls, run_dir: str | Path, cfg: Config | None = None, choose: bool = False) -> "Locator":
        """A trained embedding run with its index (`geoloc index build`), the vote mode and the cells
        prior if it has one; cfg defaults to the run's config.yaml. Answering reads the run alone: the vote
        mode and rerank setting that `auto` asks for were chosen on the validation views by `geoloc index
        build` or `evaluate` (choose=True: choose them now where the run has no record, reading its data)."""
        run = Run(run_dir)
        kind = run.info().get("kind") if run.info_file.is_file() else "embedding"
        if kind != "embedding":
            raise GeolocError(f"{run}: a {kind} run; the Locator (query, serve, routes) answers with an embedding "
                              "run: geoloc train embedding, or geoloc index build --backbone for one without training")
        cfg = cfg or run.config()
        check_complete(run, cfg)
        model, index, side = open_index(run, cfg)
        local = local_store(run, cfg)
        setting, how = resolve_rerank(run, cfg, model, side, local, choose)
        mode, record = resolve_vote(run, cfg, model, side, choose, setting, local)  # the vote of reranked neighbours
        return cls(run, cfg, model, index, side, mode, record, CellPrior.load(run), setting, how, local)

    def neighbours(self, images: list, n: int, use_prior: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(queries, n) similarities and database ids of cached images' nearest photos, best first (id -1
        where the index found fewer), reranked by the cells prior when the run has one."""
        return self.ranked(embed(self.model, images, self.cfg, "embed queries"), images, n, use_prior)

    def ranked(self, q: np.ndarray, images: list, n: int, use_prior: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """neighbours() for descriptors q already embedded from images (the prior reads the images)."""
        if self.prior is None or not use_prior:
            return search(self.index, q, n)
        sims, ids = search(self.index, q, max(n, self.cfg.index.cell_prior_candidates))
        sims, ids = rerank(sims, ids, self.prior.log_probs(images), self.prior.classes(self.side.lat, self.side.lon),
                           self.prior.weight)
        return sims[:, :n], ids[:, :n]

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Database positions of neighbour ids; NaN where an id is -1 (no neighbour: it does not vote)."""
        missing = ids < 0
        safe = np.maximum(ids, 0)
        return np.where(missing, np.nan, self.side.lat[safe]), np.where(missing, np.nan, self.side.lon[safe])

    def locate(self, images, k: int | None = None) -> list[Answer]:
        """One Answer per image: paths, folders (their .jpg/.jpeg/.png, recursively), PIL images or uint8
        arrays, one or a list. An image that cannot be read or is too small gets an Answer with `error`
        and the others are still answered; a very elongated one is answered with a `warning`."""
        k = self.cfg.index.k if k is None else k
        if k < 1:
            raise GeolocError(f"k={k}: at least 1 neighbour must vote")
        sources = _sources(images)
        answers: list[Answer] = []
        for start in range(0, len(sources), CHUNK):
            answers += self._locate_chunk(sources[start:start + CHUNK], k)
        return answers

    def checked(self, cached: list, feats: list, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """neighbours(), then the geometric rerank when the run has one: (scores, ids, inliers), n columns."""
        sims, ids = self.neighbours(cached, max(n, self.check.k))
        sims, ids, inl = check(self.check, self.local, self.cfg, sims, ids, feats)
        return sims[:, :n], ids[:, :n], inl[:, :n]

    def _locate_chunk(self, sources: list[tuple[str, object]], k: int) -> list[Answer]:
        t0 = time.perf_counter()
        answers, cached, feats, good = self._read_all(sources)
        if good:
            sims, ids, inl = self.checked(cached, feats, k)
            self._answer(answers, good, sims, ids, 1000 * (time.perf_counter() - t0) / len(good), inl)
        return answers

    def _read_all(self, sources: list[tuple[str, object]]) -> tuple[list[Answer], list, list, list[int]]:
        """An Answer per source (its error, or its warning), the readable ones decoded for the model and
        their local features when the run reranks (taken now: the photo at full size is not kept), and
        which answers those are."""
        answers, cached, feats, good = [], [], [], []
        for source, item in sources:
            try:
                image = _read(source, item)
                answers.append(Answer(source, warning=check_shape(image, source)))
            except GeolocError as exc:
                answers.append(Answer(source, error=str(exc)))
                continue
            cached.append(to_cached(image, self.cfg.data.resize))
            if not self.check.off:
                feats.append(query_features(image, self.cfg))
            good.append(len(answers) - 1)
        return answers, cached, feats, good

    def _answer(self, answers: list[Answer], good: list[int], sims: np.ndarray, ids: np.ndarray, ms: float,
                inl: np.ndarray | None = None) -> None:
        """Fill the readable photos' answers from their neighbours (rows of sims/ids, best first)."""
        inl = np.full(ids.shape, -1) if inl is None else inl
        lat, lon = self.positions(ids)
        v = vote(lat, lon, np.where(ids < 0, np.nan, sims), self.mode, self.cfg.index.vote_radius_m)
        for row, i in enumerate(good):
            a, ok = answers[i], ids[row] >= 0
            dist = haversine_m(v.lat[row], v.lon[row], lat[row, ok], lon[row, ok])
            a.lat, a.lon, a.confidence, a.vote, a.ms = float(v.lat[row]), float(v.lon[row]), \
                float(v.confidence[row]), self.mode, ms
            a.neighbours = [Neighbour(self.side.paths[j], float(self.side.lat[j]), float(self.side.lon[j]),
                                      float(s), float(d), int(c))
                            for j, s, d, c in zip(ids[row, ok], sims[row, ok], dist, inl[row, ok])]

    def locate_route(self, images, times=None, streets: str | Path | None = None) -> Route:
        """Photos taken in order, located together along the streets (retrieval.answering.route; settings: cfg.route).
        images: paths, folders, PIL images or arrays, or one CSV listing them (path[,date][,order][,route]);
        ordered by capture time (EXIF, a CSV's date, or `times`) when every photo has one, else by the CSV's
        order column, else by file name. Each photo keeps its single-photo Answer beside its place on the
        route; an unreadable photo is skipped and named in Route.notes, and the route goes on."""
        if isinstance(images, (str, Path)) and str(images).lower().endswith(".csv"):
            sources, times, order, groups = read_route_list(Path(images))
        else:
            sources, order, groups = _sources(images), None, None
        photos = order_photos(sources, times, order, groups)
        t0 = time.perf_counter()
        answers, cached, feats, good = self._read_all(photos.sources)
        # One search serves both: each photo's own answer votes among its first index.k, the route decodes
        # over route.k candidates.
        k, n = self.cfg.index.k, max(self.cfg.index.k, self.cfg.route.k)
        # The geometric check reorders (and rescores) the candidates before both.
        sims, ids, inl = self.checked(cached, feats, n) if cached else (np.zeros((0, n)), np.zeros((0, n), int), None)
        if good:
            self._answer(answers, good, sims[:, :k], ids[:, :k], 1000 * (time.perf_counter() - t0) / len(good),
                         inl[:, :k])
        sims, ids = sims[:, :self.cfg.route.k], ids[:, :self.cfg.route.k]
        lat, lon = self.positions(ids)
        walks = self.street_walks(streets) if self.cfg.route.distance == "geodesic" else None
        return route_of(photos, answers, ids, sims, lat, lon, self.cfg.route, walks)

    def street_walks(self, streets: str | Path | None = None) -> StreetWalks:
        """The database snapped onto the street graph (streets, else the run's: retrieval.methods.embedding.
        street_source), loaded once per Locator and street graph."""
        source = str(streets or street_source(self.cfg))
        if not source:
            raise GeolocError(f"{self.run}: route.distance=geodesic needs a street graph and the run has none "
                              "(no streets.graphml beside its data, no embedding.streets): pass --streets (an "
                              ".osm/.osm.bz2/.graphml file) or decode with straight-line steps (--distance euclidean)")
        key = (source, self.cfg.route.max_snap_m)
        if getattr(self, "_walks_key", None) != key:  # not a dataclass field: a cache, built on first use
            self._walks = StreetWalks(load_graph(source, self.cfg.embedding.network_type), self.side.lat,
                                      self.side.lon, self.cfg.route.max_snap_m)
            self._walks_key = key
        return self._walks


# --- evaluation of an embedding run ----------------------------------------------------------------
