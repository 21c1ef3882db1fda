"""The main method end to end on a tiny rendered city: train -> index -> evaluate -> query."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrieval import GeolocError
from retrieval.answering.locator import Locator
from retrieval.answering.run_index import build_run_index
from retrieval.answering.vote import VOTE_MODES
from retrieval.config import load_config
from retrieval.data.manifests import read_manifest
from retrieval.geo import haversine_m
from retrieval.methods.embedding import train_embedding
from retrieval.reports.evaluate import evaluate_run
from retrieval.run import prepare_run_dir
from tests.conftest import REPO

TINY = ["model.weights=none", "model.lock_factor=0", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.batch_size=8", "data.image_size=32", "data.resize=36", "data.num_workers=0",
        "embedding.places_per_batch=2", "embedding.photos_per_place=2", "embedding.pos_radius_m=60",
        "embedding.neg_radius_m=150", "model.embed_dim=64", "index.k=5"]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "emb"
    cfg = load_config(None, [*TINY, f"data.train={tiny_data}"])
    prepare_run_dir(run, cfg)
    summary = train_embedding(cfg, run)
    assert summary["epochs"] == 1
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "embedding" and info["positives"] == "geodesic"
    assert info["streets"].endswith("streets.graphml")
    # 90 photos would make 22 batches of 2 x 2 photos; the sampler draws exactly max_steps_per_epoch
    assert info["batches_per_epoch"] == 2
    build_run_index(run, cfg)
    Locator.load(run, cfg, choose=True)  # as `geoloc index build` does
    return run, cfg


def test_index_holds_the_database_and_finds_itself(trained, tiny_data):
    run, cfg = trained
    side = json.loads((run / "index" / "index.json").read_text())
    db = read_manifest(tiny_data / "train.csv")
    assert side["count"] == len(db) and side["dim"] == 64
    # A database photo's nearest neighbour is itself: similarity ~1, at distance 0.
    a = Locator.load(run).locate([db.paths[7]], k=3)[0]
    top = a.neighbours[0]
    assert top.path == str(db.paths[7]) and top.similarity == pytest.approx(1.0, abs=1e-2)
    assert haversine_m(top.lat, top.lon, db.lat[7], db.lon[7]) < 0.01
    assert 0.0 <= a.confidence <= 1.0 and len(a.neighbours) == 3


def test_evaluate_writes_metrics_for_every_vote_mode(trained, tiny_data):
    run, _ = trained
    m = evaluate_run(run, tiny_data)
    assert m["kind"] == "embedding" and m["n"] == 10
    assert set(m["vote_modes"]) == {"pool", "top1", "weighted_mean"}
    for key in ("recall@1_25m", "recall@5_25m", "recall@10_25m"):
        assert 0.0 <= m[key] <= 1.0
    assert m["recall@1_25m"] <= m["recall@5_25m"] <= m["recall@10_25m"]
    # The headline numbers are those of the mode index.vote=auto chose on the validation views.
    chosen = json.loads((run / "vote.json").read_text())
    medians = chosen["val_median_error_m"]
    assert m["vote"] == chosen["mode"] == min(VOTE_MODES, key=lambda mode: medians[mode])
    assert m["vote_choice"]["val_median_error_m"] == medians
    assert m["median_error_m"] == pytest.approx(m["vote_modes"][m["vote"]]["median_error_m"])
    assert Locator.load(run).locate(tiny_data / "images")[0].vote == m["vote"]  # the query tool answers the same way
    rows = (run / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,true_lat,true_lon,pred_lat,pred_lon,error_m") and len(rows) == 11


def test_query_on_real_photos(trained, shared_data):
    run, _ = trained
    answers = Locator.load(run).locate([shared_data / "photos" / "berlin"])
    assert len(answers) == 3
    for a in answers:
        assert a.error is None and np.isfinite([a.lat, a.lon]).all() and 0 <= a.confidence <= 1


def test_mismatched_index_is_refused(trained, tiny_data, tmp_path):
    run, _ = trained
    other = tmp_path / "other"
    shutil.copytree(run, other)
    state = torch.load(other / "best.pt", weights_only=True)
    state["model"]["head.bias"] += 1.0
    torch.save(state, other / "best.pt")
    image = read_manifest(tiny_data / "test.csv").paths[0]
    with pytest.raises(GeolocError, match="index was built with model checkpoint"):
        Locator.load(other)
    out = subprocess.run([sys.executable, "-m", "retrieval.cli", "query", "--run", str(other), str(image)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "rebuild it with `geoloc index build`" in last


@pytest.mark.parametrize("positives, within, spared", [("geodesic", 60.0, True), ("geodesic", 0.0, False),
                                                         ("euclidean", 60.0, False)])
def test_never_negative_rule_reaches_the_miner(tiny_data, positives, within, spared):
    from retrieval.methods.embedding import EmbeddingTask
    from retrieval.data.streets import euclidean_neighbours

    cfg = load_config(None, [*TINY, f"data.train={tiny_data}", f"embedding.positives={positives}",
                             f"embedding.never_negative_within_m={within}"])
    train = read_manifest(tiny_data / "train.csv")
    rules = EmbeddingTask(cfg, {"train": train}).rules
    if not spared:
        assert rules.never_negative is None
        return
    near = euclidean_neighbours(train.lat, train.lon, within)
    assert rules.never_negative.nnz == near.nnz
    i, j = near.nonzero()
    _, neg = rules.masks(np.arange(len(train)))
    assert not neg[i, j].any()  # no pair within 60 m in a straight line is a negative


def test_memory_mines_earlier_batches_in_the_task(tiny_data):
    from retrieval.methods.embedding import EmbeddingTask

    cfg = load_config(None, [*TINY, f"data.train={tiny_data}", "embedding.memory_size=6"])
    task = EmbeddingTask(cfg, {"train": read_manifest(tiny_data / "train.csv")})
    batches = iter(task.train_loader)
    first, second = next(batches), next(batches)
    task.loss(task.model, first)
    assert task.memory.idx.tolist() == first[2].tolist()
    value = task.loss(task.model, second)
    assert torch.isfinite(value) and task.memory.idx.tolist() == [*first[2].tolist(), *second[2].tolist()][-6:]


def test_cell_loss_trains_a_classifier_over_the_cells_grid(tiny_data, tmp_path):
    from retrieval.data.grids import make_grid
    from retrieval.learning.checkpoints import load_checkpoint
    from retrieval.methods.embedding import EmbeddingTask

    cfg = load_config(None, [*TINY, f"data.train={tiny_data}", "embedding.cell_loss_weight=0.5",
                             "cells.cell_size_m=200", "cells.border_spacing_m=0"])
    train = read_manifest(tiny_data / "train.csv")
    task = EmbeddingTask(cfg, {"train": train})
    cells = make_grid(cfg, train).assign(train.lat, train.lon)
    # one class per occupied cell, numbered in cell order; photos of one cell share a class
    assert task.extra.W.shape == (64, len(np.unique(cells)))
    assert np.array_equal(task.cell_of_photo.numpy(), np.searchsorted(np.unique(cells), cells))
    batch = next(iter(task.train_loader))
    with torch.no_grad():  # the same batch twice: BatchNorm's batch statistics, so the same embeddings
        with_cells = float(task.loss(task.model, batch))
        cfg.embedding.cell_loss_weight = 0.0
        metric_only = float(task.loss(task.model, batch))
        expected = 0.5 * float(task.extra(task.model(batch[0]).float(), task.cell_of_photo[batch[2]]))
    assert expected > 0 and with_cells - metric_only == pytest.approx(expected, rel=1e-4)

    run = tmp_path / "emb"
    cfg.embedding.cell_loss_weight = 0.5
    prepare_run_dir(run, cfg)
    info = train_embedding(cfg, run)
    assert info["epochs"] == 1
    assert json.loads((run / "run.json").read_text())["cell_classes"] == task.extra.W.shape[1]
    assert load_checkpoint(run / "last.pt")["extra"]["W"].shape == task.extra.W.shape
    build_run_index(run, cfg)  # the index loads the embedding alone, without the classifier
    assert evaluate_run(run, tiny_data)["n"] == 10


def test_cell_heading_bins_split_each_cell_by_the_way_the_camera_faces(tiny_data):
    from retrieval.data.grids import make_grid
    from retrieval.methods.embedding import EmbeddingTask

    cfg = load_config(None, [*TINY, f"data.train={tiny_data}", "embedding.cell_loss_weight=0.1",
                             "embedding.cell_heading_bins=4", "cells.cell_size_m=200", "cells.border_spacing_m=0"])
    train = read_manifest(tiny_data / "train.csv")
    train.heading = np.array([0.0, 44.9, 45.0, 135.0, 224.9, 315.0, 359.0, 90.0] * (len(train) // 8 + 1))[:len(train)]
    task = EmbeddingTask(cfg, {"train": train})
    cells = make_grid(cfg, train).assign(train.lat, train.lon)
    # by hand: bins of 90 degrees centred on north, east, south, west
    facing = np.array([0, 0, 1, 2, 2, 0, 0, 1] * (len(train) // 8 + 1))[:len(train)]
    key = cells * 4 + facing
    assert np.array_equal(task.cell_of_photo.numpy(), np.searchsorted(np.unique(key), key))
    assert task.extra.W.shape[1] == len(np.unique(key)) > len(np.unique(cells))
    assert task.info()["cell_heading_bins"] == 4

    train.heading = None
    with pytest.raises(GeolocError, match="cell_heading_bins=4: needs a heading for every training photo"):
        EmbeddingTask(cfg, {"train": train})


def test_hard_batches_take_their_look_alikes_from_each_validation(tiny_data):
    from retrieval.methods.embedding import EmbeddingTask
    from retrieval.learning.inference import embed

    cfg = load_config(None, [*TINY, f"data.train={tiny_data}", "embedding.hard_places=2"])
    train = read_manifest(tiny_data / "train.csv")
    task = EmbeddingTask(cfg, {"train": train})
    assert task.sampler.neighbours is None and task.info()["hard_places"] == 2
    task.model.eval()
    with torch.no_grad():
        assert task.validate(task.model) == {}  # no validation set, yet the database is embedded
        db = embed(task.model, task.images, cfg)
    n = len(train)
    ids = task.sampler.neighbours
    assert ids.shape == (n, min(64, n - 1)) and not (ids == np.arange(n)[:, None]).any()
    sims = db @ db.T
    np.fill_diagonal(sims, -np.inf)
    assert np.array_equal(ids[:, 0], sims.argmax(1))  # each photo's first look-alike: its most similar
