import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet50

from retrieval import GeolocError
from retrieval.learning.backbones import build_trunk
from retrieval.learning.models import (
    GeM, apply_lock_factor, cell_classifier, coordinate_regressor, embedding_net, parameterised_layers,
)


@pytest.fixture(scope="module")
def reference():
    """A ResNet-50 state dict with recognisable values (random weights, non-default BN statistics)."""
    torch.manual_seed(1)
    model = resnet50(weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_trunk_equals(model, state):
    own = model.state_dict()
    trunk_keys = [k for k in state if not k.startswith("fc.")]
    assert set(own) == set(trunk_keys)  # fc is an identity: no weights of its own
    for k in trunk_keys:
        assert torch.equal(own[k], state[k]), k


def test_local_state_dict_file(tmp_path, reference):
    path = tmp_path / "resnet50.pth"
    torch.save(reference, path)
    model = build_trunk(str(path))
    assert_trunk_equals(model, reference)
    assert isinstance(model.fc, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2048)


def test_places365_checkpoint_layout(tmp_path, reference):
    # The CSAIL release: {'epoch', 'arch', 'state_dict', 'best_prec1'}, DataParallel 'module.' keys,
    # and a 365-class fc that is not ours to load.
    state = {f"module.{k}": v for k, v in reference.items() if not k.startswith("fc.")}
    state["module.fc.weight"] = torch.randn(365, 2048)
    state["module.fc.bias"] = torch.randn(365)
    path = tmp_path / "resnet50_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": state, "best_prec1": 54.7}, path)
    assert_trunk_equals(build_trunk(f"places365:{path}"), reference)


def test_imagenet_loader_uses_torchvision_weights(monkeypatch, reference):
    seen = {}

    def fake_download(url, **kw):
        seen["url"] = url
        return reference

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    assert_trunk_equals(build_trunk("imagenet"), reference)
    assert seen["url"].endswith("resnet50-11ad3fa6.pth")  # IMAGENET1K_V2


def test_imagenet_offline_is_one_clear_line(monkeypatch):
    def offline(url, **kw):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(GeolocError) as exc:
        build_trunk("imagenet")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "imagenet" in msg and "name resolution" in msg and "places365:<file>" in msg


class NotATensor:
    pass


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": NotATensor()}, path)
    with pytest.raises(GeolocError, match=r"evil.pth is not a geoloc state-dict: it asks to run code \(.*NotATensor\); "
                                          "refusing to load it"):
        build_trunk(str(path))


@pytest.mark.parametrize("spec,match", [
    ("missing.pth", "no such state-dict file"),
    ("places365:missing.pth.tar", "Places365 checkpoint file not found"),
])
def test_missing_files(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GeolocError, match=match):
        build_trunk(spec)


def test_wrong_architecture_is_named(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(GeolocError, match="not a resnet50 state dict"):
        build_trunk(str(path))
    path.write_text("not a torch file")
    with pytest.raises(GeolocError, match="cannot load state-dict"):
        build_trunk(str(path))


def execution_order(model, x):
    """Parameterised layers in the order a forward pass runs them (an independent reference)."""
    order, hooks = [], []
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp: order.append(mod)))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return order


