"""Training under torchrun on this CPU machine: 2 gloo processes must train exactly what one process
trains on their concatenated batch, write their outputs once, and resume under torchrun."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrieval.data.streets import euclidean_neighbours
from retrieval.learning.mining import PlaceBatchSampler
from tests.conftest import REPO

# fp32, no augmentation and fixed BatchNorm statistics make one step a deterministic function of the
# global batch; validation is off so both runs see every photo. SGD: Adam's per-parameter normalisation
# would blow rounding noise in near-zero gradients up to full-size steps.
EXACT = ["model.weights=none", "model.lock_factor=0.7", "model.freeze_bn=true", "model.embed_dim=64",
         "train.optimizer=sgd", "train.schedule=exponential", "embedding.loss=triplet", "embedding.miner=semihard",
         "train.precision=fp32", "train.max_steps_per_epoch=3", "train.lr=0.01", "augment.enabled=false",
         "data.image_size=32", "data.resize=36", "data.val_fraction=0", "embedding.photos_per_place=2",
         "embedding.pos_radius_m=60", "embedding.neg_radius_m=150"]


def geoloc(args: list[str], sets: list[str], processes: int = 1) -> str:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", "retrieval.cli", *args]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def params(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_ranks_share_out_the_global_batch():
    rng = np.random.default_rng(0)
    lat, lon = 51.51 + rng.uniform(0, 0.01, 400), -0.09 + rng.uniform(0, 0.015, 400)
    dist = euclidean_neighbours(lat, lon, 150.0)
    kw = dict(photos_per_place=3, pos_radius_m=60.0, seed=4)
    one = PlaceBatchSampler(dist, places=6, **kw)
    ranks = [PlaceBatchSampler(dist, places=3, rank=r, world=2, **kw) for r in (0, 1)]
    for s in (one, *ranks):
        s.set_epoch(2)
    assert len(ranks[0]) == len(ranks[1]) == len(one)  # an epoch covers the photos once in all
    batches = [list(s) for s in (one, *ranks)]
    assert len(batches[0]) == len(batches[1]) == len(batches[2]) > 0
    for b_one, b0, b1 in zip(*batches):
        assert b0 + b1 == b_one  # rank order concatenation = the one-process batch
        assert not set(b0) & set(b1)
        # no photo of rank 0 is a positive candidate of a photo of rank 1 (distinct places)
        assert not (dist[b0][:, b1].data <= 60.0).any()
    with pytest.raises(Exception, match="rank 2 is not in a world of 2"):
        PlaceBatchSampler(dist, rank=2, world=2)


def test_two_processes_train_what_one_trains_on_the_concatenated_batch(tiny_data, tmp_path):
    train = ["train", "embedding", "--data", str(tiny_data), "--out"]
    one, two, small = tmp_path / "one", tmp_path / "two", tmp_path / "small"
    geoloc([*train, str(one)], [*EXACT, "train.epochs=1", "embedding.places_per_batch=4"])
    stdout = geoloc([*train, str(two)], [*EXACT, "train.epochs=1", "embedding.places_per_batch=2"], processes=2)
    geoloc([*train, str(small)], [*EXACT, "train.epochs=1", "embedding.places_per_batch=2"])

    # 2 processes x 2 places = 1 process x 4 places, step for step; 1 process x 2 places is another run.
    assert max_diff(params(one), params(two)) < 1e-5
    assert max_diff(params(one), params(small)) > 1e-3

    # Rank 0 alone wrote the run (and holds its lock): one set of files, one log row, one message per epoch.
    assert sorted(p.name for p in two.iterdir()) == [".lock", "best.pt", "command.txt", "config.yaml", "git.json",
                                                     "last.pt", "log.csv", "run.json"]
    assert (two / ".lock").read_text().startswith("pid ")
    assert len((two / "log.csv").read_text().splitlines()) == 2
    assert stdout.count("epoch 1/1: train_loss") == 1 and "(2 processes)" in stdout
    run = __import__("json").loads((two / "run.json").read_text())
    assert run["processes"] == 2 and run["train"]["train_images"] == 3 * 8

    # Resume both under their own launcher for a second epoch: still the same parameters.
    geoloc(["train", "embedding", "--resume", "--out", str(one)], ["train.epochs=2"])
    geoloc(["train", "embedding", "--resume", "--out", str(two)], ["train.epochs=2"], processes=2)
    assert max_diff(params(one), params(two)) < 1e-5
    assert torch.load(two / "last.pt", weights_only=True)["epoch"] == 2
    assert len((two / "log.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("kind", ["cells", "regression"])
def test_baselines_train_under_torchrun(kind, tiny_data, tmp_path):
    run = tmp_path / kind
    sets = [*EXACT, "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=2",
            "data.val_fraction=0.2", "cells.cell_size_m=200"]
    stdout = geoloc(["train", kind, "--data", str(tiny_data), "--out", str(run)], sets, processes=2)
    assert stdout.count("epoch 1/1: train_loss") == 1
    info = __import__("json").loads((run / "run.json").read_text())
    # 2 steps of 4 photos on each of 2 ranks, validated by rank 0
    assert info["processes"] == 2 and info["train"]["train_images"] == 16
    assert (run / "last.pt").is_file() and ((run / "grid.geojson").is_file() or kind == "regression")


def test_pretrain_runs_under_torchrun_unchanged(tmp_path):
    from retrieval.synth.city import write_demo_city

    osm = [str(write_demo_city(tmp_path / f"town{i}.osm", seed=i, size_m=400)) for i in (1, 2)]
    run = tmp_path / "pre"
    sets = ["model.embed_dim=16", "data.image_size=32", "data.resize=36", "train.epochs=1",
            "train.max_steps_per_epoch=2", "train.max_minutes=0", "train.precision=fp32",
            "embedding.places_per_batch=2", "embedding.photos_per_place=2"]
    stdout = geoloc(["pretrain", *osm, "--views", "80", "--headings", "2", "--out", str(run)], sets, processes=2)
    # rank 0 rendered each city once and wrote the run; both ranks trained (2 steps of 2 x 2 photos each)
    assert stdout.count("pretrained on 2 cities:") == 1 and stdout.count("== rendering town1") == 1
    info = __import__("json").loads((run / "run.json").read_text())
    assert info["processes"] == 2 and info["train"]["train_images"] == 2 * 2 * 4
    card = __import__("json").loads((run / "model_card.json").read_text())
    assert [c["name"] for c in card["cities"]] == ["town1", "town2"] and (run / "best.pt").is_file()


def test_index_build_under_torchrun_matches_one_process(tiny_data, tmp_path):
    """Issue 39: two processes embed the database between them (each every other photo of a chunk), rank 0
    writes it: the same embeddings and sidecar as one process, and a killed build resumes under torchrun."""
    import json

    from retrieval.answering.run_index import EMBEDDINGS, PROGRESS
    from tests.conftest import untrained_run

    run = untrained_run(tmp_path / "run", tiny_data, index=False)
    sets = ["train.precision=fp32"]
    geoloc(["index", "build", "--run", str(run)], sets)
    one = np.load(run / "index" / EMBEDDINGS)
    side = json.loads((run / "index" / "index.json").read_text())
    shutil_rmtree(run / "index")
    stdout = geoloc(["index", "build", "--run-dir", str(run)], sets, processes=2)  # torchrun takes --run itself
    assert stdout.count("indexed ") == 1  # rank 0 reports
    two = np.load(run / "index" / EMBEDDINGS)
    assert two.shape == one.shape and np.allclose(one, two, atol=1e-5)
    # fp32 sums in another order (one thread a process), the same index answers: every photo's 5 neighbours
    assert (np.argsort(-one @ one.T, axis=1)[:, :5] == np.argsort(-two @ two.T, axis=1)[:, :5]).all()
    assert json.loads((run / "index" / "index.json").read_text())["arrays_sha256"] == side["arrays_sha256"]
    # a build killed after its first chunk: the record says so and the rest of the rows are zeros
    record = json.loads((run / "index" / PROGRESS).read_text())
    rows = np.lib.format.open_memmap(run / "index" / EMBEDDINGS, mode="r+")
    rows[40:] = 0
    rows.flush()
    del rows
    (run / "index" / PROGRESS).write_text(json.dumps({**record, "rows_done": 40}))
    (run / "index" / "index.json").unlink()
    stdout = geoloc(["index", "build", "--run-dir", str(run)], sets, processes=2)
    assert f"{len(one) - 40} embedded now" in stdout
    assert np.allclose(np.load(run / "index" / EMBEDDINGS), one, atol=1e-5)


def shutil_rmtree(path):
    import shutil

    shutil.rmtree(path)
