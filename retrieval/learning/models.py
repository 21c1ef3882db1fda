"""The three task models on a backbone's trunk (retrieval.learning.backbones), and layer locking.

Every model is `nn.Sequential(trunk, head...)` (or holds `trunk`), so checkpoints of all methods share the
same `trunk.*` keys. ResNet-50 is the design's backbone; the smaller ones trade detail for steps when
training from random weights on a CPU; EfficientNet-Lite brings ImageNet weights offline
(benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
import types
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from retrieval import GeolocError
from retrieval.choices import HUB
from retrieval.config import trunk_features
from retrieval.learning.backbones import build_trunk, output_width, read_state_dict
from retrieval.run import trained_checkpoint




# --- layer locking ---------------------------------------------------------------------------------

def parameterised_layers(model: nn.Module) -> list[nn.Module]:
    """Modules holding parameters of their own, in registration order (forward order for ResNet)."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def apply_lock_factor(model: nn.Module, lock_factor: float) -> int:
    """Freeze the first floor(lock_factor * L) of the model's L parameterised layers; returns that count.

    Frozen BatchNorm layers also keep their running statistics: model.train() leaves them in eval
    mode, since updating the statistics of a frozen layer would still change what it computes.
    """
    layers = parameterised_layers(model)
    n_frozen = int(lock_factor * len(layers) + 1e-9)
    for i, layer in enumerate(layers):
        frozen = i < n_frozen
        for p in layer.parameters(recurse=False):
            p.requires_grad_(not frozen)
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            if frozen:
                layer.train = types.MethodType(_stay_in_eval, layer)
                layer.eval()
            else:
                layer.__dict__.pop("train", None)
                layer.train(model.training)
    return n_frozen


def freeze_batchnorm(model: nn.Module) -> int:
    """Keep every BatchNorm layer's running statistics fixed (its scale and shift still train); returns
    how many layers. Usual when fine-tuning pretrained weights on small batches, and the only way several
    CPU processes normalise alike: PyTorch's SyncBatchNorm runs on GPUs only, so under torchrun on CPUs
    each process would otherwise normalise over its own share of the batch."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.train = types.MethodType(_stay_in_eval, layer)
        layer.eval()
    return len(layers)


# --- task models -----------------------------------------------------------------------------------

class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.) with a learnable exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x^p overflows even float32 once activations pass ~1e12 (an untrained network in eval mode gets
        # there), so pool x / max and scale back: the same value, without the overflow.
        x = x.float().clamp(min=self.eps)
        peak = x.amax(dim=(2, 3), keepdim=True)
        return (peak * F.adaptive_avg_pool2d((x / peak).pow(self.p), 1).pow(1.0 / self.p)).flatten(1)


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1)


def cell_classifier(weights: str, n_classes: int, lock_factor: float = 0.0,
                    arch: str = "resnet50") -> nn.Sequential:
    model = nn.Sequential(OrderedDict(trunk=build_trunk(weights, arch),
                                      head=nn.Linear(trunk_features(arch), n_classes)))
    apply_lock_factor(model, lock_factor)
    return model


class CoordinateRegressor(nn.Module):
    """trunk -> Linear(features, hidden) -> ReLU -> Linear(hidden, 2): normalised (lat, lon). With
    `components` > 1 the last layer gives a mixture of that many isotropic Gaussians instead (a mixture
    density network: a photo that could be in two districts gets two modes, not their midpoint), and
    the coordinates are the mean of the most probable component, followed in the output by the
    mixture's parameters (MIXTURE_COLUMNS per component). With `cell_classes`, a linear cell classifier
    on the trunk's features adds its logits last. Predictions read the first two columns."""

    def __init__(self, trunk: nn.Module, n_features: int, hidden: int = 256, cell_classes: int = 0,
                 components: int = 1):
        super().__init__()
        self.components = components
        out = 2 if components == 1 else MIXTURE_COLUMNS * components
        self.trunk, self.hidden, self.relu, self.head = trunk, nn.Linear(n_features, hidden), nn.ReLU(), \
            nn.Linear(hidden, out)
        if components > 1:  # means start spread over the unit square, so every component has photos near it
            with torch.no_grad():
                self.head.bias[components:3 * components].uniform_(0.0, 1.0)
        self.cells = nn.Linear(n_features, cell_classes) if cell_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        y = self.head(self.relu(self.hidden(f)))
        if self.components > 1:
            logits, means, _ = split_mixture(y, self.components)
            best = logits.argmax(dim=1)
            y = torch.cat([means[torch.arange(len(y)), best], y], 1)
        return y if self.cells is None else torch.cat([y, self.cells(f)], 1)


MIXTURE_COLUMNS = 4  # per component: logit, mean (2), log sigma
LOG_SIGMA_RANGE = (math.log(1e-3), 0.0)  # in units of the bounding box


def split_mixture(raw: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, K), means (N, K, 2), log sigmas (N, K)) from a mixture head's raw output."""
    k = components
    log_sigma = raw[:, 3 * k:4 * k].clamp(*LOG_SIGMA_RANGE)
    return raw[:, :k], raw[:, k:3 * k].reshape(-1, k, 2), log_sigma


def mixture_nll(raw: torch.Tensor, components: int, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of targets y (N, 2) under the mixtures (without the constant log 2 pi)."""
    logits, means, log_sigma = split_mixture(raw, components)
    sq = ((y[:, None, :] - means) ** 2).sum(dim=2)
    log_n = -0.5 * sq * torch.exp(-2 * log_sigma) - 2 * log_sigma
    return -(torch.logsumexp(torch.log_softmax(logits, dim=1) + log_n, dim=1)).mean()


def coordinate_regressor(weights: str, lock_factor: float = 0.0, hidden: int = 256,
                         arch: str = "resnet50", cell_classes: int = 0, components: int = 1) -> CoordinateRegressor:
    model = CoordinateRegressor(build_trunk(weights, arch), trunk_features(arch), hidden, cell_classes, components)
    apply_lock_factor(model, lock_factor)
    return model


def embedding_net(weights: str, dim: int = 512, lock_factor: float = 0.0, arch: str = "resnet50",
                  pooling: str = "gem") -> nn.Sequential:
    """Trunk feature map -> GeM (or the trunk's average) -> Linear(features, dim) -> L2 normalisation;
    dim 0: no projection, the pooled features themselves (what an ImageNet trunk gives zero-shot). A hub
    model is the descriptor network itself: it keeps its own pooling and takes no head. From a geoloc
    embedding run (model.weights a run folder) it starts as that run's whole network where sizes match."""
    trunk = build_trunk(weights, arch)
    parts = OrderedDict(trunk=trunk)
    if arch == HUB:
        width = output_width(trunk)
        if dim not in (0, width):
            raise GeolocError(f"model.embed_dim={dim}: {weights} gives {width}-d descriptors; set 0 or {width}")
    else:
        if pooling == "gem":
            trunk.avgpool = GeM()
        if dim:
            parts["head"] = nn.Linear(trunk_features(arch), dim)
    parts["norm"] = L2Norm()
    model = nn.Sequential(parts)
    if weights and Path(weights).expanduser().is_dir():
        _start_from_embedding(model, Path(weights).expanduser())
    apply_lock_factor(model, lock_factor)
    return model


def _start_from_embedding(model: nn.Sequential, run_dir: Path) -> None:
    """Take a trained embedding's pooling and head too, where they fit (the trunk is already loaded)."""
    state = read_state_dict(trained_checkpoint(run_dir), "checkpoint")
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if (k.startswith("head.") or k == "trunk.avgpool.p")
            and k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
