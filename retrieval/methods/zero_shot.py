"""A run that answers with a backbone as it is, trained on nothing: `geoloc index build --backbone`.

Its checkpoint is the untrained network (ImageNet weights, a torch.hub model, or any other start), saved
as best.pt, so `query`, `evaluate`, `serve` and routes use it like any trained run, and `train embedding
--set model.weights=RUN` fine-tunes from it.
"""
from __future__ import annotations

from pathlib import Path

from retrieval import GeolocError
from retrieval.choices import HUB
from retrieval.config import Config, load_config
from retrieval.files import atomic_write_json
from retrieval.learning.backbones import BACKBONES, output_width
from retrieval.learning.checkpoints import save_checkpoint
from retrieval.learning.models import embedding_net
from retrieval.learning.precision import resolve_precision
from retrieval.run import Run, config_changes, load_run_config, prepare_run_dir, read_run_info

# The measured choice for an ImageNet trunk used as it is (benchmarks/RESULTS.md, "ImageNet, zero-shot").
ZERO_SHOT_POOLING = "gem"


def zero_shot_settings(backbone: str) -> list[str]:
    """The settings a zero-shot run of `backbone` (an arch, or a hub:... spec) starts from: its pretrained
    weights, no projection head, and the input size its weights were trained at."""
    if backbone.startswith("hub:"):
        return ["model.arch=hub", f"model.weights={backbone}", "model.embed_dim=0"]
    if backbone not in BACKBONES:
        raise GeolocError(f"--backbone {backbone!r}: choose one of {', '.join(BACKBONES)}, or hub:OWNER/REPO:ENTRY")
    size = BACKBONES[backbone].input_size
    return [f"model.arch={backbone}", "model.weights=imagenet", "model.embed_dim=0",
            f"model.pooling={ZERO_SHOT_POOLING}", f"data.image_size={size}", f"data.resize={round(size * 256 / 224)}"]


def make_zero_shot_run(run_dir: Path, backbone: str, config: Path | None, overrides: list[str]) -> Config:
    """Write a run folder (config.yaml, best.pt, run.json) whose model is `backbone` untrained; settings:
    the backbone's (zero_shot_settings) <- the config file <- overrides. A folder that already holds the
    same zero-shot run is reused (its index build resumes); any other run there is refused. Returns the
    run's config."""
    cfg = load_config(config, [*zero_shot_settings(backbone), *overrides], base={"name": "zero_shot"})
    if Run(run_dir).config_file.is_file() or Run(run_dir).best.exists():
        return _same_run(run_dir, cfg)
    model = embedding_net(cfg.model.weights, cfg.model.embed_dim, 0.0, cfg.model.arch, cfg.model.pooling)
    if cfg.model.arch == HUB:  # its descriptor size, so the config alone says what the index holds
        cfg.model.embed_dim = output_width(model.trunk, cfg.data.image_size)
    prepare_run_dir(run_dir, cfg)
    save_checkpoint(Run(run_dir).best, {"kind": "embedding", "model": model.state_dict(), "epoch": 0})
    atomic_write_json(Run(run_dir).info_file, {"kind": "embedding", "zero_shot": True, "backbone": backbone,
                                             "precision": resolve_precision(cfg.train.precision),
                                             "train": {"epochs": 0, "train_seconds": 0.0, "train_images": 0}})
    return cfg


def _same_run(run_dir: Path, cfg: Config) -> Config:
    """The run already in run_dir, if it is the zero-shot run cfg describes (index settings may differ)."""
    info = read_run_info(run_dir)
    if not info.get("zero_shot"):
        raise GeolocError(f"{run_dir}: already holds a trained run; index it with --run {run_dir}, "
                          "or choose another --out for a zero-shot run")
    was = load_run_config(run_dir)
    if cfg.model.arch == HUB:
        cfg.model.embed_dim = was.model.embed_dim  # measured when the run was made
    changes = {k: v for k, v in config_changes(was, cfg).items() if not k.startswith(("index.", "name"))}
    if changes:
        listed = "; ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changes.items())
        raise GeolocError(f"{run_dir}: a zero-shot run with other settings ({listed}); choose another --out")
    return cfg