def test_lock_factor_freezes_first_layers_in_forward_order():
    model = cell_classifier("none", 7)
    layers = parameterised_layers(model)
    # ResNet-50: 53 convolutions and 53 BatchNorms, plus our Linear head.
    kinds = [type(m) for m in layers]
    assert (kinds.count(nn.Conv2d), kinds.count(nn.BatchNorm2d), kinds.count(nn.Linear)) == (53, 53, 1)
    assert [id(m) for m in execution_order(model, torch.randn(1, 3, 32, 32))] == [id(m) for m in layers]

    n = apply_lock_factor(model, 0.7)
    assert n == int(0.7 * 107) == 74
    for i, layer in enumerate(layers):
        assert all(p.requires_grad == (i >= n) for p in layer.parameters(recurse=False)), i
    # stem 2 + layer1 (8 + 6 + 6) + layer2 (8 + 3 x 6) + layer3 blocks 0-3 (8 + 3 x 6) = 74
    assert layers[n - 1] is model.trunk.layer3[3].bn3 and layers[n] is model.trunk.layer3[4].conv1

    # Frozen BatchNorm keeps its statistics in training mode; the trainable ones keep learning.
    model.train()
    frozen_bn = [m for m in layers[:n] if isinstance(m, nn.BatchNorm2d)]
    free_bn = [m for m in layers[n:] if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.training for m in frozen_bn) and all(m.training for m in free_bn)
    before = [m.running_mean.clone() for m in frozen_bn + free_bn]
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    after = [m.running_mean for m in frozen_bn + free_bn]
    assert all(torch.equal(a, b) for a, b in zip(before[:len(frozen_bn)], after))
    assert not any(torch.equal(a, b) for a, b in zip(before[len(frozen_bn):], after[len(frozen_bn):]))
    assert all(p.grad is None for m in layers[:n] for p in m.parameters(recurse=False))
    assert all(p.grad is not None for m in layers[n:] for p in m.parameters(recurse=False))

    # Unlocking restores everything, BatchNorm training mode included.
    assert apply_lock_factor(model, 0.0) == 0
    model.train()
    assert all(p.requires_grad for p in model.parameters()) and all(m.training for m in frozen_bn)
    assert apply_lock_factor(model, 1.0) == 107 and not any(p.requires_grad for p in model.parameters())


def test_heads_and_embedding():
    x = torch.randn(3, 3, 32, 32)
    assert cell_classifier("none", 11).eval()(x).shape == (3, 11)
    reg = coordinate_regressor("none").eval()
    assert [type(m) for m in (reg.hidden, reg.relu, reg.head)] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (reg.hidden.in_features, reg.hidden.out_features, reg.head.out_features) == (2048, 256, 2)
    assert reg(x).shape == (3, 2)
    emb = embedding_net("none", dim=64, lock_factor=0.5).eval()
    z = emb(x)
    assert z.shape == (3, 64)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert isinstance(emb.trunk.avgpool, GeM) and emb.trunk.avgpool.p.requires_grad


def test_gem_matches_hand_computed_means():
    fmap = torch.rand(2, 5, 3, 4) + 0.1
    gem = GeM(p=1.0)
    assert torch.allclose(gem(fmap).flatten(1), fmap.mean(dim=(2, 3)), atol=1e-6)
    gem3 = GeM(p=3.0)
    assert torch.allclose(gem3(fmap).flatten(1), fmap.pow(3).mean(dim=(2, 3)).pow(1 / 3), atol=1e-5)


def test_gem_matches_its_formula_and_survives_huge_activations():
    from retrieval.learning.models import GeM

    gem = GeM(p=3.0)
    x = torch.rand(2, 5, 3, 4) + 0.1
    ref = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    torch.testing.assert_close(gem(x).flatten(1), ref)
    # An untrained ResNet in eval mode can reach activations whose cube overflows float32.
    big = gem(x * 1e20).flatten(1)
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big / 1e20, ref)


def test_mixture_likelihood_by_hand_and_the_answer_is_the_likeliest_components_mean():
    from retrieval.learning.models import mixture_nll, split_mixture

    # two components, equal weights, means (0, 0) and (1, 1), sigma 1; target (0, 0):
    # log N = -|y - mu|^2 / 2 - 2 log sigma = 0 and -1, so NLL = -ln(0.5 + 0.5 e^-1) = 0.37989
    raw = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    assert float(mixture_nll(raw, 2, torch.zeros(1, 2))) == pytest.approx(-math.log(0.5 + 0.5 * math.exp(-1)), abs=1e-6)
    logits, means, log_sigma = split_mixture(raw, 2)
    assert means.tolist() == [[[0.0, 0.0], [1.0, 1.0]]] and log_sigma.tolist() == [[0.0, 0.0]]
    reg = coordinate_regressor("none", arch="resnet18", components=3, cell_classes=5).eval()
    assert reg.head.out_features == 12
    with torch.no_grad():
        out = reg(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 2 + 12 + 5)
    logits, means, _ = split_mixture(out[:, 2:14], 3)
    best = logits.argmax(dim=1)
    assert torch.equal(out[:, :2], means[torch.arange(4), best])
