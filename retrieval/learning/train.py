"""The one training loop every method shares: AdamW or SGD, a warmup + cosine schedule by steps (or the
study's exponential decay per epoch), a budget in epochs or minutes, bf16/fp32, per-epoch log, atomic
last/best checkpoints with RNG state so a killed run resumes exactly.

A method supplies a `Task` (model, train batches, loss, validation); the loop owns the rest. Under
torchrun the loop wraps the model in DistributedDataParallel; rank 0 alone validates and writes
(log, checkpoints, run.json), and a checkpoint holds every rank's RNG state so resuming under torchrun
with the same number of processes continues exactly.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from retrieval import GeolocError

from retrieval.config import Config, TrainConfig
from retrieval.files import atomic_write, atomic_write_json
from retrieval.learning import distributed
from retrieval.learning.checkpoints import load_checkpoint, save_checkpoint
from retrieval.learning.models import freeze_batchnorm
from retrieval.learning.optim import lr_factor, make_optimizer
from retrieval.learning.precision import autocast, prepare_images, prepare_model, resolve_precision
from retrieval.run import Run


class Task(Protocol):
    kind: str  # "cells" | "regression" | "embedding": recorded in run.json for `geoloc evaluate`
    metric: str  # key of validate()'s dict that selects best.pt
    maximize: bool
    model: nn.Module
    train_loader: Iterable  # re-iterated every epoch; each batch is (images, *rest)

    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor: ...

    def validate(self, model: nn.Module) -> dict[str, float]: ...  # {} when there is no val set

    def info(self) -> dict: ...  # extra run.json entries (e.g. number of cells)

    # Optional: `extra`, an nn.Module of weights the loss trains beside the model (e.g. a classifier
    # head used only in training). It is optimised and checkpointed ("extra") but is not the model.


def extra_module(task) -> nn.Module | None:
    """The task's `extra` weights, or None."""
    return getattr(task, "extra", None)


# --- seeds -----------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states as tensors and plain values, so a checkpoint loads with weights_only=True."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


# --- the loop --------------------------------------------------------------------------------------

