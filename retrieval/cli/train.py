"""`geoloc train cells|regression|embedding` and `geoloc pretrain`: a run folder prepared, locked and
trained (resumable), under torchrun too."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from retrieval import GeolocError
from retrieval.cli.apps import ConfigOption, DataOption, OutOption, RandomizeOption, ResumeOption, SetOption, app, train_app
from retrieval.run import Run


# --- train cells / regression, evaluate ------------------------------------------------------------

def _train_setup(kind: str, data: Optional[Path], config: Optional[Path], out: Optional[Path],
                 resume: bool, overrides: Optional[List[str]]):
    """Resolved config and run directory; resuming reads the run's own config.yaml (--set still applies)
    and is refused, before anything is written, if it would change what the checkpoint depends on.
    Under torchrun every process gets the same run directory and only rank 0 writes to it."""
    import time

    from retrieval.learning import distributed
    from retrieval.config import load_config
    from retrieval.run import check_resume, clean_stale_tmp, record_resume
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
    run_dir = Run(distributed.gather_objects(str(run_dir))[0])  # rank 0's clock names it
    if run_dir.exists() and not run_dir.is_dir():
        raise GeolocError(f"{run_dir}: exists and is not a folder; choose another --out")
    check_run_dir(run_dir, resume)
    changes = check_resume(run_dir, kind, cfg) if resume else {}
    if distributed.is_main():
        run_dir.lock(f"train {kind}")  # before anything is written
        clean_stale_tmp(run_dir)
        if resume:
            record_resume(run_dir, cfg, changes)
        else:
            run_dir.prepare(cfg)
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
