from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only the developers' machines have ../shared)")
    return SHARED_DATA


def write_image(path: Path, size=(32, 32), color=(120, 60, 30), mode="RGB", **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, **save_kw)
    return path


@pytest.fixture
def photo_dir(tmp_path):
    """Twelve small JPEGs around St Paul's with a manifest."""
    rng = np.random.default_rng(0)
    rows = ["path,lat,lon,heading"]
    for i in range(12):
        lat, lon = 51.5138 + rng.uniform(-0.003, 0.003), -0.0984 + rng.uniform(-0.004, 0.004)
        write_image(tmp_path / "images" / f"{i:02d}.jpg", color=(20 * i, 100, 200 - 10 * i))
        rows.append(f"images/{i:02d}.jpg,{lat:.6f},{lon:.6f},{i * 30}")
    (tmp_path / "photos.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny rendered city (90 training and 10 test views at 36 px) for the embedding's end-to-end tests."""
    from retrieval.synth.cameras import render_dataset
    from retrieval.synth.city import write_demo_city

    root = tmp_path_factory.mktemp("city")
    osm = write_demo_city(root / "city.osm", seed=1, size_m=600)
    render_dataset(osm, root / "data", n_train=90, n_test=10, size=36, seed=1, workers=1)
    return root / "data"


def untrained_run(out: Path, data: Path, k: int = 4, vote: str = "pool", index: bool = True) -> Path:
    """An embedding run of an untrained ResNet-18 (16-d, 32 px) over DATA (a folder or manifest), with its
    index over every photo of DATA's train.csv (or the manifest): enough to query in a second."""
    import torch

    from retrieval.config import load_config
    from retrieval.run import prepare_run_dir
    from retrieval.data.manifests import read_manifest
    from retrieval.learning.models import embedding_net
    from retrieval.answering.run_index import build_run_index

    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.embed_dim=16", "data.resize=36",
                             "data.image_size=32", "train.precision=fp32", f"index.k={k}", f"index.vote={vote}",
                             f"data.train={data}"], base={"name": "embedding"})
    prepare_run_dir(out, cfg)
    torch.manual_seed(0)
    torch.save({"model": embedding_net("none", 16, arch="resnet18").state_dict()}, out / "best.pt")
    if index:
        build_run_index(out, cfg, db=read_manifest(data / "train.csv" if Path(data).is_dir() else data))
    return out