def _write_log(path: Path, rows: list[dict]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: the CSV log is the record
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse to start over a trained run (its checkpoints would be overwritten) or to resume nothing."""
    last = Run(run_dir).last
    if resume and not last.is_file():
        raise GeolocError(f"{run_dir}: nothing to resume (no last.pt)")
    if not resume and last.exists():
        raise GeolocError(f"{run_dir}: already has a checkpoint; pass --resume or choose another run directory")


def _better(value: float, best: float | None, maximize: bool) -> bool:
    return best is None or (value > best if maximize else value < best)


def _all_threads():
    """Rank 0 validates alone while the other ranks wait: let it use every core this process may use
    (torchrun starts each process with one thread)."""
    if distributed.world_size() == 1:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def scope():
        before = torch.get_num_threads()
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        torch.set_num_threads(len(cores))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return scope()


def _restore_rng(state: dict, cfg: Config, epoch: int) -> None:
    ranks, rank = state.get("rng_ranks") or [state["rng"]], distributed.rank()
    if len(ranks) == distributed.world_size():
        set_rng_state(ranks[rank])
        return
    warnings.warn(f"resuming on {distributed.world_size()} processes a run checkpointed on {len(ranks)}: "
                  "random streams (augmentation) restart from the seed", stacklevel=3)
    seed_everything(cfg.seed + 1000 * epoch + rank)


def _resume(task: Task, model: nn.Module, opt: torch.optim.Optimizer, cfg: Config, run_dir: Path,
            resume: bool) -> tuple[int, float | None, int, int, list[dict]]:
    """(epochs done, best metric, best epoch, optimiser steps done, log rows) from last.pt, or a fresh start."""
    check_run_dir(run_dir, resume)
    if not resume:
        seed_everything(cfg.seed + distributed.rank())
        return 0, None, 0, 0, []
    last = Run(run_dir).last
    state = load_checkpoint(last)
    if state.get("kind") != task.kind:
        raise GeolocError(f"{last}: a {state.get('kind')} checkpoint, cannot resume a {task.kind} run")
    model.load_state_dict(state["model"])
    extra = extra_module(task)
    if extra is not None:
        if "extra" not in state:
            raise GeolocError(f"{last}: trained without the weights this config adds to the loss "
                              "(e.g. embedding.cell_loss_weight); resume with the run's own config.yaml")
        extra.load_state_dict(state["extra"])
    opt.load_state_dict(state["optimizer"])
    _restore_rng(state, cfg, state["epoch"])
    return state["epoch"], state["best"], state["best_epoch"], state["step"], Run(run_dir).log_rows(state["epoch"])


@dataclass
class _Epochs:
    """What every epoch of one fit() shares, and where training stands; `run` trains one epoch."""
    task: Task
    model: nn.Module
    stepped: nn.Module  # what the loss runs: the model, or its DDP wrapper under torchrun
    opt: torch.optim.Optimizer
    params: list
    t: TrainConfig
    precision: str
    dev: torch.device
    steps: int | None  # per epoch, for the bar
    total_steps: int
    main: bool
    world: int
    run_dir: Path
    info: dict  # run.json's header
    start: int  # epochs done before this fit()
    best: float | None
    best_epoch: int
    step: int  # optimiser steps done
    rows: list[dict]  # log.csv
    metric: str = ""
    maximize: bool = True
    reserve: float = 0.0  # seconds the last validation took: kept from the time budget for the final one

    def __post_init__(self):
        self.metric, self.maximize = self.task.metric, self.task.maximize

    def _elapsed(self, spent: float, t0: float) -> float:
        # Every rank must stop at the same step, so rank 0's clock decides.
        now = spent + time.perf_counter() - t0
        return distributed.gather_objects(now)[0] if self.world > 1 else now

    def _step(self, batch, epoch: int, n: int) -> tuple[float, int, bool]:
        """One optimiser step: (loss x images, images, whether the step was skipped), over all ranks."""
        batch = [b.to(self.dev) if isinstance(b, torch.Tensor) else b for b in batch]
        images = prepare_images(batch[0], self.precision)
        with torch.enable_grad(), autocast(self.precision, self.dev.type):  # whatever grad mode the caller left on
            loss = self.task.loss(self.stepped, (images, *batch[1:]))
        # Summed over ranks: the log shows the global batch, and a bad loss on any rank stops all
        # of them together instead of leaving the others waiting in the next all-reduce.
        weighted, count, bad = distributed.sum_across(
            [loss.item() * len(images), len(images), float(not torch.isfinite(loss))])
        if bad:
            raise GeolocError(f"epoch {epoch} step {n}: loss is not finite"
                              + (f" on {int(bad)} of {self.world} processes" if self.world > 1
                                 else f" ({loss.item()})") + " (lower train.lr or check the data)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        # A finite loss can still have an infinite gradient (e.g. a distance's sqrt at 0 when two
        # embeddings coincide); one such step would turn every weight into NaN, so skip it. After
        # DDP's all-reduce every rank sees the same gradient, so all of them skip together.
        finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(self.params, float("inf"))))
        if finite:
            self.opt.step()
        return weighted, int(count), not finite

    def run(self, epoch: int, spent: float) -> tuple[dict, bool]:
        """Train epoch `epoch`, `spent` seconds of the time budget gone: (its log figures, whether the time
        budget ran out). Advances self.step."""
        t, step = self.t, self.step
        loss_sum, n_images, n_steps, skipped, out_of_time = 0.0, 0, 0, 0, False
        t0 = time.perf_counter()
        lr = t.lr * lr_factor(t, step, epoch, self.total_steps, spent)
        bar = tqdm(total=self.steps, desc=f"{self.task.kind} epoch {epoch}/{t.epochs}", unit="step", leave=False,
                   disable=not self.main)
        for batch in self.task.train_loader:
            elapsed = self._elapsed(spent, t0)
            if t.max_minutes > 0 and elapsed + self.reserve >= 60.0 * t.max_minutes and n_steps:
                out_of_time = True
                break
            factor = lr_factor(t, step, epoch, self.total_steps, elapsed)
            for group in self.opt.param_groups:
                group["lr"] = t.lr * factor
            weighted, count, skip = self._step(batch, epoch, n_steps + 1)
            loss_sum, n_images, n_steps, skipped, step = (loss_sum + weighted, n_images + count, n_steps + 1,
                                                          skipped + skip, step + 1)
            bar.update(1)
            # refresh=False: drawn on update()'s clock, not every step (a log file would hold each redraw)
            bar.set_postfix(loss=f"{weighted / count:.4f}", lr=f"{t.lr * factor:.2g}", refresh=False)
            if n_steps == t.max_steps_per_epoch:
                break
        bar.close()
        if n_images == 0:
            raise GeolocError("the training set yields no batch (fewer photos than train.batch_size?)")
        if skipped == n_steps:
            raise GeolocError(f"epoch {epoch}: every step had a non-finite gradient (lower train.lr)")
        if skipped and self.main:
            warnings.warn(f"epoch {epoch}: skipped {skipped} of {n_steps} steps with a non-finite gradient",
                          stacklevel=2)
        train_s = time.perf_counter() - t0
        self.step = step
        return ({"train_loss": loss_sum / n_images, "lr": lr, "images": n_images, "train_seconds": round(train_s, 3),
                 "images_per_s": round(n_images / train_s, 3), "skipped_steps": skipped}, out_of_time)


def _validate(task: Task, model: nn.Module, precision: str, dev: torch.device, main: bool) -> dict:
    """Rank 0's validation figures, on every rank (the others wait for them)."""
    val = {}
    if main:
        with autocast(precision, dev.type), torch.no_grad(), _all_threads():
            val = task.validate(model)
    return distributed.gather_objects(val)[0]


def _setup(task: Task, cfg: Config, run_dir: Path, resume: bool) -> "_Epochs":
    """The model in its memory format on its device, the optimiser over it (and the task's extra
    weights), the state resumed from last.pt, the DDP wrapper under torchrun, and run.json's header."""
    t = cfg.train
    main, world, dev = distributed.is_main(), distributed.world_size(), distributed.device()
    precision = resolve_precision(t.precision)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    model = prepare_model(task.model, precision).to(dev)
    if cfg.model.freeze_bn:
        freeze_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GeolocError("nothing to train: model.lock_factor froze every layer")
    extra = extra_module(task)
    if extra is not None:
        extra.to(dev)
        params += [p for p in extra.parameters() if p.requires_grad]
    opt = make_optimizer(params, t)
    start, best, best_epoch, step, rows = _resume(task, model, opt, cfg, run_dir, resume)
    # DDP averages gradients over ranks in backward; the optimiser and checkpoints keep the bare model.
    stepped = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if world > 1 else model
    info = {"kind": task.kind, "metric": task.metric, "maximize": task.maximize, "precision": precision,
            "processes": world, **task.info()}
    if main:
        atomic_write_json(Run(run_dir).info_file, info)
    steps = len(task.train_loader) if hasattr(task.train_loader, "__len__") else None  # for the bar
    if t.max_steps_per_epoch:
        steps = min(steps or t.max_steps_per_epoch, t.max_steps_per_epoch)
    return _Epochs(task=task, model=model, stepped=stepped, opt=opt, params=params, t=t, precision=precision,
                   dev=dev, steps=steps, total_steps=t.epochs * (steps or 1), main=main, world=world, run_dir=run_dir,
                   info=info, start=start, best=best, best_epoch=best_epoch, step=step, rows=rows)


def _sampler_epoch(task: Task):
    """The batch sampler's set_epoch, or None. A sampler that draws its batches from (seed, epoch) must
    hear the epoch, or every epoch repeats the first one's batches (and a resumed run repeats them again)."""
    batch_sampler = getattr(task.train_loader, "batch_sampler", None)
    return getattr(batch_sampler, "set_epoch", None) or getattr(getattr(batch_sampler, "sampler", None),
                                                               "set_epoch", None)


# With a time budget, validation may take at most this share of it: past that, an epoch's validation is
# skipped (the last epoch's never is). The cosine schedule and the budget count both.
VAL_SHARE = 0.15


def _validates(e: "_Epochs", last: bool) -> bool:
    """Whether this epoch validates: always without a time budget and at the end; else while validation
    stays within VAL_SHARE of the budget. Rank 0 decides for all (each rank timed its own wait)."""
    t = e.t
    if t.max_minutes <= 0 or last:
        return True
    spent = sum(float(r["val_seconds"]) for r in e.rows)
    return bool(distributed.gather_objects(spent + e.reserve <= VAL_SHARE * 60.0 * t.max_minutes)[0])


def _end_of_epoch(e: "_Epochs", epoch: int, figures: dict, tb, validate: bool = True) -> float:
    """Validate (unless skipped to keep it within the budget), log (log.csv, TensorBoard, one line) and
    checkpoint (last.pt, best.pt when better); returns the seconds validation took."""
    t0 = time.perf_counter()
    val = _validate(e.task, e.model, e.precision, e.dev, e.main) if validate else {}
    val_s = round(time.perf_counter() - t0, 3)
    row = {"epoch": epoch, "train_loss": figures["train_loss"], **val, "lr": figures["lr"], "steps": e.step,
           "images": figures["images"], "train_seconds": figures["train_seconds"], "val_seconds": val_s,
           "validated": int(validate), "images_per_s": figures["images_per_s"],
           "skipped_steps": figures["skipped_steps"]}
    if validate:
        e.reserve = val_s
    if validate and e.metric not in row:  # no validation set: fall back to the training loss
        e.metric, e.maximize = "train_loss", False
    improved = e.metric in row and _better(float(row[e.metric]), e.best, e.maximize)
    if improved:
        e.best, e.best_epoch = float(row[e.metric]), epoch
    e.rows.append(row)
    rngs = distributed.gather_objects(rng_state())
    if not e.main:
        return val_s
    _write_log(Run(e.run_dir).log, e.rows)
    if tb is not None:
        for k, v in row.items():
            if k != "epoch":
                tb.add_scalar(k, float(v), epoch)
    state = {"kind": e.task.kind, "model": e.model.state_dict(), "optimizer": e.opt.state_dict(),
             "step": e.step, "epoch": epoch, "best": e.best, "best_epoch": e.best_epoch,
             "metric": e.metric, "rng": rngs[0], "rng_ranks": rngs}
    extra = extra_module(e.task)
    if extra is not None:
        state["extra"] = extra.state_dict()
    if improved:
        save_checkpoint(Run(e.run_dir).best, state)
    save_checkpoint(Run(e.run_dir).last, state)
    tqdm.write(f"epoch {epoch}/{e.t.epochs}: train_loss {row['train_loss']:.4f}"
               + "".join(f", {k} {v:.4g}" for k, v in val.items())
               + ("" if validate else ", validation skipped (budget)")
               + f", {row['images_per_s']:.1f} img/s" + (" *" if improved else ""))
    return val_s


def _summary(e: "_Epochs") -> dict:
    """run.json's training record: the best epoch, and how the time was spent."""
    train_s = sum(float(r["train_seconds"]) for r in e.rows)
    val_s = sum(float(r.get("val_seconds") or 0) for r in e.rows)
    images = sum(int(r["images"]) for r in e.rows)
    return {"epochs": len(e.rows), "metric": e.metric, "maximize": e.maximize, "best": e.best,
            "best_epoch": e.best_epoch, "train_seconds": round(train_s, 3), "train_images": images,
            "train_images_per_s": round(images / train_s, 3) if train_s else None,
            "val_seconds": round(val_s, 3), "validations": sum(int(r.get("validated", "") in ("", None) or int(r["validated"]))
                                                     for r in e.rows)}


def fit(task: Task, cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train task.model for cfg.train.epochs; writes log.csv, last.pt, best.pt and run.json in run_dir.

    Returns the summary also stored in run.json["train"]: best metric/epoch, epochs, time, images/s
    (all ranks together under torchrun).
    """
    t, run_dir = cfg.train, Path(run_dir)
    e = _setup(task, cfg, run_dir, resume)
    tb = _tensorboard(run_dir) if e.main else None
    set_epoch = _sampler_epoch(task)
    # Training and validation both spend the time budget, so train.max_minutes is the wall time.
    spent = sum(float(r["train_seconds"]) + float(r.get("val_seconds") or 0) for r in e.rows)
    out_of_time = t.max_minutes > 0 and spent >= 60.0 * t.max_minutes
    for epoch in range(e.start + 1, t.epochs + 1):
        if out_of_time:
            break
        e.model.train()
        if set_epoch is not None:
            set_epoch(epoch)
        figures, out_of_time = e.run(epoch, spent)
        spent += figures["train_seconds"]
        spent += _end_of_epoch(e, epoch, figures, tb, _validates(e, out_of_time or epoch == t.epochs))
    if tb is not None:
        tb.close()
    summary = _summary(e)
    if e.main:
        tqdm.write(f"time: {summary['train_seconds']:.0f} s training, {summary['val_seconds']:.0f} s validating "
                   f"({summary['validations']} of {summary['epochs']} epochs)")
    if e.main:
        atomic_write_json(Run(run_dir).info_file, {**e.info, "train": summary})
    distributed.barrier()  # no rank returns (and maybe reads the run) before rank 0 has written it
    return summary
