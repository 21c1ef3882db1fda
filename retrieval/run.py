"""Run-directory safety: what a resumed run may change, and the temporary files a killed run leaves.

A checkpoint holds weights and optimiser state trained on one data set with one model, loss and
miner; continuing it with any of those changed would give a model that is neither run (or fail deep
in load_state_dict). Resuming may change only the budget: how many epochs, how long, how fast.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from retrieval import GeolocError
from retrieval.locks import LOCK_FILE, lock_run_dir  # noqa: F401 (the commands take the lock from here)
from retrieval.config import Config, dump_yaml, load_config, to_dict
from retrieval.files import STALE_TMP_S, atomic_write_text, command_line, remove_stale_tmp

# Settings a resumed run may change: the training budget and how the work is spread over threads,
# plus what only later commands use (index, benchmark bookkeeping, the run's name).
RESUME_MAY_CHANGE = ("train.epochs", "train.max_minutes", "train.max_steps_per_epoch", "train.threads", "route.",
                     "data.num_workers", "index.", "rerank.", "bench.", "name")
# Settings that name files: the same file under another spelling is no change.
PATH_KEYS = ("data.train", "data.test", "embedding.streets", "cells.boundary", "model.weights")
# What atomic_write names its temporary files after in a run directory.
RUN_FILES = ("best.pt", "last.pt", "log.csv", "run.json", "config.yaml", "command.txt", "git.json",
             "grid.geojson")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "methods":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same_path(a, b) -> bool:
    if a == b:
        return True
    if not a or not b:
        return False
    try:
        return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def config_changes(before: Config, after: Config) -> dict[str, tuple]:
    """key -> (before, after) for every setting that differs."""
    a, b = _flat(to_dict(before)), _flat(to_dict(after))
    out = {}
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k) or (k in PATH_KEYS and _same_path(a.get(k), b.get(k))):
            continue
        out[k] = (a.get(k), b.get(k))
    return out


def check_resume(run_dir: str | Path, kind: str, cfg: Config) -> dict[str, tuple]:
    """Refuse, in one line listing the differences, a resume that changes what the checkpoint depends
    on (another kind of run, data, model, augmentation, optimiser, loss, mining, seed). Returns the
    allowed changes (epochs, time budget, threads)."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if info_path.is_file():
        try:
            was = json.loads(info_path.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            was = None
        if was and was != kind:
            raise GeolocError(f"{run_dir}: trained by `geoloc train {was}`, cannot resume it as `geoloc train {kind}`")
    changes = config_changes(load_config(run_dir / "config.yaml"), cfg)
    refused = {k: v for k, v in changes.items() if not k.startswith(RESUME_MAY_CHANGE)}
    if refused:
        listed = "; ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in refused.items())
        raise GeolocError(f"{run_dir}: --resume cannot change what the checkpoint was trained with ({listed}); "
                          "only train.epochs, train.max_minutes, train.max_steps_per_epoch and threads may change: "
                          "start a new run with another --out instead")
    return changes


def record_resume(run_dir: str | Path, cfg: Config, changes: dict) -> None:
    """A resume that was accepted: config.yaml takes the new budget, command.txt gains the command
    (the command that started the run stays its first line)."""
    run_dir = Path(run_dir)
    if changes:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    cmd = run_dir / "command.txt"
    before = cmd.read_text(encoding="utf-8") if cmd.is_file() else ""
    atomic_write_text(cmd, before + ("" if not before or before.endswith("\n") else "\n") + command_line() + "\n")


def clean_stale_tmp(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files of our own naming (".best.pt.*.tmp", ...) that a killed run left
    in run_dir; files modified in the last STALE_TMP_S seconds are left alone."""
    removed = remove_stale_tmp(run_dir, RUN_FILES, min_age_s=STALE_TMP_S)
    if removed:
        warnings.warn(f"{run_dir}: removed {len(removed)} temporary file(s) left by a killed run "
                      f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})",
                      stacklevel=2)
    return removed


def read_run_info(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise GeolocError(f"{run_dir}: not a trained run (no run.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GeolocError(f"{path}: not valid JSON ({exc})") from None


