"""Typed configuration: dataclasses filled from YAML files and `--set section.key=value` overrides."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retrieval import GeolocError
from retrieval.choices import (ARCHS, BACKBONE_FEATURES, CENTROIDS, DECISIONS, DISTANCES, GRID_KINDS, HUB,
                               INDEX_KINDS, LOSSES, METHODS, MINERS, NETWORK_TYPES, OPTIMIZERS, POOLINGS,
                               POSITIVES, PRECISIONS, REFINES, RERANK_MODES, SCHEDULES, SPLIT_MODES,
                               SUPERVISION, VOTE_MODES)


@dataclass
class DataConfig:
    train: str = ""  # data folder (train.csv [val.csv] [test.csv]) or one manifest CSV (--data)
    test: str = ""  # manifest CSV of test photos (empty: the folder's test.csv, or split `train` spatially)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # How a missing val (or test) set is carved out of the training photos: place (every held-out photo
    # has a training photo within place_radius_m: place recognition), spatial (whole blocks, nothing
    # within split_gap_m: unseen streets) or random (the seed study).
    split_mode: str = "place"
    place_radius_m: float = 25.0
    split_gap_m: float = 25.0  # spatial: no held-out photo within this distance of a training photo
    split_block_m: float = 250.0  # spatial: side of the square blocks assigned whole to one split
    skip_bad: bool = False
    image_size: int = 224
    resize: int = 256
    num_workers: int = 0  # DataLoader processes; 0 measured as fast on 2 cores (benchmarks/RESULTS.md)


@dataclass
class AugmentConfig:
    enabled: bool = True
    perspective: float = 0.3  # RandomPerspective distortion scale
    perspective_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    hflip: bool = False  # the study's "future work"; a mirrored street is a different street
    random_crop: bool = False  # crop image_size at a random place of the resized image (a small pan/tilt)


@dataclass
class ModelConfig:
    # resnet18 | resnet34 | resnet50 | efficientnet_lite0/1/2 | hub (retrieval.learning.backbones)
    arch: str = "resnet50"
    # imagenet | places365:<file> | <state-dict file> | <geoloc run folder> | hub:OWNER/REPO:ENTRY[k=v] | none
    weights: str = "imagenet"
    lock_factor: float = 0.0  # share of layers frozen (the study: 0.7 on pretrained weights)
    embed_dim: int = 512  # 0: no projection head, the pooled trunk features are the descriptor
    pooling: str = "gem"  # the embedding's: gem (learnable p) | avg (the trunk's own average)
    freeze_bn: bool = False  # keep BatchNorm statistics fixed (see retrieval.learning.models.freeze_batchnorm)


@dataclass
class TrainConfig:
    epochs: int = 25  # upper bound; an epoch is also the validation and checkpoint cadence
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | sgd (the study's, with momentum)
    lr: float = 0.001
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0001
    schedule: str = "cosine"  # cosine (by step, after warmup) | exponential (x lr_decay per epoch: the study)
    lr_decay: float = 0.99
    warmup_steps: int = 50  # linear warmup from 0 (cosine)
    # > 0: stop after this much wall time, training and validation together (validation at most 15% of
    # it: retrieval.learning.train.VAL_SHARE); the cosine then runs over it
    max_minutes: float = 0.0
    precision: str = "bf16"  # bf16 | fp32
    # 0: a full pass over the data. The embedding draws its batches of places at random, so there it
    # sets the epoch's length (validation after each), even beyond one pass.
    max_steps_per_epoch: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default


@dataclass
class CellsConfig:
    grid: str = "voronoi"  # voronoi | square
    cell_size_m: float = 150.0  # square side, or Voronoi centre spacing
    border_spacing_m: float = 40.0  # Voronoi centres keep this far from the boundary
    boundary: str = ""  # GeoJSON or lat,lng CSV; empty: hull of the training photos
    centroid: str = "photos"  # photos | polygon: where a predicted cell puts the photo
    # > 0: train on soft labels, each class weighted exp(-d / label_smooth_m) by the distance d from the
    # photo to the class's centroid (PIGEON's haversine smoothing): a neighbouring cell is nearly right,
    # not as wrong as the far side of the city. 0: the study's one-hot labels.
    label_smooth_m: float = 0.0
    # auto: answer with the cell whose centroid has the most probability within R of it, R chosen on the
    # validation views among 0-3 cell sizes (RUN/decision.json): when the classifier spreads its belief
    # over neighbouring cells, their neighbourhood beats a lone likelier cell far away. argmax: the
    # study's most probable cell.
    decision: str = "auto"


@dataclass
class RegressionConfig:
    # > 0: this weight times a cross-entropy over the `cells` grid, from a linear classifier on the
    # trunk's features, added to the coordinates' MSE in training: the trunk learns the district from
    # 100-odd classes faster than from two numbers (benchmarks/RESULTS.md). 0: the study's MSE alone.
    cell_loss_weight: float = 0.0
    # > 1: the last layer gives a mixture of this many Gaussians over the coordinates, trained by
    # likelihood, and the answer is the most probable component's mean: MSE puts a photo that could be
    # in two districts at their midpoint (a mixture density network). 1: the study's MSE head.
    components: int = 1


@dataclass
class EmbeddingConfig:
    positives: str = "geodesic"  # geodesic | euclidean
    pos_radius_m: float = 25.0  # positives: this close (along the streets) ...
    # ... and, by supervision: heading (facing within heading_tol_deg of each other; needs headings),
    # weak (the candidate closest in embedding space, as NetVLAD), radius (every candidate), or auto
    # (heading where the manifest has headings, else weak)
    supervision: str = "auto"
    heading_tol_deg: float = 45.0
    neg_radius_m: float = 100.0  # negatives: this far apart; in between, neither
    # > 0: pairs this close in a straight line are never negatives, however far apart along the streets
    # (the two sides of one building may look alike). Off by default: on London and the demo it did not
    # measurably help (benchmarks/RESULTS.md). Changes nothing for euclidean positives.
    never_negative_within_m: float = 0.0
    places_per_batch: int = 32  # P
    photos_per_place: int = 4  # K
    loss: str = "multi_similarity"  # multi_similarity | triplet | contrastive
    # triplet: semihard | hard | all | hardest; pair losses: multi_similarity (pml's informative-pair
    # rule) | all
    miner: str = "multi_similarity"
    margin: float = 0.1
    # multi_similarity's weights and threshold (Wang et al. 2019; pml's defaults 2 / 50 / 0.5).
    # gsv-cities trains place recognition with 1 / 50 / 0.0.
    ms_alpha: float = 2.0
    ms_beta: float = 50.0
    ms_base: float = 0.5
    # > 0: a cross-batch memory of this many recent training photos' embeddings, mined beside the batch
    # (more places to find hard negatives among than a small CPU batch holds). From random weights it
    # stalled learning (benchmarks/RESULTS.md), so it is off by default.
    memory_size: int = 0
    # > 0: this weight times a cross-entropy over the `cells` grid (cells.grid, cells.cell_size_m), on the
    # embedding itself (a cosine classifier, pml's NormalizedSoftmaxLoss), added to the metric loss in
    # training only. The cells baseline learns the district from random weights faster than the
    # metric loss does (benchmarks/RESULTS.md); this hands that signal to the embedding.
    cell_loss_weight: float = 0.0
    # > 1 (needs headings): the cell loss's classes are (cell, heading bin) pairs, bins of 360/N degrees
    # centred on north, so views of one cell facing apart (which share nothing) are not one class.
    cell_heading_bins: int = 1
    # >= 2: hard batches. From the second epoch on, each random place of a batch brings the n-1 places
    # that look most like it (nearest in embedding space at the last validation, beyond neg_radius_m on
    # the ground); 0: every place at random. One process only (the neighbours live on rank 0); a resumed
    # run draws random batches until its first validation.
    hard_places: int = 0
    # > 0: this share of train.max_minutes trains a cells classifier after the embedding (RUN/cells),
    # whose log p(cell | query) reranks the query's neighbours (retrieval.answering.prior): the two models fail on
    # different photos (benchmarks/RESULTS.md). 0: the embedding alone.
    cell_prior_share: float = 0.0
    streets: str = ""  # .osm/.osm.bz2/.graphml file, or bbox:lon_min,lat_min,lon_max,lat_max / place:NAME (online)
    network_type: str = "walk"  # walk | all, for downloaded graphs
    max_snap_m: float = 30.0  # photos farther than this from any street are left out of mining


@dataclass
class IndexConfig:
    kind: str = "flat"  # flat (exact) | ivfpq | hnsw
    nlist: int = 1024  # ivfpq: inverted lists
    pq_m: int = 64  # ivfpq: PQ sub-vectors (divides the embedding dimension)
    pq_nbits: int = 8
    refine: str = "flat"  # ivfpq: re-rank candidates with flat | sq8 vectors, or none
    k_factor: float = 16.0  # ivfpq with refine: candidates re-ranked per neighbour wanted
    nprobe: int = 64  # ivfpq: lists searched per query
    train_size: int = 0  # ivfpq: training vectors; 0: 64 per list
    shard_size: int = 0  # > 0: split the index into files (faiss IndexShards) of at most this many vectors
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    k: int = 10
    # pool | top1 | weighted_mean, or auto: the one with the lowest median error on the validation views
    # (chosen once per checkpoint, RUN/vote.json). On London pool put the queries 100 m off at the
    # median and top1 46 m; on the demo pool did best (benchmarks/RESULTS.md, session 13).
    vote: str = "auto"
    vote_radius_m: float = 50.0
    cell_prior_candidates: int = 1000  # with a cells prior: nearest neighbours it reranks
    # > 0: each database descriptor is indexed as itself plus the mean of the database photos within this
    # many metres (straight line) facing within place_mean_heading_deg where headings are known
    # (retrieval.answering.places; also at validation). 0: every photo as embedded.
    place_mean_m: float = 25.0
    place_mean_heading_deg: float = 45.0
    # off | on | auto: reorder the first neighbours by local-feature matching (retrieval.answering.geometry; settings:
    # the rerank section); auto tries settings on the validation views and keeps off where none helps
    rerank: str = "off"


@dataclass
class RerankConfig:
    """The geometric check (retrieval.answering.geometry, retrieval.answering.local_features)."""
    size: int = 480  # the longer side, in px, photos are matched at: from their files, not the model's input
    keypoints: int = 480  # per photo, strongest first: 480 x (128 + 4) bytes = 63 KB stored per database photo
    k: int = 10  # index.rerank on: neighbours checked (auto tries 10, 25 and 50: retrieval.answering.geometry.AUTO_KS)
    weight: float = 1.0  # index.rerank on: score = similarity + weight * min(inliers, 100) / 100
    ratio: float = 0.8  # Lowe's ratio test


@dataclass
class BenchConfig:
    """One comparison: a city, its rendered views, and the methods trained under the same budget."""
    osm: str = "demo"  # an .osm/.osm.bz2 file, or "demo" for the procedural city
    city_size_m: float = 1500.0  # side of the procedural city
    train_views: int = 600  # training positions (each rendered at `headings` headings)
    headings: int = 1  # views per training position, evenly spaced from the street's direction
    val_views: int = 100  # rendered like the test views (0: carve validation out of train)
    test_views: int = 150
    image_size: int = 128
    # shorter side of the rendered views; 0: image_size x 256/224, the side the models resize to. A larger
    # one renders finer and is downsampled (antialiased) on decoding, which the renderer does not do itself
    render_size: int = 0
    test_condition_shift: bool = False
    render_workers: int = 2
    # method name -> its overrides on top of the shared config (same data, epochs, batch, precision)
    methods: dict[str, list[str]] = field(default_factory=lambda: {
        "cells_voronoi": ["cells.grid=voronoi"],
        "regression": [],
        "embedding_geodesic": ["embedding.positives=geodesic"],
    })


@dataclass
class RouteConfig:
    """Route decoding (retrieval.answering.route): photos taken in order, located together along the streets."""
    # candidates per photo: its nearest database photos (the single-photo vote uses index.k). On the London
    # render 30, 60 and 100 decoded 89.1%, 91.0% and 92.3% of route photos right (RESULTS.md, session 18)
    k: int = 100
    distance: str = "geodesic"  # walking distance along the street graph, or euclidean (the ablation)
    temperature: float = 0.05  # similarity / temperature is a candidate's log-potential
    pace_mps: float = 1.4  # with capture times the expected step is pace x time gap (1.4: walking)
    step_m: float = 15.0  # without capture times: the expected step between consecutive photos
    step_tol_m: float = 10.0  # the least spread of a step around its expected length (a Laplace scale)
    step_tol: float = 0.5  # and the spread as a share of the expected step (people stop, hurry, turn back)
    break_cost: float = 8.0  # the route breaks where every step is more than this many spreads off
    max_snap_m: float = 30.0  # candidates farther than this from every street move in straight lines
    confidence_radius_m: float = 25.0  # a photo's confidence: its posterior mass this near its answer


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cells: CellsConfig = field(default_factory=CellsConfig)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise GeolocError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is dict:
        _, inner = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise GeolocError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise GeolocError(f"{where}: expected a list, got {value!r}")
        return origin(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise GeolocError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GeolocError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise GeolocError(f"{where}: expected a finite number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise GeolocError(f"{where}: expected an integer, got {value!r}")
        return tp(value)
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, bool):  # YAML 1.1 reads on / off (index.rerank: on) as booleans
            return "on" if value else "off"
        return str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise GeolocError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, update: dict, where: str = "config") -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and k in out and not isinstance(out[k], dict):
            raise GeolocError(f"{where}.{k}: expected a mapping, got {out[k]!r}")
        out[k] = _merge(out[k], v, f"{where}.{k}") if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- validation: every setting checked once, when the config loads ----------------------------------

# The lists live in retrieval.choices, where the modules that implement them read them too.
CHOICES = {
    "data.split_mode": SPLIT_MODES,
    "model.arch": ARCHS,
    "model.pooling": POOLINGS,
    "train.optimizer": OPTIMIZERS,
    "train.schedule": SCHEDULES,
    "train.precision": PRECISIONS,
    "cells.grid": GRID_KINDS,
    "cells.centroid": CENTROIDS,
    "cells.decision": DECISIONS,
    "embedding.positives": POSITIVES,
    "embedding.supervision": SUPERVISION,
    "embedding.loss": LOSSES,
    "embedding.network_type": NETWORK_TYPES,
    "index.kind": INDEX_KINDS,
    "index.refine": REFINES,
    "index.vote": ("auto", *VOTE_MODES),
    "index.rerank": RERANK_MODES,
    "route.distance": DISTANCES,
}
# key -> (low, high, low inclusive, high inclusive); None: unbounded
RANGES = {
    "data.val_fraction": (0, 1, True, False), "data.test_fraction": (0, 1, True, False),
    "data.place_radius_m": (0, None, False, True), "data.split_gap_m": (0, None, True, True),
    "data.split_block_m": (0, None, False, True), "data.image_size": (16, None, True, True),
    "data.resize": (16, None, True, True), "data.num_workers": (0, None, True, True),
    "augment.perspective": (0, 1, True, True), "augment.perspective_p": (0, 1, True, True),
    "augment.brightness": (0, None, True, True), "augment.contrast": (0, None, True, True),
    "augment.saturation": (0, None, True, True), "augment.hue": (0, 0.5, True, True),
    "model.lock_factor": (0, 1, True, True), "model.embed_dim": (0, None, True, True),
    "train.epochs": (1, None, True, True), "train.batch_size": (1, None, True, True),
    "train.lr": (0, None, False, True), "train.momentum": (0, 1, True, False),
    "train.weight_decay": (0, None, True, True), "train.lr_decay": (0, 1, False, True),
    "train.warmup_steps": (0, None, True, True), "train.max_minutes": (0, None, True, True),
    "train.max_steps_per_epoch": (0, None, True, True), "train.threads": (0, None, True, True),
    "cells.cell_size_m": (0, None, False, True), "cells.border_spacing_m": (0, None, True, True),
    "cells.label_smooth_m": (0, None, True, True),
    "embedding.pos_radius_m": (0, None, False, True), "embedding.neg_radius_m": (0, None, False, True),
    "embedding.heading_tol_deg": (0, 180, False, True), "embedding.places_per_batch": (1, None, True, True),
    "embedding.photos_per_place": (2, None, True, True), "embedding.margin": (0, None, False, True),
    "embedding.ms_alpha": (0, None, False, True), "embedding.ms_beta": (0, None, False, True),
    "embedding.ms_base": (-1, 1, True, True),
    "embedding.memory_size": (0, None, True, True), "embedding.cell_loss_weight": (0, None, True, True),
    "embedding.cell_heading_bins": (1, 36, True, True), "regression.cell_loss_weight": (0, None, True, True),
    "regression.components": (1, 256, True, True),
    "embedding.hard_places": (0, None, True, True), "embedding.cell_prior_share": (0, 1, True, False),
    "index.cell_prior_candidates": (1, None, True, True),
    "embedding.max_snap_m": (0, None, False, True), "embedding.never_negative_within_m": (0, None, True, True),
    "index.nlist": (1, None, True, True), "index.pq_m": (1, None, True, True), "index.pq_nbits": (1, 16, True, True),
    "index.k_factor": (1, None, True, True), "index.nprobe": (1, None, True, True),
    "index.train_size": (0, None, True, True), "index.shard_size": (0, None, True, True),
    "index.hnsw_m": (2, None, True, True), "index.ef_construction": (1, None, True, True),
    "index.ef_search": (1, None, True, True), "index.k": (1, None, True, True),
    "index.vote_radius_m": (0, None, False, True), "index.place_mean_m": (0, None, True, True),
    "index.place_mean_heading_deg": (0, 180, False, True),
    "bench.city_size_m": (100, None, True, True), "bench.train_views": (1, None, True, True),
    "bench.headings": (1, 36, True, True), "bench.val_views": (0, None, True, True),
    "bench.test_views": (1, None, True, True), "bench.image_size": (16, None, True, True),
    "bench.render_workers": (1, None, True, True), "bench.render_size": (0, None, True, True),
    "route.k": (1, None, True, True), "route.temperature": (0, None, False, True),
    "route.pace_mps": (0, None, False, True), "route.step_m": (0, None, True, True),
    "route.step_tol_m": (0, None, False, True), "route.step_tol": (0, None, True, True),
    "route.break_cost": (0, None, False, True), "route.max_snap_m": (0, None, False, True),
    "route.confidence_radius_m": (0, None, False, True),
    "rerank.size": (32, 4096, True, True), "rerank.keypoints": (8, 32767, True, True), "rerank.k": (1, None, True, True),
    "rerank.weight": (0, None, False, True), "rerank.ratio": (0, 1, False, False),
}


def trunk_features(arch: str) -> int:
    """Width of a backbone's pooled output (retrieval.choices.BACKBONE_FEATURES)."""
    if arch == HUB:
        raise GeolocError("model.arch=hub: the descriptor size is the hub model's (measured when the run is made)")
    return BACKBONE_FEATURES[arch]


