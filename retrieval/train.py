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
import math
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

from retrieval import GeolocError, distributed
from retrieval.config import Config, TrainConfig
from retrieval.data import Manifest, load_splits, read_manifest
from retrieval.models import freeze_batchnorm
from retrieval.transforms import one_thread
from retrieval.util import atomic_write, atomic_write_json, load_checkpoint, read_log, save_checkpoint


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


# --- precision and inference -----------------------------------------------------------------------

def bf16_supported() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str) -> str:
    if precision not in ("bf16", "fp32"):
        raise GeolocError(f"train.precision={precision!r}: choose bf16 or fp32")
    if precision == "bf16" and not bf16_supported():
        warnings.warn("train.precision=bf16: this CPU has no native bf16, using fp32", stacklevel=2)
        return "fp32"
    return precision


def autocast(precision: str, device_type: str = "cpu"):
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, precision: str) -> nn.Module:
    """The model in the memory format infer() and training feed it, for train.precision as configured
    (resolved here: a resolved precision resolves to itself)."""
    # oneDNN's bf16 convolutions are fastest on NHWC tensors.
    return model.to(memory_format=torch.channels_last) if resolve_precision(precision) == "bf16" else model


def prepare_images(images: torch.Tensor, precision: str) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if precision == "bf16" else images


def infer(model: nn.Module, images: list[torch.Tensor], transform, batch_size: int, precision: str,
          desc: str = "infer") -> torch.Tensor:
    """Model outputs (float32, N x out) for cached uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    with torch.inference_mode(), autocast(precision, dev.type):
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
            with one_thread():
                x = torch.stack([transform(im) for im in images[start:start + batch_size]])
            outs.append(model(prepare_images(x.to(dev), precision)).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


# --- data and seeds --------------------------------------------------------------------------------

def load_data(cfg: Config) -> dict[str, Manifest]:
    """train/val[/test] manifests from data.train (a data folder or one manifest) and data.test."""
    d = cfg.data
    if not d.train:
        raise GeolocError("data.train is empty: pass --data DIR (a data folder or a manifest CSV)")
    splits = load_splits(d.train, d.val_fraction, 0.0 if d.test else d.test_fraction, d.split_gap_m,
                         d.split_block_m, cfg.seed, d.skip_bad, d.split_mode, d.place_radius_m)
    if d.test:
        splits["test"] = read_manifest(d.test, skip_bad=d.skip_bad)
    return splits


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


# --- optimiser and schedule ------------------------------------------------------------------------

def make_optimizer(params: list, t) -> torch.optim.Optimizer:
    """train.optimizer over params (a TrainConfig t)."""
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    raise GeolocError(f"train.optimizer={t.optimizer!r}: choose adamw or sgd")


def lr_factor(t, step: int, epoch: int, total_steps: int, train_seconds: float) -> float:
    """Multiplier of train.lr for optimiser step `step` (0-based) of epoch `epoch` (1-based).

    exponential: lr_decay ** (epoch - 1), the study's per-epoch decay. cosine: linear warmup over
    warmup_steps, then half a cosine from 1 to 0 over the budget, whichever of the step budget
    (total_steps) or the time budget (max_minutes) is further spent, so a run cut by time still anneals.
    """
    if t.schedule == "exponential":
        return t.lr_decay ** (epoch - 1)
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    done = step / max(total_steps, 1)
    if t.max_minutes > 0:
        done = max(done, train_seconds / (60.0 * t.max_minutes))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


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
    last = Path(run_dir) / "last.pt"
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
    last = run_dir / "last.pt"
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
    return state["epoch"], state["best"], state["best_epoch"], state["step"], read_log(run_dir / "log.csv",
                                                                                        state["epoch"])


@dataclass
class _Epochs:
    """What every epoch of one fit() shares; `run` trains one epoch."""
    task: Task
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

    def run(self, epoch: int, step: int, spent: float) -> tuple[dict, int, bool]:
        """Train epoch `epoch` from optimiser step `step`, `spent` seconds of the time budget gone:
        (its log figures, the next step, whether the time budget ran out)."""
        t = self.t
        loss_sum, n_images, n_steps, skipped, out_of_time = 0.0, 0, 0, 0, False
        t0 = time.perf_counter()
        lr = t.lr * lr_factor(t, step, epoch, self.total_steps, spent)
        bar = tqdm(total=self.steps, desc=f"{self.task.kind} epoch {epoch}/{t.epochs}", unit="step", leave=False,
                   disable=not self.main)
        for batch in self.task.train_loader:
            elapsed = self._elapsed(spent, t0)
            if t.max_minutes > 0 and elapsed >= 60.0 * t.max_minutes and n_steps:
                out_of_time = True
                break
            factor = lr_factor(t, step, epoch, self.total_steps, elapsed)
            for group in self.opt.param_groups:
                group["lr"] = t.lr * factor
            weighted, count, skip = self._step(batch, epoch, n_steps + 1)
            loss_sum, n_images, n_steps, skipped, step = (loss_sum + weighted, n_images + count, n_steps + 1,
                                                          skipped + skip, step + 1)
            bar.update(1)
            bar.set_postfix(loss=f"{weighted / count:.4f}", lr=f"{t.lr * factor:.2g}")
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
        return ({"train_loss": loss_sum / n_images, "lr": lr, "images": n_images, "train_seconds": round(train_s, 3),
                 "images_per_s": round(n_images / train_s, 3), "skipped_steps": skipped}, step, out_of_time)


def _validate(task: Task, model: nn.Module, precision: str, dev: torch.device, main: bool) -> dict:
    """Rank 0's validation figures, on every rank (the others wait for them)."""
    val = {}
    if main:
        with autocast(precision, dev.type), torch.no_grad(), _all_threads():
            val = task.validate(model)
    return distributed.gather_objects(val)[0]


