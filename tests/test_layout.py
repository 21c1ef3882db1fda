"""The house's walls: every import (inside functions and "module:function" strings too) goes down the
README's layer table, retrieval reaches baselines only through the methods' registry, no module imports
itself round a cycle, the settings load without the training stack, and every listed choice is
implemented where it is used."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_STRING = re.compile(r"^((?:retrieval|baselines)(?:\.\w+)*)(?::\w+)?$")


def layer_table() -> list[list[str]]:
    """The README's layer table, lowest layer first: each row's module prefixes."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| layer | modules |"):].split("\n\n")[0].splitlines()[2:]
    return [re.findall(r"`([\w.]+)`", row.split("|")[2]) for row in reversed(table)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for root in ("retrieval", "baselines") for p in (REPO / root).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports: import statements anywhere in it, `from package import
    submodule` resolved to the submodule, and strings naming a module (importlib targets)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            out.add(MODULE_STRING.match(node.value).group(1))
    return {m for m in out if m in known}


def layer_of(module: str, table: list[list[str]]) -> int:
    """The layer of the longest prefix that names the module (retrieval.data.x: retrieval.data, not retrieval)."""
    best = max(((len(p), i) for i, row in enumerate(table) for p in row
                if module == p or module.startswith(p + ".") and p != "retrieval"), default=None)
    if best is None and module == "retrieval":
        best = (0, next(i for i, row in enumerate(table) if "retrieval" in row))
    assert best is not None, f"{module} is in no row of the README's layer table"
    return best[1]


def test_every_import_goes_down_the_readme_layer_table():
    table, mods = layer_table(), modules()
    assert len(table) >= 5, table
    up = []
    for name, path in mods.items():
        for dep in imports_of(path, set(mods)):
            if layer_of(dep, table) > layer_of(name, table):
                up.append(f"{name} -> {dep}")
    assert not up, "imports that point up the layers: " + "; ".join(sorted(up))


def test_retrieval_reaches_baselines_only_through_the_registry():
    mods = modules()
    reach = sorted(n for n, p in mods.items() if n.startswith("retrieval")
                   and any(d.startswith("baselines") for d in imports_of(p, set(mods))))
    assert reach == ["retrieval.methods"], reach


def test_no_import_cycle():
    mods = modules()
    g = nx.DiGraph((n, d) for n, p in mods.items() for d in imports_of(p, set(mods)) if d != n
                   and not n.startswith(d + "."))  # a module's own package __init__ runs first anyway
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, cycles


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check itself: a ground module importing a method, by statement or by string, is caught."""
    table = layer_table()
    assert layer_of("retrieval.methods.embedding", table) > layer_of("retrieval.config", table)
    assert layer_of("retrieval.data.grids", table) < layer_of("baselines.cells", table) < layer_of(
        "retrieval.methods", table)
    probe = tmp_path / "config.py"  # retrieval/config.py with an upward reference added
    probe.write_text((REPO / "retrieval" / "config.py").read_text(encoding="utf-8")
                     + '\nTARGET = "retrieval.methods.embedding:train_embedding"\n', encoding="utf-8")
    assert "retrieval.methods.embedding" in imports_of(probe, set(modules()))
    assert "retrieval.methods.embedding" not in imports_of(REPO / "retrieval" / "config.py", set(modules()))


@pytest.mark.parametrize("module", ["retrieval.config", "retrieval.run", "retrieval.choices"])
def test_the_settings_load_without_the_training_stack(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'faiss', 'networkx', 'scipy', 'osmnx', 'cv2', 'pytorch_metric_learning')); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_choice_is_implemented():
    """Each value a setting may take (retrieval.choices) reaches a real implementation: built, run, or
    dispatched to without the implementation's own "choose one of" error."""
    import numpy as np
    import torch

    from retrieval import choices
    from retrieval.answering.index import REFINE_FACTORY, build_index
    from retrieval.answering.vote import vote
    from retrieval.config import load_config
    from retrieval.data.grids import make_grid
    from retrieval.learning.backbones import BACKBONES, build_trunk, output_width
    from retrieval.learning.losses import make_loss, make_miner
    from retrieval.learning.models import embedding_net
    from retrieval.learning.optim import lr_factor, make_optimizer
    from retrieval.methods import METHODS

    assert tuple(METHODS) == choices.METHODS
    assert set(BACKBONES) | {choices.HUB} == set(choices.ARCHS)
    for arch in ("resnet18", "efficientnet_lite0"):  # the others differ only in depth (tests/test_backbones.py)
        assert output_width(build_trunk("none", arch)) == choices.BACKBONE_FEATURES[arch]
    assert set(REFINE_FACTORY) == set(choices.REFINES)
    rng = np.random.default_rng(0)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    for kind in choices.INDEX_KINDS:
        assert build_index(db, kind, nlist=4, pq_m=4, progress=False).ntotal == 300
    for pooling in choices.POOLINGS:
        net = embedding_net("none", 8, arch="resnet18", pooling=pooling).eval()
        assert net(torch.rand(1, 3, 32, 32)).shape == (1, 8)
    for loss, miners in choices.MINERS.items():
        for miner in miners:
            e = load_config(None, [f"embedding.loss={loss}", f"embedding.miner={miner}"]).embedding
            assert make_loss(e) is not None and make_miner(e, None) is not None
    for opt in choices.OPTIMIZERS:
        assert make_optimizer(list(torch.nn.Linear(2, 2).parameters()), load_config(None, [f"train.optimizer={opt}"]).train)
    for schedule in choices.SCHEDULES:
        assert 0 < lr_factor(load_config(None, [f"train.schedule={schedule}"]).train, 60, 2, 100, 0.0) <= 1
    lat, lon = 51.5 + 0.004 * rng.random(50), -0.1 + 0.004 * rng.random(50)
    for kind in choices.GRID_KINDS:
        cfg = load_config(None, [f"cells.grid={kind}", "cells.cell_size_m=100", "cells.border_spacing_m=0"])
        assert len(make_grid(cfg, _Photos(lat, lon))) >= 2
    for mode in choices.VOTE_MODES:
        assert vote(lat[:12].reshape(3, 4), lon[:12].reshape(3, 4), rng.random((3, 4)), mode).lat.shape == (3,)


class _Photos:
    def __init__(self, lat, lon):
        self.lat, self.lon = lat, lon

    def __len__(self):
        return len(self.lat)
