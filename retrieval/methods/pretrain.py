"""Pretraining on rendered cities: every OpenStreetMap extract given is rendered into street views, and
one embedding is trained across all of them (places within one city; two cities' photos are always
negatives of each other: retrieval.data.cities). The run it leaves is an ordinary embedding run, so a new
city's photos can be indexed and queried with it at once (zero-shot), or it can start another training
(`--set model.weights=RUN`).

    geoloc pretrain A.osm.bz2 B.osm.bz2 C.osm.bz2 --out runs/pre

Layout: OUT/cities/<name>/ (each city's views), OUT/data/ (the manifests of all of them and cities.json),
and OUT itself the run (config.yaml, best.pt, log.csv, run.json, MODEL_CARD.md, model_card.json).
Every step is skipped when its output is there, and `--resume` continues a killed run under the rules of
`geoloc train --resume` (the same settings; only the budget may change).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from tqdm import tqdm

from retrieval import GeolocError

from retrieval.config import Config
from retrieval.data.cities import write_cities
from retrieval.data.manifests import concat_manifests, read_manifest, write_manifest
from retrieval.files import atomic_write_json, atomic_write_text
from retrieval.learning import distributed
from retrieval.learning.train import check_run_dir
from retrieval.methods.embedding import train_embedding
from retrieval.run import check_resume, command_line, git_revision, prepare_run_dir, record_resume
from retrieval.synth.cameras import render_dataset

CARD_JSON, CARD_MD = "model_card.json", "MODEL_CARD.md"
# The recipe that lifted real photos of an unseen city from a rendered-only model (issue 28): the scratch
# CPU recipe at lr 0.001 (0.005 stayed below the thumbnail floor) with long epochs, an hour by default.
PRETRAIN = {"name": "pretrain",
            "model": {"arch": "resnet18", "weights": "none", "embed_dim": 512},
            "data": {"image_size": 64, "resize": 73},
            "train": {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001, "schedule": "cosine",
                      "warmup_steps": 20, "max_minutes": 60.0, "epochs": 1000, "max_steps_per_epoch": 400,
                      "batch_size": 64},
            "augment": {"hue": 0.0, "perspective_p": 0.0, "random_crop": True},
            "embedding": {"places_per_batch": 16, "photos_per_place": 4}}


def city_name(osm: Path) -> str:
    return re.sub(r"\.(osm|xml)(\.bz2|\.gz)?$", "", osm.name) or osm.stem


def render_cities(cfg: Config, osm_files: list[Path], out: Path, views: int, headings: int,
                  knobs: tuple[str, ...] = ()) -> list[dict]:
    """Render each city (views training positions x headings, plus validation views) into OUT/cities,
    with the domain randomisation knobs (retrieval.synth.randomize) on every view."""
    names = [city_name(p) for p in osm_files]
    if len(set(names)) != len(names):
        raise GeolocError(f"pretrain: two extracts share a name ({', '.join(names)}): rename one")
    settings = {"--views": views, "--headings": headings, "--randomize": list(knobs), "data.resize": cfg.data.resize,
                "seed": cfg.seed}
    cities = []
    for osm, name in zip(osm_files, names):
        if not osm.is_file():
            raise GeolocError(f"{osm}: no such OSM extract")
        folder = out / "cities" / name
        if (folder / "train.csv").is_file():
            _check_render(folder, settings)
        else:
            tqdm.write(f"== rendering {name}")
            try:
                render_dataset(osm, folder, n_train=views, n_test=0, n_val=max(20, views // 10),
                               size=cfg.data.resize, seed=cfg.seed, headings=headings, knobs=knobs)
            except GeolocError as exc:
                raise GeolocError(f"{osm}: {exc}") from None
            atomic_write_json(folder / RENDER_FILE, settings)
        cities.append({"name": name, "folder": str(folder.resolve()), "streets": str((folder / "streets.graphml").resolve()),
                       "osm": str(osm)})
    return cities


RENDER_FILE = "render.json"  # how a city's views were rendered: a rerun into the same --out must match


def _check_render(folder: Path, settings: dict) -> None:
    """Refuse to reuse a city's views rendered with other settings (a rerun with other --views, say)."""
    try:
        was = json.loads((folder / RENDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise GeolocError(f"{folder}: views without a record of how they were rendered ({RENDER_FILE}); "
                          "remove the folder to render them again, or choose another --out") from None
    changed = "; ".join(f"{k} {was.get(k)!r} -> {v!r}" for k, v in settings.items() if was.get(k) != v)
    if changed:
        raise GeolocError(f"{folder}: rendered with other settings ({changed}); rerun with the first settings to "
                          "resume, or choose another --out")


def combine(cities: list[dict], data: Path) -> Path:
    """One data folder listing every city's training and validation views, with cities.json."""
    for split in ("train", "val"):
        parts = [read_manifest(Path(c["folder"]) / f"{split}.csv") for c in cities
                 if (Path(c["folder"]) / f"{split}.csv").is_file()]
        if parts:
            write_manifest(data / f"{split}.csv", concat_manifests(parts))
    write_cities(data, [{k: c[k] for k in ("name", "folder", "streets")} for c in cities])
    return data


def model_card(cfg: Config, out: Path, cities: list[dict], summary: dict, render: dict) -> dict:
    """What the pretrained model is: the cities and views it saw, how they were rendered, the recipe,
    the budget and what training reached; written as JSON and Markdown beside the checkpoint."""
    views = {c["name"]: sum(1 for _ in open(Path(c["folder"]) / "train.csv", encoding="utf-8")) - 1 for c in cities}
    card = {"cities": [{"name": c["name"], "osm": c["osm"], "training_views": views[c["name"]]} for c in cities],
            "render": render,
            "recipe": {"arch": cfg.model.arch, "weights": cfg.model.weights, "embed_dim": cfg.model.embed_dim, "image_size": cfg.data.image_size,
                       "loss": cfg.embedding.loss, "positives": cfg.embedding.positives, "lr": cfg.train.lr,
                       "batch": f"{cfg.embedding.places_per_batch} places x {cfg.embedding.photos_per_place} photos",
                       "precision": cfg.train.precision},
            "budget": {"max_minutes": cfg.train.max_minutes, "epochs": cfg.train.epochs},
            "training": summary, "command": command_line(), "git": git_revision(),
            "attribution": "Rendered from OpenStreetMap data: © OpenStreetMap contributors, ODbL 1.0",
            "use": "zero-shot: geoloc index build --run RUN --data PHOTOS, then geoloc evaluate/query; "
                   "fine-tuning: --set model.weights=RUN"}
    atomic_write_json(out / CARD_JSON, card)
    atomic_write_text(out / CARD_MD, card_markdown(card))
    return card


def card_markdown(card: dict) -> str:
    t = card["training"]
    rows = "\n".join(f"| {c['name']} | {c['training_views']} | `{c['osm']}` |" for c in card["cities"])
    best = f"{t['best']:.3g}" if isinstance(t.get("best"), (int, float)) else "-"
    weights = card["recipe"].get("weights", "none")
    start = ("from random weights on rendered street views only (no real photo, no ImageNet)" if weights == "none"
             else f"from `{weights}` weights, then on rendered street views only (no real photo)")
    return (f"# Pretrained place-recognition model\n\nTrained {start}.\n\n| city | training views | extract |\n|---|---:|---|\n{rows}\n\n"
            f"Render: {json.dumps(card['render'])}\n\nRecipe: {json.dumps(card['recipe'])}\n\n"
            f"Budget: {json.dumps(card['budget'])}; trained {t['epochs']} epochs, {t['train_images']} images in "
            f"{t['train_seconds']:.0f} s; best {t['metric']} {best} (epoch {t['best_epoch']}, validation views "
            f"of the same cities).\n\nUse: {card['use']}.\n\n{card['attribution']}. Command: `{card['command']}`\n")


def pretrain(cfg: Config, osm_files: list[Path], out: Path, views: int = 1000, headings: int = 4,
             knobs: tuple[str, ...] = (), resume: bool = False) -> dict:
    """Render the cities, train the embedding across them and write the model card. `resume` continues
    a run from its last checkpoint, refused (as `geoloc train --resume`) if the settings changed; without
    it a folder that holds a checkpoint is refused. Under torchrun (retrieval.learning.distributed initialised) rank 0 renders and writes, every rank trains, and
    the other ranks return {}."""
    if cfg.embedding.cell_loss_weight > 0 or cfg.embedding.cell_prior_share > 0:
        raise GeolocError("pretrain: embedding.cell_loss_weight and cell_prior_share take one city's cells grid; "
                          "set both to 0")
    if len(osm_files) < 2:
        raise GeolocError("pretrain: give at least two OSM extracts (one city is `geoloc benchmark`'s job)")
    t0 = time.perf_counter()
    cfg.data.train, cfg.data.test = str((out / "data").resolve()), ""  # the run answers from anywhere
    cfg.data.val_fraction = 0.0  # each city rendered its own validation views
    check_run_dir(out, resume)
    changes = check_resume(out, "embedding", cfg) if resume else {}
    if distributed.is_main():  # under torchrun rank 0 renders and writes; the others wait for it
        out.mkdir(parents=True, exist_ok=True)
        cities = render_cities(cfg, osm_files, out, views, headings, knobs)
        combine(cities, out / "data")
        if resume:
            record_resume(out, cfg, changes)
        else:
            prepare_run_dir(out, cfg)
    distributed.barrier()
    try:
        summary = train_embedding(cfg, out, resume)
    except GeolocError as exc:
        if "no photo has a positive candidate" not in str(exc):
            raise
        raise GeolocError(f"pretrain --views {views}: {exc}; render more views per city (--views 100 or more) "
                          "into another --out") from None
    if not distributed.is_main():
        return {}
    render = {"views_per_city": views, "headings": headings, "size": cfg.data.resize, "seed": cfg.seed,
              "randomize": list(knobs)}
    card = model_card(cfg, out, cities, summary, render)
    tqdm.write(f"pretrained on {len(cities)} cities in {time.perf_counter() - t0:.0f} s: {out / CARD_MD}")
    return card