def fit(task: Task, cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train task.model for cfg.train.epochs; writes log.csv, last.pt, best.pt and run.json in run_dir.

    Returns the summary also stored in run.json["train"]: best metric/epoch, epochs, time, images/s
    (all ranks together under torchrun).
    """
    t = cfg.train
    run_dir = Path(run_dir)
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

    metric, maximize = task.metric, task.maximize
    info = {"kind": task.kind, "metric": metric, "maximize": maximize, "precision": precision,
            "processes": world, **task.info()}
    if main:
        atomic_write_json(run_dir / "run.json", info)
    tb = _tensorboard(run_dir) if main else None
    steps = len(task.train_loader) if hasattr(task.train_loader, "__len__") else None  # for the bar
    if t.max_steps_per_epoch:
        steps = min(steps or t.max_steps_per_epoch, t.max_steps_per_epoch)
    epochs = _Epochs(task, stepped, opt, params, t, precision, dev, steps, t.epochs * (steps or 1), main, world)
    spent = sum(float(r["train_seconds"]) for r in rows)  # of the time budget, before this call

    # A sampler that draws its batches from (seed, epoch) must hear the epoch, or every epoch repeats
    # the first one's batches (and a resumed run would repeat them again).
    batch_sampler = getattr(task.train_loader, "batch_sampler", None)
    set_epoch = getattr(batch_sampler, "set_epoch", None) or getattr(getattr(batch_sampler, "sampler", None),
                                                                    "set_epoch", None)
    out_of_time = t.max_minutes > 0 and spent >= 60.0 * t.max_minutes
    for epoch in range(start + 1, t.epochs + 1):
        if out_of_time:
            break
        model.train()
        if set_epoch is not None:
            set_epoch(epoch)
        figures, step, out_of_time = epochs.run(epoch, step, spent)
        spent += figures["train_seconds"]
        t0 = time.perf_counter()
        val = _validate(task, model, precision, dev, main)
        row = {"epoch": epoch, "train_loss": figures["train_loss"], **val, "lr": figures["lr"], "steps": step,
               "images": figures["images"], "train_seconds": figures["train_seconds"],
               "val_seconds": round(time.perf_counter() - t0, 3), "images_per_s": figures["images_per_s"],
               "skipped_steps": figures["skipped_steps"]}
        if metric not in row:  # no validation set: fall back to the training loss
            metric, maximize = "train_loss", False
        improved = _better(float(row[metric]), best, maximize)
        if improved:
            best, best_epoch = float(row[metric]), epoch
        rows.append(row)
        rngs = distributed.gather_objects(rng_state())
        if not main:
            continue
        _write_log(run_dir / "log.csv", rows)
        if tb is not None:
            for k, v in row.items():
                if k != "epoch":
                    tb.add_scalar(k, float(v), epoch)
        state = {"kind": task.kind, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "step": step, "epoch": epoch, "best": best, "best_epoch": best_epoch,
                 "metric": metric, "rng": rngs[0], "rng_ranks": rngs}
        if extra is not None:
            state["extra"] = extra.state_dict()
        if improved:
            save_checkpoint(run_dir / "best.pt", state)
        save_checkpoint(run_dir / "last.pt", state)
        tqdm.write(f"epoch {epoch}/{t.epochs}: train_loss {row['train_loss']:.4f}"
                   + "".join(f", {k} {v:.4g}" for k, v in val.items())
                   + f", {row['images_per_s']:.1f} img/s" + (" *" if improved else ""))
    if tb is not None:
        tb.close()

    train_s = sum(float(r["train_seconds"]) for r in rows)
    images = sum(int(r["images"]) for r in rows)
    summary = {"epochs": len(rows), "metric": metric, "maximize": maximize, "best": best,
               "best_epoch": best_epoch, "train_seconds": round(train_s, 3), "train_images": images,
               "train_images_per_s": round(images / train_s, 3) if train_s else None}
    if main:
        atomic_write_json(run_dir / "run.json", {**info, "train": summary})
    distributed.barrier()  # no rank returns (and maybe reads the run) before rank 0 has written it
    return summary


def trained_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a trained run answers with: best.pt, else last.pt."""
    run_dir = Path(run_dir)
    return run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"


def load_trained(model: nn.Module, run_dir: str | Path) -> dict:
    """Load best.pt (else last.pt) of a run into model; returns the checkpoint."""
    path = trained_checkpoint(run_dir)
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise GeolocError(f"{path}: does not fit this model ({str(exc).splitlines()[0]})") from None
    return state