def descriptor_dim(model_cfg: ModelConfig) -> int:
    """The embedding's width: model.embed_dim, or with 0 (no projection head) the trunk's features."""
    return model_cfg.embed_dim or trunk_features(model_cfg.arch)


def _get(cfg: "Config", key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _range_text(lo, hi, lo_inc, hi_inc) -> str:
    if hi is None:
        return f"{'>=' if lo_inc else '>'} {lo:g}"
    return f"in {'[' if lo_inc else '('}{lo:g}, {hi:g}{']' if hi_inc else ')'}"


def validate(cfg: "Config", where: str = "config") -> "Config":
    """Raise a one-line GeolocError for the first setting out of its range or choices, or two settings
    that cannot go together; returns cfg."""
    def bad(key: str, why: str) -> None:
        raise GeolocError(f"{where}: {key}={_get(cfg, key)!r}: {why}")

    for key, (lo, hi, lo_inc, hi_inc) in RANGES.items():
        v = _get(cfg, key)
        if not math.isfinite(v) or (v < lo if lo_inc else v <= lo) or (
                hi is not None and (v > hi if hi_inc else v >= hi)):
            bad(key, f"must be {_range_text(lo, hi, lo_inc, hi_inc)}")
    for key, options in CHOICES.items():
        if _get(cfg, key) not in options:
            bad(key, f"choose one of {', '.join(options)}")
    d, e = cfg.data, cfg.embedding
    if d.val_fraction + d.test_fraction >= 1:
        bad("data.test_fraction", f"with data.val_fraction={d.val_fraction:g} nothing is left to train on")
    if d.resize < d.image_size:
        bad("data.resize", f"must be >= data.image_size ({d.image_size})")
    if e.neg_radius_m <= e.pos_radius_m:
        bad("embedding.neg_radius_m", f"must be above embedding.pos_radius_m ({e.pos_radius_m:g})")
    if e.hard_places == 1 or e.hard_places > e.places_per_batch:
        bad("embedding.hard_places", f"must be 0 (random batches) or 2 to embedding.places_per_batch "
                                     f"({e.places_per_batch})")
    if e.cell_prior_share > 0 and cfg.train.max_minutes <= 0:
        bad("embedding.cell_prior_share", "splits a time budget: set train.max_minutes too")
    if e.miner not in MINERS[e.loss]:
        bad("embedding.miner", f"with embedding.loss={e.loss} choose one of {', '.join(MINERS[e.loss])}")
    if (cfg.model.arch == HUB) != cfg.model.weights.startswith("hub:"):
        bad("model.weights", "a torch.hub model (hub:OWNER/REPO:ENTRY) goes with model.arch=hub, and only with it")
    if cfg.index.kind == "ivfpq" and descriptor_dim(cfg.model) % cfg.index.pq_m:
        bad("index.pq_m", f"must divide the descriptor size ({descriptor_dim(cfg.model)})")
    for name in cfg.bench.methods:
        if name.split("_", 1)[0] not in METHODS:
            raise GeolocError(f"{where}: bench.methods: {name!r} must start with one of {', '.join(METHODS)}")
    return cfg


def parse_override(text: str) -> dict:
    """'train.epochs=3' -> {'train': {'epochs': 3}}; the value is read as YAML."""
    if "=" not in text:
        raise GeolocError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = value
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    return node


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Defaults <- `base` (a command's own defaults) <- YAML file <- overrides."""
    data: dict = dict(base or {})
    where = "config"
    if path:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise GeolocError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise GeolocError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
        except yaml.YAMLError as exc:
            raise GeolocError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(loaded, dict):
            raise GeolocError(f"{path}: expected a mapping at the top level")
        data = _merge(data, loaded, where)
    for text in overrides or []:
        data = _merge(data, parse_override(text), where)
    return validate(from_dict(Config, data, where), where)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
