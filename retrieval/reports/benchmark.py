"""The main job: a city -> rendered views -> every method trained under the same budget -> evaluated
-> one report. `geoloc demo` runs it on the procedural city, `geoloc benchmark` on any config.

Each step leaves its outputs in the run directory and is skipped when they are already there, and
training resumes from its last checkpoint, so a killed run continues where it stopped.
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retrieval.run import Run, command_line, config_changes, load_run_config, prepare_run_dir
from retrieval import GeolocError
from retrieval.config import Config, dump_yaml, load_config, to_dict
from retrieval.reports.evaluate import evaluate_run
from retrieval.files import atomic_write_text
from retrieval.methods import method_kind, trainer
from retrieval.learning.backbones import build_trunk
from retrieval.reports.prediction_images import PAGE, save_predictions
from retrieval.reports.report import (error_cdf_png, floor_rows, learning_png, map_png, neighbourhoods_html, report_md,
                              terminal_table, versus_floors)
from retrieval.data.streets import lonlat_lines
from retrieval.synth.cameras import render_dataset
from retrieval.synth.city import write_demo_city

BUDGET_RULES = ("Every method trains on the same rendered training views with the same weights, lock_factor, "
                "batch size, optimiser, schedule and precision, on the backbone and input size of the backbone "
                "column, for the same wall time (train.max_minutes, training and validation together, equal across "
                "methods unless bench.methods overrides it, as it does the backbone; the table's train time is "
                "the training part); the best epoch is chosen on the same "
                "validation views, drawn like the test views; all are scored on the same test views, beside the "
                "floors (no learning; the untrained network is the benchmark's own model.arch) and the oracle "
                "measured on them.")


def resize_side(cfg: Config) -> int:
    """The models resize views to image_size x 256/224 (the ImageNet ratio), so a random crop has room to move."""
    return max(cfg.bench.image_size, round(cfg.bench.image_size * 256 / 224))


def render_size(cfg: Config) -> int:
    """Views are rendered at bench.render_size, by default at the resize side (the crop the models see is
    then at native resolution)."""
    side = resize_side(cfg)
    if 0 < cfg.bench.render_size < side:
        raise GeolocError(f"bench.render_size={cfg.bench.render_size}: below the {side} px the models resize "
                          f"bench.image_size={cfg.bench.image_size} views to (0 renders at {side})")
    return max(cfg.bench.render_size, side)


def method_config(cfg: Config, overrides: list[str], data_dir: Path) -> Config:
    mcfg = load_config(None, overrides, base=to_dict(cfg))
    mcfg.data.train, mcfg.data.test = str(data_dir), ""
    mcfg.data.image_size = cfg.bench.image_size
    mcfg.data.resize = resize_side(cfg)
    return mcfg


def resolve_weights(cfg: Config) -> str:
    """ImageNet weights need the network once; offline the job still runs, from random weights, and
    says so in the report (and trains every layer: freezing random layers would only cripple it)."""
    if cfg.model.weights != "imagenet":
        return ""
    try:
        build_trunk("imagenet", cfg.model.arch)
        return ""
    except GeolocError as exc:
        cfg.model.weights, cfg.model.lock_factor = "none", 0.0
        note = f"ImageNet weights unavailable, trained from random weights with every layer free ({exc})"
        warnings.warn(note, stacklevel=2)
        return note


def make_city(cfg: Config, out: Path) -> Path:
    if cfg.bench.osm != "demo":
        osm = Path(cfg.bench.osm).expanduser()
        if not osm.is_file():
            raise GeolocError(f"bench.osm: {osm} not found (an .osm/.osm.bz2 file, or 'demo')")
        return osm
    osm = out / "city.osm"
    if not osm.is_file():
        write_demo_city(osm, seed=cfg.seed, size_m=cfg.bench.city_size_m)
    return osm


def render(cfg: Config, osm: Path, out: Path) -> Path:
    data = out / "data"
    b = cfg.bench
    if not ((data / "train.csv").is_file() and (data / "test.csv").is_file()):
        info = render_dataset(osm, data, n_train=b.train_views, n_test=b.test_views, size=render_size(cfg),
                              seed=cfg.seed, test_condition_shift=b.test_condition_shift,
                              workers=b.render_workers, headings=b.headings, n_val=b.val_views)
        tqdm.write(f"rendered {info['train']} training, {info['val']} validation and {info['test']} test views "
                   f"({info['images_per_s']} img/s)")
    return data


# Sections a method's training never reads (bench: the city and the method list, read before training):
# a difference there is no reason to mention.
OTHER_METHODS_SETTINGS = {"cells": ("bench.", "embedding.", "regression.", "index."),
                          "regression": ("bench.", "embedding.", "index."), "embedding": ("bench.", "regression.")}


def train_method(name: str, mcfg: Config, run: Path) -> str:
    """Train the method unless its run already finished; returns a note when a finished run was trained
    with other settings than this benchmark gives it (a run copied in, or the config edited since)."""
    info_path = Run(run).info_file
    prior_done = mcfg.embedding.cell_prior_share == 0 or Run(run).prior.is_file()
    if info_path.is_file() and "train" in json.loads(info_path.read_text(encoding="utf-8")) and prior_done:
        changes = {k: v for k, v in config_changes(mcfg, load_run_config(run)).items()
                   if not k.startswith(OTHER_METHODS_SETTINGS[method_kind(name)])}
        if not changes:
            return ""
        note = (f"{name} reuses the trained run in {run}, whose settings differ from this config's: "
                + "; ".join(f"{k} {a!r} here, {b!r} in the run" for k, (a, b) in changes.items()))
        tqdm.write(f"== warning: {note}")
        return note
    resume = Run(run).last.is_file()
    prepare_run_dir(run, mcfg)
    tqdm.write(f"== {name}: {'resuming' if resume else 'training'} in {run}")
    trainer(name)(mcfg, run, resume)
    return ""


def evaluate_method(run: Path, data: Path) -> dict:
    path = Run(run).metrics
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return evaluate_run(run, data)


# --- report ----------------------------------------------------------------------------------------

def street_lines(data: Path) -> list[np.ndarray]:
    """Street centre lines in lon/lat from the graph the renderer saved beside the views."""
    path = data / "streets.graphml"
    return lonlat_lines(path) if path.is_file() else []


def _predictions(run: Path) -> dict[str, np.ndarray]:
    with Run(run).predictions_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in
            ("true_lat", "true_lon", "pred_lat", "pred_lon", "error_m")}


def _cells_page(run: Path, lines: list[np.ndarray], out: Path, attribution: str) -> Path | None:
    """The study's neighbourhood plot from a cells run: its grid and per-photo class probabilities."""
    if not Run(run).grid.is_file() or not Run(run).predictions_npz.is_file():
        return None
    grid = json.loads(Run(run).grid.read_text(encoding="utf-8"))
    polygons = []
    for f in grid["features"]:
        g = f["geometry"]
        ring = g["coordinates"][0] if g["type"] == "Polygon" else max(
            (p[0] for p in g["coordinates"]), key=len)
        polygons.append(np.asarray(ring))
    with np.load(Run(run).predictions_npz) as z:
        probs_class, class_cells, true_cell = z["probabilities"], z["class_cells"], z["true_cell"]
    probs = np.zeros((len(probs_class), len(polygons)), dtype=np.float32)
    probs[:, class_cells] = probs_class
    return neighbourhoods_html(polygons, lines, true_cell, probs, out / "neighbourhoods.html",
                               title=f"Neighbourhood similarity ({run.name})", attribution=attribution)


