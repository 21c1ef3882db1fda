"""`geoloc index build`, `query`, `serve` and `evaluate`: a trained (or zero-shot) run put to use."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from retrieval import GeolocError
from retrieval.cli.apps import ConfigOption, SetOption, app, index_app, say
from retrieval.run import Run


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
    m = evaluate_run(Run(run), data)
    extra = f", cell accuracy {m['cell_acc']:.1%}" if "cell_acc" in m else ""
    typer.echo(f"{run}: {m['n']} test photos, median error {m['median_error_m']:.1f} m, "
               f"acc@100m {m['acc@100m']:.1%}{extra}; wrote metrics.json, predictions.csv")
    typer.echo(versus_floors({"method": run.name, **m}, m["floors"]).replace("**", ""))
    if save_predictions:
        typer.echo(f"prediction images: {draw_predictions(run, save_predictions)}")


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
               f"{s['embed_images_per_s']:.1f} img/s, {s['embedded']} embedded now: {Run(run).index_dir}")
    if "local_bytes_per_photo" in s:
        typer.echo(f"local features for index.rerank={cfg.index.rerank}: {s['local_bytes_per_photo'] / 1000:.1f} KB "
                   f"and {s['local_ms_per_photo']:.1f} ms per photo ({cfg.rerank.keypoints} keypoints at "
                   f"{cfg.rerank.size} px)")
    if "auto" in (cfg.index.vote, cfg.index.rerank):  # chosen here, where the data is: answering reads the run alone
        from retrieval.answering.geometry import label
        from retrieval.answering.locator import Locator

        loc = Locator.load(run, cfg, choose=True)
        typer.echo(f"vote: {loc.mode}" + (f"; rerank: {label(loc.check)}" if cfg.index.rerank != "off" else "")
                   + " (chosen on the validation views)")


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
    answers = Locator.load(Run(run)).locate(images, k)
    for a in answers:
        if a.warning:
            say(f"warning: {a.warning}")
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
            say(f"error: {a.error}")
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
    loc = Locator.load(Run(run), load_config(Run(run).config_file, [*(overrides or []), *extra]))
    r = loc.locate_route(images[0] if len(images) == 1 and images[0].suffix.lower() == ".csv" else images,
                         streets=streets)
    geojson, png = write_route(r, out, loc.side.lat, loc.side.lon)
    if as_json:
        typer.echo(json.dumps({**r.to_dict(), "geojson": str(geojson), "png": str(png)}, indent=2))
    else:
        typer.echo(_route_text(r) + f"\nwrote {geojson} and {png}")
    for note in r.notes:
        say(f"note: {note}")
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
    server = make_http_server(load_app(Run(run), max_upload_mb=max_upload_mb), host, port)
    typer.echo(f"serving {run} on http://{host}:{server.server_port}/  (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {host}: the page and the run's photos are open to other machines", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
