"""Typed configuration: dataclasses filled from YAML files and `--set section.key=value` overrides."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retrieval import GeolocError


@dataclass
class DataConfig:
    train: str = ""  # data folder (train.csv [val.csv] [test.csv]) or one manifest CSV (--data)
    test: str = ""  # manifest CSV of test photos (empty: the folder's test.csv, or split `train` spatially)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_gap_m: float = 25.0  # no held-out photo within this distance of a training photo
    split_block_m: float = 250.0  # side of the square blocks assigned whole to one split
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


@dataclass
class ModelConfig:
    weights: str = "imagenet"  # imagenet | places365:<file> | <state-dict file> | none
    lock_factor: float = 0.7
    embed_dim: int = 512
    freeze_bn: bool = False  # keep BatchNorm statistics fixed (see retrieval.models.freeze_batchnorm)


@dataclass
class TrainConfig:
    epochs: int = 25
    batch_size: int = 32
    lr: float = 0.001
    momentum: float = 0.9
    lr_decay: float = 0.99
    weight_decay: float = 0.0
    precision: str = "bf16"  # bf16 | fp32
    max_steps_per_epoch: int = 0  # 0: a full pass over the data
    threads: int = 0  # torch intra-op threads; 0: torch's default


@dataclass
class CellsConfig:
    grid: str = "voronoi"  # voronoi | square
    cell_size_m: float = 150.0  # square side, or Voronoi centre spacing
    border_spacing_m: float = 40.0  # Voronoi centres keep this far from the boundary
    boundary: str = ""  # GeoJSON or lat,lng CSV; empty: hull of the training photos
    centroid: str = "photos"  # photos | polygon: where a predicted cell puts the photo


@dataclass
class EmbeddingConfig:
    positives: str = "geodesic"  # geodesic | euclidean
    pos_radius_m: float = 50.0  # photos this close (along the streets) show the same place
    neg_radius_m: float = 250.0  # photos this far apart are negatives; in between, neither
    places_per_batch: int = 8  # P
    photos_per_place: int = 4  # K
    loss: str = "triplet"  # triplet | multi_similarity | contrastive
    miner: str = "semihard"  # semihard | hard | all | hardest (triplet loss; pair losses use every pair)
    margin: float = 0.1
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
    vote: str = "pool"  # pool | top1 | weighted_mean
    vote_radius_m: float = 50.0


@dataclass
class BenchConfig:
    """One comparison: a city, its rendered views, and the methods trained under the same budget."""
    osm: str = "demo"  # an .osm/.osm.bz2 file, or "demo" for the procedural city
    city_size_m: float = 1500.0  # side of the procedural city
    train_views: int = 600
    test_views: int = 150
    image_size: int = 128
    test_condition_shift: bool = False
    render_workers: int = 2
    # method name -> its overrides on top of the shared config (same data, epochs, batch, precision)
    methods: dict[str, list[str]] = field(default_factory=lambda: {
        "cells_voronoi": ["cells.grid=voronoi"],
        "regression": [],
        "embedding_geodesic": ["embedding.positives=geodesic"],
    })


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cells: CellsConfig = field(default_factory=CellsConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GeolocError(f"{where}: expected a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise GeolocError(f"{where}: expected an integer, got {value!r}")
        return tp(value)
    if tp is str:
        if value is None:
            return ""
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


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
        except yaml.YAMLError as exc:
            raise GeolocError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(loaded, dict):
            raise GeolocError(f"{path}: expected a mapping at the top level")
        data = _merge(data, loaded)
    for text in overrides or []:
        data = _merge(data, parse_override(text))
    return from_dict(Config, data, where)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def prepare_run_dir(run_dir: str | Path, cfg: Config) -> Path:
    """Create the run directory and record what produced it: resolved config, command line, git revision."""
    from retrieval.util import atomic_write_json, atomic_write_text, command_line, git_revision

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    atomic_write_text(run_dir / "command.txt", command_line() + "\n")
    atomic_write_json(run_dir / "git.json", git_revision())
    return run_dir


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise GeolocError(f"{run_dir}: not a run directory (no config.yaml)")
    return load_config(path)
