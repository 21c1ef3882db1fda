"""The optimiser and the learning-rate schedule every method trains with."""
from __future__ import annotations

import math

import torch



def make_optimizer(params: list, t) -> torch.optim.Optimizer:
    """train.optimizer over params (a TrainConfig t): AdamW, or the study's SGD with momentum."""
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


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
