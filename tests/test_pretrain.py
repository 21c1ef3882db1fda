"""Pretraining across rendered cities: distances within each city only, a model card, and a run that
starts other trainings (model.weights=RUN) and indexes a new city's photos at once (zero-shot)."""
import json

import numpy as np
import pytest
import torch

from retrieval import GeolocError
from retrieval.config import load_config
from retrieval.data.cities import city_of_photos, read_cities
from retrieval.data.manifests import read_manifest
from retrieval.geo import haversine_m
from retrieval.learning.models import embedding_net
from retrieval.methods.embedding import ground_distances
from retrieval.methods.pretrain import PRETRAIN, pretrain
from retrieval.synth.city import write_demo_city

TINY = ["model.embed_dim=16", "data.image_size=32", "data.resize=36", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.max_minutes=0", "train.precision=fp32", "embedding.places_per_batch=2", "embedding.photos_per_place=2",
        "train.batch_size=8"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    osm = [write_demo_city(root / f"town{i}.osm", seed=i, size_m=500) for i in (1, 2)]
    cfg = load_config(None, TINY, base=PRETRAIN)
    card = pretrain(cfg, osm, root / "run", views=30, headings=2)
    return root, card


def test_two_cities_make_one_run_with_a_model_card(pretrained):
    root, card = pretrained
    run = root / "run"
    assert [c["name"] for c in card["cities"]] == ["town1", "town2"]
    assert all(c["training_views"] == 60 for c in card["cities"])  # 30 positions x 2 headings
    assert json.loads((run / "model_card.json").read_text()) == card
    md = (run / "MODEL_CARD.md").read_text()
    assert "| town1 | 60 |" in md and "OpenStreetMap" in md and "model.weights=RUN" in md
    assert (run / "best.pt").is_file() and json.loads((run / "run.json").read_text())["kind"] == "embedding"
    assert [c["name"] for c in read_cities(run / "data")] == ["town1", "town2"]


def test_distances_stay_within_each_city(pretrained):
    root, _ = pretrained
    cfg = load_config(root / "run" / "config.yaml")
    train = read_manifest(root / "run" / "data" / "train.csv")
    city = city_of_photos(train.paths, read_cities(cfg.data.train))
    d = ground_distances(cfg, train).tocoo()
    assert len(d.data) and (city[d.row] == city[d.col]).all()  # two cities' photos: never near
    # the two headings of one position are 0 m apart, kept as stored zeros (not dropped as "no entry")
    zero = (d.data == 0) & (d.row != d.col)
    assert zero.any() and np.allclose(haversine_m(train.lat[d.row[zero]], train.lon[d.row[zero]],
                                                  train.lat[d.col[zero]], train.lon[d.col[zero]]), 0, atol=1e-6)


def test_zero_shot_on_a_city_it_never_saw(pretrained):
    from retrieval.reports.evaluate import evaluate_run
    from retrieval.synth.cameras import render_dataset

    root, _ = pretrained
    osm = write_demo_city(root / "town3.osm", seed=3, size_m=500)
    new = render_dataset(osm, root / "town3", n_train=30, n_test=6, n_val=6, size=36, seed=3, headings=2)
    assert new["test"] == 6
    m = evaluate_run(root / "run", root / "town3")  # indexes town3's photos with the pretrained model, then asks
    assert m["n"] == 6 and m["kind"] == "embedding" and "thumbnail_knn" in m["floors"]
    side = json.loads((root / "run" / "index" / "index.json").read_text())
    assert side["count"] == 60 + 6  # town3's training and validation views are the database


def test_a_pretrained_run_starts_other_trainings(pretrained):
    root, _ = pretrained
    run = root / "run"
    state = torch.load(run / "best.pt", weights_only=True)["model"]
    net = embedding_net(str(run), 16, arch="resnet18")
    own = net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())  # trunk, GeM and head: the whole network
    wider = embedding_net(str(run), 32, arch="resnet18")  # another embedding size: the trunk alone
    assert torch.equal(wider.state_dict()["trunk.conv1.weight"], state["trunk.conv1.weight"])
    with pytest.raises(GeolocError, match="no trunk weights"):
        (root / "empty").mkdir()
        torch.save({"model": {"x": torch.zeros(1)}}, root / "empty" / "best.pt")
        embedding_net(str(root / "empty"), 16, arch="resnet18")


