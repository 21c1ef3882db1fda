"""The `geoloc` command line: parses arguments and dispatches; the work lives in the modules."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from retrieval import GeolocError
from retrieval.run import Run

app = typer.Typer(help="Locate street-level photos within a city.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Import, check and split geotagged photo manifests.", no_args_is_help=True)
synth_app = typer.Typer(help="Render street-level views from OpenStreetMap (demo city or a real .osm).",
                        no_args_is_help=True)
train_app = typer.Typer(help="Train a model: cells, regression or embedding.", no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect FAISS indexes of training photos.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(synth_app, name="synth")
app.add_typer(train_app, name="train")
app.add_typer(index_app, name="index")

SetOption = typer.Option(None, "--set", help="Override a config value: section.key=value (repeatable).")


# --- data ------------------------------------------------------------------------------------------

@data_app.command("import")
def data_import(
    src: Path = typer.Argument(..., help="Folder (searched recursively) or single image."),
    fmt: str = typer.Option(..., "--format", help="seed (<lat>_<lon>.jpg) | vpr (@utm...@lat@lon@...) | exif"),
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Warn about and skip unreadable photos."),
):
    """Make a manifest (path,lat,lon[,heading]) from photos in a known naming or EXIF convention."""
    from retrieval.data.manifests import write_manifest
    from retrieval.data.photo_import import import_photos

    m = import_photos(src, fmt, skip_bad=skip_bad)
    write_manifest(out, m)
    typer.echo(f"wrote {out}: {len(m)} photos" + (f", skipped {m.skipped}" if m.skipped else ""))


@data_app.command("check")
def data_check(
    manifest: Path,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Report bad rows as warnings and count them."),
):
    """Check every row of a manifest: coordinates, duplicates, files, and that each image decodes."""
    from retrieval.data.manifests import read_manifest
    from retrieval.data.sequences import DUPLICATE_M, cross_split_duplicates, extra_columns

    m = read_manifest(manifest, skip_bad=skip_bad, check_images=True, check_far=True)
    typer.echo(f"{manifest}: {len(m)} good photos" + (f", {m.skipped} bad rows skipped" if m.skipped else ""))
    twins = cross_split_duplicates(m, extra_columns(m, ("author",)).get("author"))
    if twins:  # a near-copy of a test photo in training answers the test for it
        shown = ", ".join(f"rows {m.rows[i]} ({m.split[i]}) and {m.rows[j]} ({m.split[j]})" for i, j in twins[:5])
        typer.echo(f"{manifest}: {len(twins)} pairs of near-duplicate photos across splits (the same author, within "
                   f"{DUPLICATE_M:g} m and a minute): {shown}{', ...' if len(twins) > 5 else ''}; "
                   "split with --mode sequence to keep them on one side")


@data_app.command("split")
def data_split(
    manifest: Path,
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write, with a split column."),
    mode: str = typer.Option("place", "--mode", help="place: every held-out photo has a training photo within "
                             "--radius-m, taken on an earlier day where the manifest has a date column (place "
                             "recognition: the embedding's question) | spatial: whole blocks, "
                             "nothing within --gap-m (unseen streets) | random: the seed study's protocol | "
                             "sequence: whole sequences, twin drives kept together (a fetched manifest)."),
    val: float = typer.Option(0.1, help="Fraction of photos for validation."),
    test: float = typer.Option(0.1, help="Fraction of photos for test."),
    radius_m: float = typer.Option(25.0, help="place: a training photo within this distance of each held-out one."),
    gap_m: float = typer.Option(25.0, help="spatial: no held-out photo within this distance of a training photo."),
    block_m: float = typer.Option(250.0, help="spatial: side of the blocks assigned whole to one split."),
    seed: int = typer.Option(0),
):
    """Split a manifest into train/val/test (see --mode), so nothing is asked that the task does not ask."""
    from retrieval.data.manifests import read_manifest, write_manifest
    from retrieval.data.sequences import extra_columns, keep_columns
    from retrieval.data.splits import split_counts, split_photos

    if block_m <= 0 or gap_m < 0 or radius_m <= 0:
        raise GeolocError(f"data split: --block-m ({block_m:g}) and --radius-m ({radius_m:g}) must be > 0 "
                          f"and --gap-m ({gap_m:g}) >= 0")
    m = read_manifest(manifest)
    extra = extra_columns(m, ("sequence", "source", "source_id", "licence", "author"))  # a fetched manifest's
    split = split_photos(mode, m.lat, m.lon, val, test, gap_m, block_m, radius_m, seed, m.date,
                         extra.get("sequence"), extra.get("author"))
    counts = split_counts(split, str(manifest))
    keep = [i for i, s in enumerate(split) if s]
    m.split = list(split)
    write_manifest(out, m.subset(keep))
    keep_columns(out, extra, keep)
    dropped = f", dropped {int((split == '').sum())} within {gap_m:g} m of train" if mode == "spatial" else ""
    typer.echo(f"wrote {out} ({mode}): " + ", ".join(f"{k} {v}" for k, v in counts.items()) + dropped)


# --- data fetch ------------------------------------------------------------------------------------

fetch_app = typer.Typer(help="Fetch an area's street-level photos from open imagery (Panoramax, Mapillary).",
                        no_args_is_help=True)
data_app.add_typer(fetch_app, name="fetch")
BboxOption = typer.Option(None, "--bbox", help="The area: W,S,E,N in degrees.")
PlaceOption = typer.Option(None, "--place", help="The area: a place name, geocoded by OpenStreetMap (internet).")
FetchOutOption = typer.Option(..., "--out", help="Data folder: images/, photos.csv, ATTRIBUTION.txt, streets.graphml.")
SizeOption = typer.Option("sd", "--size", help="thumb | sd | hd")
MaxOption = typer.Option(None, "--max", help="At most this many pictures.")
CropsOption = typer.Option(8, "--pano-crops", help="Views cut from each 360-degree panorama (0: keep it whole).")
FovOption = typer.Option(90.0, "--fov", help="Field of view of a panorama's views, degrees.")
ConcurrencyOption = typer.Option(8, "--concurrency", help="Downloads at a time.")
StreetsOption = typer.Option(None, "--streets", help="OSM extract (.osm/.osm.bz2) for streets.graphml, offline "
                             "(default: downloaded through OSMnx for the bbox).")
NoStreetsOption = typer.Option(False, "--no-streets", help="Write no streets.graphml.")
RetriesOption = typer.Option(5, "--retries", help="Retries of a request on a connection error, 429 or 5xx.")


def _fetch(source: str, out: Path, concurrency: int, **kw) -> None:
    from retrieval.data.fetch_area import describe, fetch_area

    summary = fetch_area(source, out, concurrency=concurrency, progress=sys.stderr.isatty(), **kw)
    typer.echo(describe(out, summary, concurrency))


@fetch_app.command("panoramax")
def data_fetch_panoramax(
    out: Path = FetchOutOption, bbox: Optional[str] = BboxOption, place: Optional[str] = PlaceOption,
    api: Optional[str] = typer.Option(None, "--api", help="A Panoramax/GeoVisio or STAC API (default: the "
                                      "Panoramax meta-catalogue, https://api.panoramax.xyz/api)."),
    size: str = SizeOption, max_pictures: Optional[int] = MaxOption, pano_crops: int = CropsOption,
    fov: float = FovOption, concurrency: int = ConcurrencyOption, streets: Optional[Path] = StreetsOption,
    no_streets: bool = NoStreetsOption, retries: int = RetriesOption,
    per_request: int = typer.Option(1000, "--per-request", help="Pictures asked in one search: a box whose answer "
                                    "is full without a next page (GeoVisio's way) is split in four."),
):
    """Panoramax pictures of an area (a STAC search), with a manifest, ATTRIBUTION.txt and streets.graphml."""
    _fetch("panoramax", out, concurrency, bbox=bbox, place=place, api=api, size=size, max_pictures=max_pictures,
           pano_crops=pano_crops, fov=fov, streets=streets, no_streets=no_streets, retries=retries,
           per_request=per_request)


@fetch_app.command("mapillary")
def data_fetch_mapillary(
    out: Path = FetchOutOption, bbox: Optional[str] = BboxOption, place: Optional[str] = PlaceOption,
    token: Optional[str] = typer.Option(None, "--token", help="Mapillary client token (default: $MAPILLARY_TOKEN); "
                                        "never written anywhere."),
    api: Optional[str] = typer.Option(None, "--api", help="Graph API base (default: https://graph.mapillary.com)."),
    size: str = SizeOption, max_pictures: Optional[int] = MaxOption, pano_crops: int = CropsOption,
    fov: float = FovOption, concurrency: int = ConcurrencyOption, streets: Optional[Path] = StreetsOption,
    no_streets: bool = NoStreetsOption, retries: int = RetriesOption,
    per_request: int = typer.Option(2000, "--per-request", help="The images search's cap on one answer: a box "
                                    "that fills it is split in four."),
):
    """Mapillary pictures of an area (Graph API v4, CC BY-SA 4.0), with a manifest, ATTRIBUTION.txt and streets."""
    _fetch("mapillary", out, concurrency, bbox=bbox, place=place, api=api, size=size, max_pictures=max_pictures,
           pano_crops=pano_crops, fov=fov, streets=streets, no_streets=no_streets, retries=retries, token=token,
           per_request=per_request)


# --- synth -----------------------------------------------------------------------------------------

@synth_app.command("city")
def synth_city(
    out: Path = typer.Option(..., "--out", help="OSM XML file to write (.osm or .osm.bz2)."),
    seed: int = typer.Option(0),
    size_m: float = typer.Option(1500.0, "--size-m", help="Side of the square city in metres."),
):
    """Write the procedural demo city (districts, river, bridges, parks) as an OSM XML file."""
    from retrieval.synth.city import write_demo_city

    if not 400 <= size_m <= 5000:
        raise GeolocError(f"--size-m {size_m:g}: choose 400 to 5000 m")
    write_demo_city(out, seed=seed, size_m=size_m)
    typer.echo(f"wrote {out}")


RandomizeOption = typer.Option("", "--randomize", help="Domain randomisation of the renders, comma-separated: sky, "
                               "facades, windows, occluders, furniture, camera, optics, or all (retrieval/synth/randomize.py).")


@synth_app.command("render")
def synth_render(
    out: Path = typer.Option(..., "--out", help="Data folder: images/, train.csv, test.csv, dataset.json."),
    osm: Optional[Path] = typer.Option(None, "--osm", help="OSM extract (.osm/.osm.bz2); default: the demo city."),
    train: Optional[int] = typer.Option(None, "--train", help="Training positions in all (default: one per --spacing-m)."),
    spacing_m: float = typer.Option(10.0, "--spacing-m", help="Metres of street per training view (without --train)."),
    test: int = typer.Option(100, "--test", help="Test views at independent random positions."),
    size: int = typer.Option(224, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0),
    shift: bool = typer.Option(False, "--shift", help="Render test views at dusk (a condition shift)."),
    workers: int = typer.Option(2, "--workers", help="Rendering processes."),
    fov: float = typer.Option(90.0, "--fov", help="Horizontal field of view in degrees."),
    headings: int = typer.Option(1, "--headings", help="Views per training position, evenly spaced from the "
                                 "street's direction give or take half a step (4: a Street-View-like panorama); 1: one random heading."),
    val: int = typer.Option(0, "--val", help="Validation views, drawn like the test views (val.csv)."),
    routes: int = typer.Option(0, "--routes", help="Camera walks along the streets to render too (routes.csv, "
                               "with date and route columns: for `geoloc query --route`)."),
    route_len: int = typer.Option(10, "--route-len", help="Photos per walk."),
    route_step: float = typer.Option(10.0, "--route-step", help="Metres walked between two photos of a walk."),
    randomize: str = RandomizeOption,
):
    """Render street-level views of an OSM extract (or the demo city) with train/[val/]test manifests."""
    from retrieval.synth.cameras import render_dataset
    from retrieval.synth.city import write_demo_city
    from retrieval.synth.randomize import parse_knobs

    knobs = parse_knobs(randomize)

    if osm is None:
        osm = out / "city.osm"
        if not osm.is_file():
            write_demo_city(osm, seed=seed)
    info = render_dataset(osm, out, n_train=train, n_test=test, size=size, seed=seed,
                          test_condition_shift=shift, workers=workers,
                          spacing_m=None if train is not None else spacing_m, fov=fov, headings=headings,
                          n_val=val, n_routes=routes, route_len=route_len, route_step=route_step, knobs=knobs)
    walked = f", {info['routes']} routes of {route_len} (routes.csv)" if routes else ""
    typer.echo(f"wrote {out}: {info['train']} train, {info['val']} val, {info['test']} test views{walked}"
               + (f" ({info['images_per_s']} img/s)" if info["images_per_s"] else " (all already rendered)"))


@synth_app.command("sheet")
def synth_sheet(
    data: Path = typer.Argument(..., help="A rendered data folder, or a manifest CSV (e.g. real photos)."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    n: int = typer.Option(24, "--n", help="Number of views."),
    cols: int = typer.Option(6, "--cols"),
    split: str = typer.Option("train", "--split", help="train or test"),
    order: str = typer.Option("spread", "--order", help="spread | neighbours (pairs of nearby cameras)"),
    thumb: int = typer.Option(160, "--thumb", help="Side of each view on the sheet, pixels."),
):
    """A contact sheet of rendered views (or a manifest's photos), each labelled with its coordinates and heading."""
    from retrieval.synth.sheet import contact_sheet

    for name, value, least in (("--n", n, 1), ("--cols", cols, 1), ("--thumb", thumb, 16)):
        if value < least:
            raise GeolocError(f"synth sheet: {name} {value}: must be at least {least}")
    contact_sheet(data, out, n=n, cols=cols, split=split, order=order, thumb=thumb)
    typer.echo(f"wrote {out}")


# --- train cells / regression, evaluate ------------------------------------------------------------

def _train_setup(kind: str, data: Optional[Path], config: Optional[Path], out: Optional[Path],
                 resume: bool, overrides: Optional[List[str]]):
    """Resolved config and run directory; resuming reads the run's own config.yaml (--set still applies)
    and is refused, before anything is written, if it would change what the checkpoint depends on.
    Under torchrun every process gets the same run directory and only rank 0 writes to it."""
    import time

    from retrieval.learning import distributed
    from retrieval.config import load_config
    from retrieval.run import prepare_run_dir
    from retrieval.run import check_resume, clean_stale_tmp, lock_run_dir, record_resume
    from retrieval.learning.train import check_run_dir

    distributed.init()

    if resume:
        if out is None:
            raise GeolocError("--resume needs --out RUN (the run directory to continue)")
        cfg = load_config(Run(out).config_file, overrides)
    else:
        cfg = load_config(config, overrides, base={"name": kind})
    if data is not None:
        cfg.data.train = str(data)
    run_dir = out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(distributed.gather_objects(str(run_dir))[0])  # rank 0's clock names it
    if run_dir.exists() and not run_dir.is_dir():
        raise GeolocError(f"{run_dir}: exists and is not a folder; choose another --out")
    check_run_dir(run_dir, resume)
    changes = check_resume(run_dir, kind, cfg) if resume else {}
    if distributed.is_main():
        lock_run_dir(run_dir, f"train {kind}")  # before anything is written
        clean_stale_tmp(run_dir)
        if resume:
            record_resume(run_dir, cfg, changes)
        else:
            prepare_run_dir(run_dir, cfg)
        typer.echo(f"run directory: {run_dir}" + (f" ({distributed.world_size()} processes)"
                                                  if distributed.world_size() > 1 else ""))
    return cfg, run_dir


def _echo_summary(summary: dict) -> None:
    from retrieval.learning import distributed

    if not distributed.is_main():
        return
    if not summary["epochs"]:
        typer.echo("done: no epoch to train (train.epochs is 0 or already reached)")
        return
    typer.echo(f"done: {summary['epochs']} epoch(s), best {summary['metric']} {summary['best']:.4g} "
               f"at epoch {summary['best_epoch']}, {summary['train_images_per_s']:.1f} img/s")


DataOption = typer.Option(None, "--data", help="Data folder (train.csv, optional val.csv and test.csv) or a manifest CSV.")
ConfigOption = typer.Option(None, "--config", help="YAML config (see configs/).")
OutOption = typer.Option(None, "--out", help="Run directory (default: runs/<name>-<time>).")
ResumeOption = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")


@train_app.command("cells")
def train_cells_cmd(
    data: Optional[Path] = DataOption,
    grid: Optional[str] = typer.Option(None, "--grid", help="voronoi | square (default: the config's)."),
    config: Optional[Path] = ConfigOption,
    out: Optional[Path] = OutOption,
    resume: bool = ResumeOption,
    overrides: Optional[List[str]] = SetOption,
):
    """Cell classification (the study): ResNet-50 over square or Voronoi cells."""
    from retrieval.methods import trainer

    extra = [f"cells.grid={grid}"] if grid else []
    cfg, run_dir = _train_setup("cells", data, config, out, resume, [*(overrides or []), *extra])
    _echo_summary(trainer("cells")(cfg, run_dir, resume))


@train_app.command("regression")
def train_regression_cmd(
    data: Optional[Path] = DataOption,
    config: Optional[Path] = ConfigOption,
    out: Optional[Path] = OutOption,
    resume: bool = ResumeOption,
    overrides: Optional[List[str]] = SetOption,
):
    """Coordinate regression (the study): ResNet-50 + 256-unit head on normalised lat/lon."""
    from retrieval.methods import trainer

    cfg, run_dir = _train_setup("regression", data, config, out, resume, overrides)
    _echo_summary(trainer("regression")(cfg, run_dir, resume))


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Option(..., "--run", help="A trained run directory."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder or manifest (default: the run's)."),
    save_predictions: int = typer.Option(0, "--save-predictions", help="Embedding runs: draw N test photos (the "
                                         "worst, the best and a random sample) beside their neighbours in "
                                         "RUN/predictions/ (PNGs and index.html)."),
):
    """Locate the test photos; writes RUN/metrics.json, predictions.csv (and predictions.npz)."""
    from retrieval.reports.evaluate import evaluate_run
    from retrieval.reports.prediction_images import save_predictions as draw_predictions
    from retrieval.reports.report import versus_floors
    from retrieval.run import read_run_info

    if save_predictions < 0 or (save_predictions and read_run_info(run)["kind"] != "embedding"):
        raise GeolocError(f"--save-predictions {save_predictions}: draws N >= 1 photos of an embedding run "
                          "(only its answers have neighbour photos to show)")
    m = evaluate_run(run, data)
    extra = f", cell accuracy {m['cell_acc']:.1%}" if "cell_acc" in m else ""
    typer.echo(f"{run}: {m['n']} test photos, median error {m['median_error_m']:.1f} m, "
               f"acc@100m {m['acc@100m']:.1%}{extra}; wrote metrics.json, predictions.csv")
    typer.echo(versus_floors({"method": run.name, **m}, m["floors"]).replace("**", ""))
    if save_predictions:
        typer.echo(f"prediction images: {draw_predictions(run, save_predictions)}")


# --- embedding, index, query -----------------------------------------------------------------------

@train_app.command("embedding")
def train_embedding_cmd(
    data: Optional[Path] = DataOption,
    positives: Optional[str] = typer.Option(None, "--positives", help="geodesic | euclidean (the ablation)."),
    streets: Optional[str] = typer.Option(None, "--streets", help="Street graph: .osm/.osm.bz2/.graphml, "
                                          "bbox:W,S,E,N or place:NAME (default: DATA/streets.graphml)."),
    config: Optional[Path] = ConfigOption,
    out: Optional[Path] = OutOption,
    resume: bool = ResumeOption,
    overrides: Optional[List[str]] = SetOption,
):
    """Geodesic metric learning: triplets by walking distance along the street graph."""
    from retrieval.methods import trainer

    extra = [f"embedding.positives={positives}"] if positives else []
    extra += [f"embedding.streets={streets}"] if streets else []
    cfg, run_dir = _train_setup("embedding", data, config, out, resume, [*(overrides or []), *extra])
    _echo_summary(trainer("embedding")(cfg, run_dir, resume))


@index_app.command("build")
def index_build_cmd(
    run: Optional[Path] = typer.Option(None, "--run", "--run-dir", help="A trained embedding run (under torchrun "
                                       "spell it --run-dir: torchrun reads --run as its own --run-path)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Photos to index (default: the run's data)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="No training: index --data with this network "
                                           "as it is (efficientnet_lite0 and the other archs with ImageNet "
                                           "weights, or hub:OWNER/REPO:ENTRY[k=v,...]) into a new run --out."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --backbone: the run folder to make."),
    config: Optional[Path] = ConfigOption,
    kind: Optional[str] = typer.Option(None, "--kind", help="flat (exact) | ivfpq | hnsw."),
    overrides: Optional[List[str]] = SetOption,
):
    """Embed the training photos and save a FAISS index with its sidecar in RUN/index. Under torchrun every
    process embeds a share of the photos and rank 0 writes the index."""
    from retrieval.learning import distributed
    from retrieval.config import load_config
    from retrieval.answering.run_index import build_run_index
    from retrieval.run import lock_run_dir

    sets = [*(overrides or []), *([f"index.kind={kind}"] if kind else [])]
    if data is not None:
        # A database to index is not a data set to split: every photo of a manifest is indexed (of a
        # data folder, train.csv and val.csv; test.csv holds queries).
        sets += [f"data.train={data}", "data.test=", "data.val_fraction=0", "data.test_fraction=0"]
    if backbone is not None:
        from retrieval.methods.zero_shot import make_zero_shot_run

        if run is not None or out is None or data is None:
            raise GeolocError("index build --backbone NAME needs --data PHOTOS and --out RUN (a new run), not --run")
        distributed.init()
        if distributed.is_main():  # under torchrun rank 0 makes the run, the others read it
            lock_run_dir(out, "index build")
            cfg = make_zero_shot_run(out, backbone, config, sets)
        distributed.barrier()
        run, cfg = out, cfg if distributed.is_main() else load_config(Run(out).config_file, sets)
    else:
        if run is None or out is not None or config is not None:
            raise GeolocError("index build: give --run RUN (a trained run), or --backbone NAME --data PHOTOS --out RUN")
        if not Run(run).config_file.is_file():
            raise GeolocError(f"{run}: not a run directory (no config.yaml)")
        distributed.init()
        if distributed.is_main():
            lock_run_dir(run, "index build")
        cfg = load_config(Run(run).config_file, sets)
    s = build_run_index(run, cfg)
    if not distributed.is_main():
        return
    _keep_rerank_setting(run, cfg)
    shards = f", {s['shards']} shards" if s["shards"] > 1 else ""
    typer.echo(f"indexed {s['photos']} photos{' (every photo of ' + str(data) + ')' if data else ''} ({s['kind']}, {s['dim']}-d{shards}) in {s['seconds']:.1f} s, "
               f"{s['embed_images_per_s']:.1f} img/s, {s['embedded']} embedded now: {run / 'index'}")
    if "local_bytes_per_photo" in s:
        typer.echo(f"local features for index.rerank={cfg.index.rerank}: {s['local_bytes_per_photo'] / 1000:.1f} KB "
                   f"and {s['local_ms_per_photo']:.1f} ms per photo ({cfg.rerank.keypoints} keypoints at "
                   f"{cfg.rerank.size} px)")


def _keep_rerank_setting(run: Path, cfg) -> None:
    """The run answers with the rerank its index was built for: query, serve and evaluate read config.yaml."""
    from retrieval.config import dump_yaml, load_config
    from retrieval.files import atomic_write_text

    own = load_config(Run(run).config_file)
    if (own.index.rerank, own.rerank) != (cfg.index.rerank, cfg.rerank):
        own.index.rerank, own.rerank = cfg.index.rerank, cfg.rerank
        atomic_write_text(Run(run).config_file, dump_yaml(own))


def _answer_text(a) -> str:
    lines = [f"{a.source}: {a.lat:.6f}, {a.lon:.6f}  confidence {a.confidence:.2f}  ({a.vote} vote, {a.ms:.0f} ms)"]
    for n in a.neighbours:
        checked = f"  {n.inliers:4d} inliers" if n.inliers >= 0 else ""
        lines.append(f"    {n.similarity:.3f}  {n.lat:.6f}, {n.lon:.6f}  {n.distance_m:7.0f} m{checked}  {Path(n.path).name}")
    return "\n".join(lines)


def _answers_summary(answers) -> str:
    ms = [a.ms for a in answers if not a.error]
    bad = sum(bool(a.error) for a in answers)
    text = f"{len(ms)} image(s)" + (f", median {sorted(ms)[len(ms) // 2]:.0f} ms per image" if ms else "")
    return text + (f"; {bad} could not be located" if bad else "")


@app.command("query")
def query_cmd(
    images: List[Path] = typer.Argument(..., help="Images or folders of images."),
    run: Path = typer.Option(..., "--run", help="A trained embedding run with an index."),
    k: Optional[int] = typer.Option(None, "--k", help="Neighbours that vote (default: the run's index.k)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    route: bool = typer.Option(False, "--route", help="The photos were taken in order (a walk): locate them together "
                               "along the streets. Ordered by EXIF capture time, else a CSV list's date/order "
                               "column, else file name; writes --route-out (GeoJSON) and a PNG beside it."),
    route_out: Path = typer.Option(Path("route.geojson"), "--route-out", help="With --route: the GeoJSON to write."),
    streets: Optional[str] = typer.Option(None, "--streets", help="With --route: the street graph (default: the "
                                          "run's, DATA/streets.graphml or embedding.streets)."),
    distance: Optional[str] = typer.Option(None, "--distance", help="With --route: geodesic (walking, default) | "
                                           "euclidean (straight-line steps: the ablation)."),
    overrides: Optional[List[str]] = SetOption,
):
    """Where was this photo taken? Prints lat, lon, confidence and the neighbours that voted."""
    import json

    from retrieval.answering.locator import Locator

    if k is not None and k < 1:
        raise GeolocError(f"--k {k}: at least 1 neighbour must vote")
    if route or streets or distance or overrides:
        _query_route(images, run, k, as_json, route, route_out, streets, distance, overrides)
        return
    answers = Locator.load(run).locate(images, k)
    for a in answers:
        if a.warning:
            _say(f"warning: {a.warning}")
    if as_json:
        typer.echo(json.dumps([a.to_dict() for a in answers], indent=2))
    else:
        for a in answers:
            if not a.error:
                typer.echo(_answer_text(a))
        typer.echo(_answers_summary(answers))
    bad = [a for a in answers if a.error]
    if bad:  # the good images are answered above; each bad one is named, and the status says so
        for a in bad:
            _say(f"error: {a.error}")
        raise typer.Exit(2)


def _query_route(images, run: Path, k, as_json: bool, route: bool, out: Path, streets, distance, overrides) -> None:
    """`geoloc query --route`: each photo's place on the route beside its single-photo answer."""
    import json

    from retrieval.answering.locator import Locator
    from retrieval.config import load_config
    from retrieval.reports.route_map import write_route

    if not route:
        raise GeolocError("--streets, --distance and --set apply to --route only")
    if not Run(run).config_file.is_file():
        raise GeolocError(f"{run}: not a run directory (no config.yaml)")
    extra = ([f"route.distance={distance}"] if distance else []) + ([f"index.k={k}"] if k else [])
    loc = Locator.load(run, load_config(Run(run).config_file, [*(overrides or []), *extra]))
    r = loc.locate_route(images[0] if len(images) == 1 and images[0].suffix.lower() == ".csv" else images,
                         streets=streets)
    geojson, png = write_route(r, out, loc.side.lat, loc.side.lon)
    if as_json:
        typer.echo(json.dumps({**r.to_dict(), "geojson": str(geojson), "png": str(png)}, indent=2))
    else:
        typer.echo(_route_text(r) + f"\nwrote {geojson} and {png}")
    for note in r.notes:
        _say(f"note: {note}")
    if any(pt.error for pt in r.points):  # as for single photos: the status says some were not located
        raise typer.Exit(2)


def _route_text(r) -> str:
    lines = [f"route of {len(r.points)} photo(s), ordered by {r.order}, {r.distance} steps, {len(r.paths)} segment(s):"]
    for i, pt in enumerate(r.points, start=1):
        name, s = Path(pt.source).name, pt.single
        lines.append(f"{i:3d}  {name}: skipped" if pt.error else
                     f"{i:3d}  {name}  route {pt.lat:.6f}, {pt.lon:.6f} (confidence {pt.confidence:.2f}, segment "
                     f"{pt.segment + 1})  single {s.lat:.6f}, {s.lon:.6f} ({s.confidence:.2f})  moved {pt.moved_m:.0f} m")
    return "\n".join(lines)


@app.command("serve")
def serve_cmd(
    run: Path = typer.Option(..., "--run", help="A trained embedding run with an index."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every machine that "
                             "can reach this one)."),
    port: int = typer.Option(8000, "--port"),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest upload (one request) accepted."),
):
    """A local web page: drop photos, see where they were taken on a map of the city (works offline)."""
    from retrieval.web.app import load_app, make_http_server

    if not 0 <= port <= 65535 or max_upload_mb <= 0:
        raise GeolocError(f"--port {port} must be 0-65535 and --max-upload-mb {max_upload_mb:g} > 0")
    server = make_http_server(load_app(run, max_upload_mb=max_upload_mb), host, port)
    typer.echo(f"serving {run} on http://{host}:{server.server_port}/  (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {host}: the page and the run's photos are open to other machines", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()


@app.command("pretrain")
def pretrain_cmd(
    cities: List[Path] = typer.Argument(..., help="Two or more OSM extracts (.osm/.osm.bz2), one per city."),
    out: Path = typer.Option(..., "--out", help="Run directory: the pretrained embedding, its views and model card."),
    views: int = typer.Option(1000, "--views", help="Training positions rendered per city."),
    headings: int = typer.Option(4, "--headings", help="Views per position (4: a Street-View-like panorama)."),
    randomize: str = RandomizeOption,
    config: Optional[Path] = ConfigOption,
    overrides: Optional[List[str]] = SetOption,
    resume: bool = ResumeOption,
):
    """Train one embedding on rendered views of several cities: a model before a city's first photo.
    After a kill, rerun it with --resume and the same cities, --out, --views and --headings."""
    from retrieval.learning import distributed
    from retrieval.config import load_config
    from retrieval.methods.pretrain import PRETRAIN, pretrain
    from retrieval.run import lock_run_dir
    from retrieval.synth.randomize import parse_knobs

    knobs = parse_knobs(randomize)

    if views < 10 or not 1 <= headings <= 36:
        raise GeolocError(f"pretrain: --views {views} (at least 10) and --headings {headings} (1 to 36)")
    distributed.init()
    own = Run(out).config_file  # resuming reads the run's own settings, as `train --resume` does
    cfg = load_config(own if resume and own.is_file() else config, overrides, base=PRETRAIN)
    if distributed.is_main():
        lock_run_dir(out, "pretrain")
    card = pretrain(cfg, cities, out, views, headings, knobs, resume)
    if not card:  # another rank of torchrun's: rank 0 reports
        return
    t = card["training"]
    typer.echo(f"pretrained on {len(card['cities'])} cities: {t['epochs']} epochs, {t['train_images']} images; "
               f"model card {out / 'MODEL_CARD.md'}\nzero-shot on your photos: geoloc index build --run {out} "
               f"--data PHOTOS && geoloc evaluate --run {out} --data PHOTOS")


# --- the main job ----------------------------------------------------------------------------------

@app.command("benchmark")
def benchmark_cmd(
    config: Path = typer.Option(..., "--config", help="Benchmark config, e.g. configs/bench_london.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<name>)."),
    overrides: Optional[List[str]] = SetOption,
):
    """Render a city, train every method of bench.methods under one budget, evaluate, report.
    Run it again with the same --out to resume after a kill."""
    from retrieval.config import load_config
    from retrieval.reports.benchmark import run_benchmark
    from retrieval.run import lock_run_dir

    cfg = load_config(config, overrides)
    out = out or Path("runs") / cfg.name
    lock_run_dir(out, "benchmark")
    report = run_benchmark(cfg, out)
    typer.echo(f"report: {report / 'report.md'}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
    overrides: Optional[List[str]] = SetOption,
):
    """The whole job on the embedded procedural demo city: no data files needed."""
    from retrieval.config import load_config
    from retrieval.reports.benchmark import DEMO, demo_query_hint, run_benchmark
    from retrieval.run import lock_run_dir

    cfg = load_config(None, overrides, base=DEMO)
    lock_run_dir(out, "demo")
    report = run_benchmark(cfg, out)
    typer.echo(f"report: {report / 'report.md'}")
    typer.echo(demo_query_hint(out))


def _say(line: str) -> None:
    """A warning or error on a line of its own, even while a progress bar is drawn."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        tqdm.write(line, file=sys.stderr)  # clears the bar, prints, redraws it
        return
    # In a log file a live bar's last redraw ends in "\r", not a newline: start a line of our own.
    live = bool(getattr(tqdm, "_instances", None))
    sys.stderr.write(("\n" if live else "") + line + "\n")
    sys.stderr.flush()


def _format_warning(message, category, filename, lineno, file=None, line=None):
    _say(f"warning: {message}")


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit status 2."""
    if not sys.stderr.isatty():
        # Redirected to a file: a progress line a minute, not every redraw (tqdm reads TQDM_* when
        # imported, which the commands do after this). Epoch lines are printed as they come.
        os.environ.setdefault("TQDM_MININTERVAL", "60")
    warnings.showwarning = _format_warning
    from retrieval.files import disk_full_message, is_disk_full, os_error_message

    try:
        app()
    except GeolocError as exc:
        _say(f"error: {exc}")
        sys.exit(2)
    except OSError as exc:
        if exc.errno is None:
            raise
        _say(f"error: {os_error_message(exc)}")
        sys.exit(2)
    except RuntimeError as exc:  # torch and faiss report a failed write this way
        if not is_disk_full(exc):
            raise
        _say(f"error: {disk_full_message('a file', exc, atomic=False)}".splitlines()[0])
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        # Only a command that trained or indexed under torchrun loaded it: --help and `data` load no torch.
        if "retrieval.learning.distributed" in sys.modules:
            sys.modules["retrieval.learning.distributed"].shutdown()


if __name__ == "__main__":
    main()
