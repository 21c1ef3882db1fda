import csv
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrieval import GeolocError
from retrieval.config import Config
from retrieval.learning.checkpoints import load_checkpoint
from retrieval.learning.inference import infer
from retrieval.learning.optim import lr_factor
from retrieval.learning.precision import bf16_supported
from retrieval.learning.train import fit, rng_state, set_rng_state
from retrieval.learning.transforms import test_transform as eval_transform, train_loader

N_CLASSES = 4


def toy_images(n: int, seed: int = 0):
    """16 px images whose colour says the class: a set a small CNN learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % N_CLASSES
    palette = torch.tensor([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]], dtype=torch.float32)
    images = []
    for y in labels:
        im = palette[y][:, None, None] + 30 * torch.randn(3, 20, 20, generator=g)
        images.append(im.clamp(0, 255).to(torch.uint8))
    return images, labels


def toy_config(**train) -> Config:
    cfg = Config()
    cfg.data.image_size, cfg.data.resize, cfg.data.num_workers = 16, 20, 0
    cfg.augment.perspective = 0.2  # augmentation stays on: it draws from the RNG that resume restores
    cfg.train.precision = "fp32"
    cfg.train.batch_size = 8
    cfg.train.optimizer, cfg.train.schedule = "sgd", "exponential"  # the loop's tests; the schedule has its own
    cfg.train.lr = 0.05
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


class ToyTask:
    kind = "toy"
    metric = "val_acc"
    maximize = True

    def __init__(self, cfg: Config, seed: int = 0, kill_at_call: int | None = None, val: bool = True,
                 step_seconds: float = 0.0, val_seconds: float = 0.0):
        torch.manual_seed(seed)
        self.cfg = cfg
        self.model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten(), nn.Linear(8, N_CLASSES))
        images, labels = toy_images(48)
        self.train_loader = train_loader(images, labels, cfg.data, cfg.augment, cfg.train.batch_size)
        self.val_images, self.val_labels = toy_images(16, seed=1) if val else (None, None)
        self.kill_at_call, self.calls, self.step_seconds, self.val_seconds = kill_at_call, 0, step_seconds, val_seconds

    def loss(self, model, batch):
        import time

        time.sleep(self.step_seconds)
        self.calls += 1
        if self.calls == self.kill_at_call:
            raise KeyboardInterrupt  # a kill in the middle of an epoch
        images, labels, _ = batch
        return F.cross_entropy(self.outputs(model, images), labels)

    def outputs(self, model, images):
        return model(images).float()

    def validate(self, model):
        import time

        time.sleep(self.val_seconds)
        if self.val_images is None:
            return {}
        logits = infer(model, self.val_images, eval_transform(self.cfg.data), 8, "fp32")
        return {"val_loss": float(F.cross_entropy(logits, self.val_labels)),
                "val_acc": float((logits.argmax(1) == self.val_labels).float().mean())}

    def info(self):
        return {"classes": N_CLASSES}


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_epoch_reduces_the_loss(tmp_path):
    cfg = toy_config(epochs=1)
    task = ToyTask(cfg)
    images, labels = toy_images(48)

    def train_set_loss():
        return float(F.cross_entropy(infer(task.model, images, eval_transform(cfg.data), 16, "fp32"), labels))

    before = train_set_loss()
    summary = fit(task, cfg, tmp_path)
    after = train_set_loss()
    assert after < 0.7 * before, (before, after)
    assert summary["epochs"] == 1 and summary["metric"] == "val_acc"
    rows = read_log(tmp_path / "log.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_acc", "lr", "steps", "images",
                             "train_seconds", "val_seconds", "validated", "images_per_s", "skipped_steps"]
    assert int(rows[0]["epoch"]) == 1 and int(rows[0]["images"]) == 48  # 6 full batches of 8
    assert summary["train_images"] == 48 and summary["train_images_per_s"] > 0


def test_lr_decay_log_checkpoints_and_run_json(tmp_path):
    cfg = toy_config(epochs=3, lr=0.02, lr_decay=0.5, max_steps_per_epoch=2)
    task = ToyTask(cfg)
    summary = fit(task, cfg, tmp_path)
    rows = read_log(tmp_path / "log.csv")
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.02, 0.01, 0.005])
    last = load_checkpoint(tmp_path / "last.pt")  # weights_only=True
    best = load_checkpoint(tmp_path / "best.pt")
    assert last["epoch"] == 3 and last["kind"] == "toy"
    assert set(last) >= {"model", "optimizer", "step", "epoch", "best", "best_epoch", "rng"}
    accs = [float(r["val_acc"]) for r in rows]
    assert best["epoch"] == summary["best_epoch"] == 1 + int(np.argmax(accs))
    assert summary["best"] == pytest.approx(max(accs))
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["kind"] == "toy" and info["classes"] == N_CLASSES and info["train"]["epochs"] == 3


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    cfg = toy_config(epochs=3, max_steps_per_epoch=4)
    fit(ToyTask(cfg), cfg, tmp_path / "whole")

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        fit(ToyTask(cfg, kill_at_call=6), cfg, killed)  # step 2 of epoch 2
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1
    # Disturb every RNG and start from different weights: resume must restore all of it.
    random.random(), np.random.rand(), torch.rand(3)
    fit(ToyTask(cfg, seed=99), cfg, killed, resume=True)

    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][s]["momentum_buffer"], b["optimizer"]["state"][s]["momentum_buffer"])
    assert a["step"] == b["step"] == 12
    timing = {"train_seconds", "val_seconds", "images_per_s"}

    def untimed(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert untimed(read_log(tmp_path / "whole" / "log.csv")) == untimed(read_log(killed / "log.csv"))


class ExtraTask(ToyTask):
    """The loss trains a head beside the model (`extra`), as the embedding's cell classifier does."""

    def __init__(self, cfg: Config, seed: int = 0, kill_at_call: int | None = None):
        super().__init__(cfg, seed, kill_at_call)
        self.extra = nn.Linear(N_CLASSES, N_CLASSES)

    def outputs(self, model, images):
        return self.extra(model(images).float())