def recall_curve(run: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(training images seen, validation R@1 within 25 m) after each epoch of a run's log.csv; None
    for runs that log no recall (the baselines) or have no log."""
    rows = Run(run).log_rows()
    seen = np.cumsum([float(r["images"]) for r in rows])  # every epoch's images, validated or not
    kept = [i for i, r in enumerate(rows) if r.get("val_recall@1_25m")]
    if not kept:
        return None
    return seen[kept], np.array([float(rows[i]["val_recall@1_25m"]) for i in kept])


def write_report(cfg: Config, out: Path, rows: list[dict], runs: dict[str, Path], data: Path,
                 commands: list[str], notes: list[str]) -> Path:
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    preds = {name: _predictions(run) for name, run in runs.items()}
    error_cdf_png({n: p["error_m"] for n, p in preds.items()}, rep / "error_cdf.png")
    lines = street_lines(data)
    best = min((r for r in rows if r["method"] in runs), key=lambda r: r["median_error_m"])["method"]
    p = preds[best]
    map_png(lines, np.column_stack([p["true_lon"], p["true_lat"]]), np.column_stack([p["pred_lon"], p["pred_lat"]]),
            p["error_m"], rep / "map.png", title=f"{best}: test cameras coloured by error; arrows truth -> prediction")
    attribution = ""
    if (data / "ATTRIBUTION.txt").is_file():
        attribution = (data / "ATTRIBUTION.txt").read_text(encoding="utf-8").strip()
    cells_runs = [r for n, r in runs.items() if method_kind(n) == "cells"]
    page = _cells_page(cells_runs[0], lines, rep, attribution) if cells_runs else None
    floors = rows[0]["floors"]
    pages = [f"Prediction images of {n}: the worst, the best and a random sample of its test photos beside the "
             f"database photos they were matched with ([{n}/{Run.PREDICTIONS_DIR}]"
             f"({os.path.relpath(Run(r).predictions_dir / PAGE, rep)}))."
             for n, r in runs.items() if (Run(r).predictions_dir / PAGE).is_file()]
    curves = {n: c for n, c in ((n, recall_curve(r)) for n, r in runs.items()) if c is not None}
    if curves:
        learning_png(curves, floors, rep / "learning.png")
    text = report_md(rows, commands, dump_yaml(cfg),
                     notes="\n\n".join(n for n in [f"Budget: {BUDGET_RULES}", *notes, *pages, attribution] if n),
                     neighbourhoods=page is not None, learning=bool(curves))
    atomic_write_text(rep / "report.md", text)
    tqdm.write("\n" + terminal_table(rows + floor_rows(floors)) + "\n\n"
               + "\n".join(versus_floors(r, floors).replace("**", "") for r in rows) + "\n")
    return rep


def without_prior_row(name: str, metrics: dict) -> dict:
    """The report row of an embedding run's own neighbours, before its cells prior reranked them."""
    alone = metrics["cell_prior"]["without"]
    return {"method": f"{name}: the embedding alone", **alone, **alone["vote_modes"][alone["vote"]],
            "backbone": metrics["backbone"].replace(" + cells prior", "")}


def argmax_row(name: str, metrics: dict) -> dict:
    """The report row of a cells run answering with its most probable cell (the study's rule), when
    cells.decision chose a radius."""
    return {"method": f"{name}: most probable cell", **metrics["argmax"],
            "backbone": metrics["backbone"].replace(f", {metrics['answer']}", ", most probable cell")}


PREDICTION_IMAGES = 12  # test photos each embedding run draws for the report (retrieval.reports.prediction_images)


def run_benchmark(cfg: Config, out: str | Path) -> Path:
    """Run every step of the comparison in `out`; returns the report folder."""
    out = Path(out)
    t0 = time.perf_counter()
    note = resolve_weights(cfg)
    prepare_run_dir(out, cfg)
    osm = make_city(cfg, out)
    data = render(cfg, osm, out)
    rows, runs, reused = [], {}, []
    for name, overrides in cfg.bench.methods.items():
        run = out / "methods" / name
        mcfg = method_config(cfg, overrides, data)
        reused.append(train_method(name, mcfg, run))
        metrics = evaluate_method(run, data)
        page = Run(run).predictions_dir / PAGE
        if method_kind(name) == "embedding" and (not page.is_file() or page.stat().st_mtime
                                                 < Run(run).predictions_csv.stat().st_mtime):
            save_predictions(run, PREDICTION_IMAGES)
        rows.append({"method": name, **metrics})
        runs[name] = run
        if "cell_prior" in metrics:
            rows.append(without_prior_row(name, metrics))
        if metrics.get("decision", {}).get("radius_m", 0) > 0:
            rows.append(argmax_row(name, metrics))
    commands = [command_line()] + [f"geoloc evaluate --run {shlex.quote(str(r))} --data {shlex.quote(str(data))}"
                                   for r in runs.values()]
    notes = [n for n in [note, *reused] if n]
    notes.append(f"Total wall time of this job: {time.perf_counter() - t0:.0f} s "
                 "(steps already done in an earlier, interrupted run are not counted).")
    return write_report(cfg, out, rows, runs, data, commands, notes)


# The demo: EfficientNet-Lite0 from ImageNet (its weights install with geoloc: no download), fine-tuned
# with configs/finetune_cpu.yaml's recipe (frozen BatchNorm statistics, AdamW at 5e-4, 128 px, no projection
# head) on a Street-View-like database of the procedural city, in about 8 minutes on a 2-core CPU. Against
# the from-scratch ResNet-18 at 48 px it had before, the same budgets: embedding R@1 40.0% vs 23.0%, +17.0
# [+9.5, +24.5], median 68 m vs 149 m; cells and regression level (RESULTS.md, session 22). The embedding
# gets most of the training time; the baselines' shorter budgets are in the report's table.
DEMO = {
    "name": "demo",
    "model": {"arch": "efficientnet_lite0", "weights": "imagenet", "lock_factor": 0.0, "freeze_bn": True,
              "embed_dim": 0},
    # validate every 224 steps, not every pass of 112: each validation embeds the whole database
    "train": {"epochs": 1000, "batch_size": 64, "lr": 0.0005, "warmup_steps": 20, "max_minutes": 5.0,
              "max_steps_per_epoch": 224},
    "data": {"num_workers": 0},
    # hue jitter and the perspective warp cost more per image than they return in a few minutes
    "augment": {"hue": 0.0, "perspective_p": 0.0, "random_crop": True},
    "embedding": {"places_per_batch": 16, "photos_per_place": 4},
    # soft labels by distance: the 1-minute cells' most probable cell within 325 m +8.5 and +10.0 points
    # over 2 seeds (RESULTS.md, session 14)
    "cells": {"cell_size_m": 100.0, "border_spacing_m": 30.0, "label_smooth_m": 50.0},
    "bench": {"osm": "demo", "city_size_m": 800.0, "train_views": 1800, "headings": 4, "val_views": 200,
              # the weights' ImageNet sizes are far above 48 px; 128 px crops of 146 px renders, as finetune_cpu
              "test_views": 200, "image_size": 128, "render_size": 146,
              "methods": {"cells_voronoi": ["cells.grid=voronoi", "train.max_minutes=1"],
                          "regression": ["train.max_minutes=1"],
                          "embedding_geodesic": ["embedding.positives=geodesic"]}},
}


def demo_query_hint(out: Path) -> str:
    runs = sorted((out / "methods").glob("embedding*"))
    if not runs:
        return ""
    test = out / "data" / "test.csv"
    first = test.read_text(encoding="utf-8").splitlines()[1].split(",")[0] if test.is_file() else "IMAGE.jpg"
    return (f"locate a photo:  {geoloc_command()} query --run {shlex.quote(str(runs[0]))} "
            f"{shlex.quote(str(out / 'data' / first))}\n"
            f"or in a browser:  {geoloc_command()} serve --run {shlex.quote(str(runs[0]))}  "
            "(then open http://127.0.0.1:8000/)")


def geoloc_command() -> str:
    """How to run this very geoloc from the current folder, as a user types it: `geoloc` when that is on
    the PATH, else the script installed beside this Python (e.g. .venv/bin/geoloc), else python -m."""
    here = Path(sys.executable).parent  # not resolved: a venv's python is a link to the system one
    script = here / ("geoloc.exe" if os.name == "nt" else "geoloc")
    on_path = shutil.which("geoloc")
    if script.is_file() and on_path and Path(on_path).absolute() == script.absolute():
        return "geoloc"
    if script.is_file():
        try:
            rel = script.absolute().relative_to(Path.cwd())
            return shlex.quote(str(rel) if rel.parts[0] != "geoloc" else f"./{rel}")
        except ValueError:
            return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m retrieval.cli"