def test_pretrain_refusals(tmp_path):
    cfg = load_config(None, TINY, base=PRETRAIN)
    osm = write_demo_city(tmp_path / "a.osm", seed=1, size_m=400)
    with pytest.raises(GeolocError, match="at least two OSM extracts"):
        pretrain(cfg, [osm], tmp_path / "run")
    with pytest.raises(GeolocError, match="share a name"):
        pretrain(cfg, [osm, osm], tmp_path / "run")
    cfg.embedding.cell_loss_weight = 0.1
    with pytest.raises(GeolocError, match="cell_loss_weight"):
        pretrain(cfg, [osm, tmp_path / "b.osm"], tmp_path / "run")


def test_a_rerun_with_other_render_settings_is_refused(pretrained):
    """A pretraining rerun into the same --out with another --views would silently reuse the old views."""
    root, _ = pretrained
    osm = [root / "town1.osm", root / "town2.osm"]
    with pytest.raises(GeolocError, match=r"town1: rendered with other settings \(--views 30 -> 100\); rerun with "
                                          "the first settings to resume, or choose another --out"):
        pretrain(load_config(root / "run" / "config.yaml"), osm, root / "run", views=100, headings=2, resume=True)


def test_pretrain_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    import retrieval.methods.pretrain as pre

    def too_wide(osm, *a, **kw):
        raise GeolocError("scene: the extract spans 15000 x 900 m; clip it to a city centre under 12 km across")

    monkeypatch.setattr(pre, "render_dataset", too_wide)
    cfg = load_config(None, TINY, base=PRETRAIN)
    osm = [write_demo_city(tmp_path / f"w{i}.osm", seed=i, size_m=300) for i in (1, 2)]
    with pytest.raises(GeolocError, match=r"w1.osm: scene: the extract spans 15000 x 900 m"):
        pretrain(cfg, osm, tmp_path / "run")
    monkeypatch.undo()
    # 10 views of a small town give no place a second view: the message says what to change
    with pytest.raises(GeolocError, match=r"pretrain --views 10: no photo has a positive candidate.*--views 100 or more"):
        pretrain(load_config(None, TINY, base=PRETRAIN), osm, tmp_path / "few", views=10, headings=1)


def test_pretrain_resumes_only_when_asked_as_training_does(pretrained):
    """Issue 41: a rerun into a pretrained --out was resumed silently, and one whose model card was lost
    (a failure after training) left none; now --resume is asked for, and it writes the card."""
    root, card = pretrained
    run, osm = root / "run", [root / "town1.osm", root / "town2.osm"]
    cfg = load_config(None, TINY, base=PRETRAIN)
    with pytest.raises(GeolocError, match=r"run: already has a checkpoint; pass --resume or choose another"):
        pretrain(cfg, osm, run, views=30, headings=2)
    with pytest.raises(GeolocError, match=r"--resume cannot change .*train.lr 0.001 -> 0.01"):
        pretrain(load_config(run / "config.yaml", ["train.lr=0.01"]), osm, run, views=30, headings=2, resume=True)
    (run / "MODEL_CARD.md").unlink()
    again = pretrain(load_config(run / "config.yaml"), osm, run, views=30, headings=2, resume=True)
    assert (run / "MODEL_CARD.md").is_file() and again["cities"] == card["cities"]
    assert (run / "command.txt").read_text().count("\n") == 2  # the first command, then the resume's
    with pytest.raises(GeolocError, match=r"fresh: nothing to resume \(no last.pt\)"):
        pretrain(load_config(None, TINY, base=PRETRAIN), osm, root / "fresh", views=30, headings=2, resume=True)