def test_extra_weights_are_trained_checkpointed_and_resumed(tmp_path):
    cfg = toy_config(epochs=3, max_steps_per_epoch=4)
    whole = ExtraTask(cfg)
    before = {k: v.clone() for k, v in whole.extra.state_dict().items()}
    fit(whole, cfg, tmp_path / "whole")
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    assert not torch.equal(a["extra"]["weight"], before["weight"])  # the optimiser moved them
    assert all(torch.equal(a["extra"][k], v) for k, v in whole.extra.state_dict().items())
    assert not any(k.startswith("extra") for k in a["model"])  # the model's entry stays the model alone

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        fit(ExtraTask(cfg, kill_at_call=6), cfg, killed)
    fit(ExtraTask(cfg, seed=99), cfg, killed, resume=True)  # other starting weights: resume restores them
    b = load_checkpoint(killed / "last.pt")
    for k in a["extra"]:
        assert torch.equal(a["extra"][k], b["extra"][k]), k

    plain, short = tmp_path / "plain", toy_config(epochs=1, max_steps_per_epoch=2)
    fit(ToyTask(short), short, plain)
    with pytest.raises(GeolocError, match="last.pt: trained without the weights this config adds"):
        fit(ExtraTask(cfg), cfg, plain, resume=True)


def test_refuses_to_overwrite_or_resume_nothing(tmp_path):
    cfg = toy_config(epochs=1, max_steps_per_epoch=1)
    fit(ToyTask(cfg), cfg, tmp_path / "run")
    with pytest.raises(GeolocError, match="already has a checkpoint"):
        fit(ToyTask(cfg), cfg, tmp_path / "run")
    with pytest.raises(GeolocError, match="nothing to resume"):
        fit(ToyTask(cfg), cfg, tmp_path / "other", resume=True)


def test_without_validation_the_training_loss_selects(tmp_path):
    cfg = toy_config(epochs=2, max_steps_per_epoch=2)
    summary = fit(ToyTask(cfg, val=False), cfg, tmp_path)
    rows = read_log(tmp_path / "log.csv")
    losses = [float(r["train_loss"]) for r in rows]
    assert summary["metric"] == "train_loss" and summary["best"] == pytest.approx(min(losses))


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = (random.random(), np.random.randn(), np.random.rand(), torch.rand(2))
    set_rng_state(torch.load(path, weights_only=True))
    got = (random.random(), np.random.randn(), np.random.rand(), torch.rand(2))
    assert expected[:3] == got[:3] and torch.equal(expected[3], got[3])


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16 (the loop falls back to fp32)")
def test_bf16_trains_channels_last(tmp_path):
    cfg = toy_config(epochs=1, precision="bf16")
    task = ToyTask(cfg)
    fit(task, cfg, tmp_path)
    assert task.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert json.loads((tmp_path / "run.json").read_text())["precision"] == "bf16"
    assert float(read_log(tmp_path / "log.csv")[0]["val_acc"]) > 0.5


