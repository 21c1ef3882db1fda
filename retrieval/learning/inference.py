"""Inference: run a network over decoded images, and load the network a trained run answers with.

Everything that only *uses* a trained model stands on this room: the floors, the run's index, the
methods' predictions and the Locator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from retrieval.choices import HUB
from retrieval.files import sha256_file
from retrieval.learning.checkpoints import load_trained
from retrieval.learning.models import embedding_net
from retrieval.learning.precision import autocast, prepare_images, prepare_model, resolve_precision
from retrieval.learning.transforms import one_thread, test_transform
from retrieval.run import trained_checkpoint


def infer(model: nn.Module, images: list[torch.Tensor], transform, batch_size: int, precision: str,
          desc: str = "infer") -> torch.Tensor:
    """Model outputs (float32, N x out) for cached uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    with torch.inference_mode(), autocast(precision, dev.type):
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False,
                          disable=len(images) <= batch_size):
            with one_thread():
                x = torch.stack([transform(im) for im in images[start:start + batch_size]])
            outs.append(model(prepare_images(x.to(dev), precision)).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def embed(model: nn.Module, images: list[torch.Tensor], cfg, desc: str = "embed") -> np.ndarray:
    """(N, dim) float32 descriptors of cached images, with the run's test transform, batch and precision."""
    precision = resolve_precision(cfg.train.precision)
    return infer(model, images, test_transform(cfg.data), cfg.train.batch_size, precision, desc=desc).numpy()


def load_embedding_model(run_dir: str | Path, cfg) -> tuple[nn.Module, str]:
    """An embedding run's network in eval mode, in the memory format infer() feeds it, and the sha256 of
    the checkpoint it was loaded from (an index built with another checkpoint is refused)."""
    # The trained weights replace any start; a hub model's spec names its architecture, so it stays.
    start = cfg.model.weights if cfg.model.arch == HUB else "none"
    model = embedding_net(start, cfg.model.embed_dim, arch=cfg.model.arch, pooling=cfg.model.pooling)
    load_trained(model, run_dir)
    return prepare_model(model, cfg.train.precision).eval(), sha256_file(trained_checkpoint(run_dir))
