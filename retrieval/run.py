"""A run folder: the Run that owns its layout, what produced it, and what a resumed run may change.

Every file a run holds is named once, by Run; commands, the Locator and the web app pass a Run around
(it is also an os.PathLike, so it goes wherever a path does).

A checkpoint holds weights and optimiser state trained on one data set with one model, loss and
miner; continuing it with any of those changed would give a model that is neither run (or fail deep
in load_state_dict). Resuming may change only the budget: how many epochs, how long, how fast.
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

from retrieval import GeolocError
from retrieval.config import Config, dump_yaml, load_config, to_dict
from retrieval.files import STALE_TMP_S, atomic_write_json, atomic_write_text, remove_stale_tmp
from retrieval.locks import LOCK_FILE, lock_run_dir


class Run:
    """A run folder. Its files, by what they hold:

    config.yaml, command.txt, git.json: what produced it; run.json: its kind and training summary;
    best.pt, last.pt, log.csv: the training; metrics.json, predictions.csv/.npz, predictions/: its
    evaluation; index/ (and index/local/, the rerank's features): its database; vote.json, rerank.json:
    the answer's settings chosen on the validation views; cells/: an embedding's cells prior, itself a
    run (cells/prior.json its weight); grid.geojson, decision.json: a cells run's grid and answer rule.
    """
    CONFIG, COMMAND, GIT, INFO = "config.yaml", "command.txt", "git.json", "run.json"
    BEST, LAST, LOG = "best.pt", "last.pt", "log.csv"
    METRICS, PREDICTIONS_CSV, PREDICTIONS_NPZ, PREDICTIONS_DIR = (
        "metrics.json", "predictions.csv", "predictions.npz", "predictions")
    INDEX_DIR, LOCAL_DIR = "index", "local"
    VOTE, RERANK = "vote.json", "rerank.json"
    PRIOR_DIR, PRIOR = "cells", "prior.json"
    GRID, DECISION = "grid.geojson", "decision.json"
    # What atomic_write names its temporary files after in a run folder (clean_stale_tmp).
    WRITTEN = (BEST, LAST, LOG, INFO, CONFIG, COMMAND, GIT, GRID)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __getattr__(self, attr: str):
        # Everything else a folder path does (exists, mkdir, resolve, parent, ...): code that was handed a
        # Path keeps working when handed the Run.
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.path, attr)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return self.path == (other.path if isinstance(other, Run) else other)

    def __hash__(self) -> int:
        return hash(self.path)

    config_file = property(lambda self: self.path / Run.CONFIG)
    command_file = property(lambda self: self.path / Run.COMMAND)
    info_file = property(lambda self: self.path / Run.INFO)
    best = property(lambda self: self.path / Run.BEST)
    last = property(lambda self: self.path / Run.LAST)
    log = property(lambda self: self.path / Run.LOG)
    metrics = property(lambda self: self.path / Run.METRICS)
    predictions_csv = property(lambda self: self.path / Run.PREDICTIONS_CSV)
    predictions_npz = property(lambda self: self.path / Run.PREDICTIONS_NPZ)
    predictions_dir = property(lambda self: self.path / Run.PREDICTIONS_DIR)
    index_dir = property(lambda self: self.path / Run.INDEX_DIR)
    local_dir = property(lambda self: self.path / Run.INDEX_DIR / Run.LOCAL_DIR)
    vote = property(lambda self: self.path / Run.VOTE)
    rerank = property(lambda self: self.path / Run.RERANK)
    prior_run = property(lambda self: Run(self.path / Run.PRIOR_DIR))
    prior = property(lambda self: self.path / Run.PRIOR_DIR / Run.PRIOR)
    grid = property(lambda self: self.path / Run.GRID)
    decision = property(lambda self: self.path / Run.DECISION)
    lock_file = property(lambda self: self.path / LOCK_FILE)

    def checkpoint(self) -> Path:
        """The checkpoint a trained run answers with: best.pt, else last.pt."""
        return self.best if self.best.is_file() else self.last

    def config(self) -> Config:
        if not self.config_file.is_file():
            raise GeolocError(f"{self.path}: not a run directory (no config.yaml)")
        return load_config(self.config_file)

    def info(self) -> dict:
        return read_run_info(self.path)

    def log_rows(self, upto_epoch: int | None = None) -> list[dict]:
        """log.csv as one dict of strings per epoch (up to `upto_epoch`); [] when there is none."""
        if not self.log.is_file():
            return []
        with self.log.open(newline="", encoding="utf-8") as f:
            return [r for r in csv.DictReader(f) if upto_epoch is None or int(r["epoch"]) <= upto_epoch]

    def lock(self, command: str) -> "Run":
        lock_run_dir(self.path, command)
        return self

    def prepare(self, cfg: Config) -> "Run":
        """Create the folder and record what produced it: resolved config, command line, git revision."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, dump_yaml(cfg))
        atomic_write_text(self.command_file, command_line() + "\n")
        atomic_write_json(self.path / Run.GIT, git_revision())
        return self


def prepare_run_dir(run_dir: str | os.PathLike, cfg: Config) -> Path:
    return Run(run_dir).prepare(cfg).path


def load_run_config(run_dir: str | os.PathLike) -> Config:
    return Run(run_dir).config()


def trained_checkpoint(run_dir: str | os.PathLike) -> Path:
    return Run(run_dir).checkpoint()


# Settings a resumed run may change: the training budget and how the work is spread over threads,
# plus what only later commands use (index, benchmark bookkeeping, the run's name).
RESUME_MAY_CHANGE = ("train.epochs", "train.max_minutes", "train.max_steps_per_epoch", "train.threads", "route.",
                     "data.num_workers", "index.", "rerank.", "bench.", "name")
# Settings that name files: the same file under another spelling is no change.
PATH_KEYS = ("data.train", "data.test", "embedding.streets", "cells.boundary", "model.weights")


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
    info_path = Run(run_dir).info_file
    if info_path.is_file():
        try:
            was = json.loads(info_path.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            was = None
        if was and was != kind:
            raise GeolocError(f"{run_dir}: trained by `geoloc train {was}`, cannot resume it as `geoloc train {kind}`")
    changes = config_changes(Run(run_dir).config(), cfg)
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
        atomic_write_text(Run(run_dir).config_file, dump_yaml(cfg))
    cmd = Run(run_dir).command_file
    before = cmd.read_text(encoding="utf-8") if cmd.is_file() else ""
    atomic_write_text(cmd, before + ("" if not before or before.endswith("\n") else "\n") + command_line() + "\n")


def clean_stale_tmp(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files of our own naming (".best.pt.*.tmp", ...) that a killed run left
    in run_dir; files modified in the last STALE_TMP_S seconds are left alone."""
    removed = remove_stale_tmp(run_dir, Run.WRITTEN, min_age_s=STALE_TMP_S)
    if removed:
        warnings.warn(f"{run_dir}: removed {len(removed)} temporary file(s) left by a killed run "
                      f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})",
                      stacklevel=2)
    return removed


def read_run_info(run_dir: str | Path) -> dict:
    path = Run(run_dir).info_file
    if not path.is_file():
        raise GeolocError(f"{run_dir}: not a trained run (no run.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GeolocError(f"{path}: not valid JSON ({exc})") from None


def git_revision(cwd: str | Path | None = None) -> dict:
    """The commit of the code that produced a run, and whether the tree had local changes."""
    cwd = Path(cwd or Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": rev, "dirty": bool(status) if status is not None else None}


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