def test_warmup_then_cosine_by_steps_or_minutes():
    t = Config().train
    t.schedule, t.warmup_steps, t.max_minutes = "cosine", 4, 0.0
    # warmup: (step + 1) / 4 of the cosine's value, which starts at 1
    assert lr_factor(t, 0, 1, 10, 0.0) == pytest.approx(0.25 * 0.5 * (1 + np.cos(0.0)))
    assert lr_factor(t, 3, 1, 10, 0.0) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.3)))
    assert lr_factor(t, 5, 1, 10, 0.0) == pytest.approx(0.5)  # half way: cos(pi / 2) = 0
    assert lr_factor(t, 10, 1, 10, 0.0) == pytest.approx(0.0)
    # a time budget: whichever budget is further spent sets the phase
    t.max_minutes = 1.0
    assert lr_factor(t, 5, 1, 10, 45.0) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.75)))
    assert lr_factor(t, 8, 1, 10, 6.0) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.8)))
    t.schedule, t.lr_decay = "exponential", 0.5
    assert lr_factor(t, 123, 3, 10, 0.0) == pytest.approx(0.25)  # per epoch, not per step


def test_cosine_run_logs_the_schedule_and_ends_near_zero(tmp_path):
    cfg = toy_config(epochs=3, max_steps_per_epoch=2, lr=0.01)
    cfg.train.optimizer, cfg.train.schedule, cfg.train.warmup_steps = "adamw", "cosine", 2
    fit(ToyTask(cfg), cfg, tmp_path)
    rows = read_log(tmp_path / "log.csv")
    # the lr column is the first step's of each epoch: steps 0, 2, 4 of 6
    want = [0.01 * lr_factor(cfg.train, s, e, 6, 0.0) for s, e in ((0, 1), (2, 2), (4, 3))]
    assert [float(r["lr"]) for r in rows] == pytest.approx(want)
    assert [int(r["steps"]) for r in rows] == [2, 4, 6]


def test_a_time_budget_stops_training_and_resume_does_not_extend_it(tmp_path):
    # each step takes at least 0.2 s; a budget of 0.6 s leaves room for 3 (4 if the clock is late)
    cfg = toy_config(epochs=10, max_minutes=0.01)
    summary = fit(ToyTask(cfg, step_seconds=0.2), cfg, tmp_path)
    rows = read_log(tmp_path / "log.csv")
    assert summary["epochs"] == len(rows) == 1 and 3 <= int(rows[0]["steps"]) <= 4
    assert summary["train_seconds"] >= 0.6
    assert fit(ToyTask(cfg, step_seconds=0.2), cfg, tmp_path, resume=True)["epochs"] == 1  # nothing left


def test_a_time_budget_is_wall_time_and_validation_takes_at_most_its_share(tmp_path):
    # "at 100 steps per epoch validation took as long as training, so a 6-minute budget ran 12.5 minutes"
    # Here: steps of 0.05 s, 2 per epoch, and a validation of 0.25 s (2.5x an epoch) in a 3 s budget.
    cfg = toy_config(epochs=100, max_minutes=0.05, max_steps_per_epoch=2)
    summary = fit(ToyTask(cfg, step_seconds=0.05, val_seconds=0.25), cfg, tmp_path)
    rows = read_log(tmp_path / "log.csv")
    train_s, val_s = summary["train_seconds"], summary["val_seconds"]
    assert 2.5 <= train_s + val_s <= 3.0 + 0.5  # the budget, give or take one step and one validation
    assert val_s <= 0.15 * 3.0 + 0.35  # its share, plus the last epoch's, which always validates
    assert rows[0]["validated"] == "1" and rows[-1]["validated"] == "1"
    assert 0 < summary["validations"] < len(rows) and summary["validations"] == sum(r["validated"] == "1" for r in rows)
    assert all(r["val_acc"] == "" for r in rows if r["validated"] == "0")  # a skipped one leaves its figures empty
    assert summary["best_epoch"] in [int(r["epoch"]) for r in rows if r["validated"] == "1"]
