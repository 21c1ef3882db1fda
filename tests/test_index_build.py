"""build_run_index streams the database through the model in chunks, to a resumable embeddings file."""
import json

import numpy as np
import pytest
import torch

from retrieval.answering.index import load_index, search
import retrieval.answering.run_index as run_index
from retrieval.answering.run_index import EMBEDDINGS, PLACE_EMBEDDINGS, PROGRESS, build_run_index
from retrieval.config import Config
from retrieval.data.manifests import read_manifest
from retrieval.learning.checkpoints import save_checkpoint
from retrieval.learning.models import embedding_net
from retrieval.run import Run
from tests.conftest import write_image

N, CHUNK = 20, 8


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows = ["path,lat,lon"]
    for i in range(N):
        write_image(root / "images" / f"{i:02d}.jpg", size=(40, 36), color=tuple(int(c) for c in rng.integers(0, 255, 3)))
        rows.append(f"images/{i:02d}.jpg,{51.51 + i * 1e-4:.6f},{-0.09 - i * 1e-4:.6f}")
    (root / "photos.csv").write_text("\n".join(rows) + "\n")
    return read_manifest(root / "photos.csv")


def make_run(path, seed=0, place_mean_m=0.0):
    cfg = Config(name="t")
    cfg.model.embed_dim, cfg.data.image_size, cfg.data.resize, cfg.train.batch_size = 64, 32, 36, 8
    cfg.index.place_mean_m = place_mean_m  # 0: the index holds the embeddings themselves
    torch.manual_seed(seed)
    save_checkpoint(path / "best.pt", {"model": embedding_net("none", 64).state_dict()})
    return path, cfg


class Killed(Exception):
    pass


@pytest.fixture
def counted(monkeypatch):
    """Photos passed through the model, per call of embed."""
    calls = []
    real = run_index.embed

    def counting(model, images, cfg, desc="embed"):
        calls.append(len(images))
        return real(model, images, cfg, desc)

    monkeypatch.setattr(run_index, "embed", counting)
    return calls


def test_a_killed_build_resumes_after_its_last_chunk(tmp_path, photos, counted):
    whole, cfg = make_run(tmp_path / "whole")
    s = build_run_index(whole, cfg, photos, chunk=CHUNK)
    assert s["photos"] == N and s["embedded"] == N and counted == [8, 8, 4]  # never more than a chunk

    killed, _ = make_run(tmp_path / "killed")

    def kill_after_first(rows):
        if rows == CHUNK:
            raise Killed

    counted.clear()
    with pytest.raises(Killed):
        build_run_index(killed, cfg, photos, chunk=CHUNK, on_chunk=kill_after_first)
    assert json.loads((killed / Run.INDEX_DIR / PROGRESS).read_text())["rows_done"] == CHUNK
    assert not (killed / Run.INDEX_DIR / "index.json").exists()
    counted.clear()
    s = build_run_index(killed, cfg, photos, chunk=CHUNK)
    assert counted == [8, 4] and s["embedded"] == N - CHUNK  # the first chunk was not embedded again

    a = np.load(whole / Run.INDEX_DIR / EMBEDDINGS)
    b = np.load(killed / Run.INDEX_DIR / EMBEDDINGS)
    assert a.shape == (N, 64) and np.isfinite(a).all() and np.array_equal(a, b)
    (ia, sa), (ib, sb) = load_index(whole / Run.INDEX_DIR), load_index(killed / Run.INDEX_DIR)
    assert sa.paths == sb.paths == [str(p) for p in photos.paths]
    assert np.array_equal(search(ia, a[:5], 5)[1], search(ib, a[:5], 5)[1])
    assert np.array_equal(search(ia, a[:5], 1)[1][:, 0], np.arange(5))


def test_a_rebuild_reuses_the_embeddings_only_for_the_same_model_and_photos(tmp_path, photos, counted):
    run, cfg = make_run(tmp_path / "run")
    build_run_index(run, cfg, photos, chunk=CHUNK)
    counted.clear()
    cfg.index.shard_size = 7  # other index settings: same embeddings
    s = build_run_index(run, cfg, photos, chunk=CHUNK)
    assert counted == [] and s["embedded"] == 0 and s["shards"] == 3
    index, _ = load_index(run / Run.INDEX_DIR)
    assert index.ntotal == N
    assert sorted(p.name for p in (run / Run.INDEX_DIR).glob("*.faiss")) == [f"index-00{i}.faiss" for i in range(3)]
    make_run(run, seed=1)  # retrained: another checkpoint
    s = build_run_index(run, cfg, photos, chunk=CHUNK)
    assert counted == [8, 8, 4] and s["embedded"] == N
    counted.clear()
    s = build_run_index(run, cfg, photos.subset(np.arange(N - 1)), chunk=CHUNK)  # other photos
    assert counted == [8, 8, 3] and s["photos"] == N - 1


def test_the_index_holds_each_photo_plus_the_mean_of_its_place(tmp_path, photos):
    from retrieval.answering.places import same_place

    run, cfg = make_run(tmp_path / "run", place_mean_m=25.0)
    build_run_index(run, cfg, photos, chunk=CHUNK)
    raw = np.load(run / Run.INDEX_DIR / EMBEDDINGS)
    index, side = load_index(run / Run.INDEX_DIR)
    # consecutive photos stand 13 m apart: each has the one or two next to it within 25 m
    nb = same_place(photos.lat, photos.lon, None, 25.0)
    assert sorted(set(np.diff(nb.indptr))) == [1, 2]
    expected = np.stack([raw[i] + raw[nb[i].indices].mean(axis=0) for i in range(N)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(index.reconstruct_n(0, N), expected, atol=1e-5)
    assert side.place_mean == {"radius_m": 25.0, "heading_tol_deg": 45.0, "photos_with_neighbours": N}

    cfg.index.place_mean_m = 0.0  # off again: the embeddings as they are, and no stale file beside them
    build_run_index(run, cfg, photos, chunk=CHUNK)
    index, side = load_index(run / Run.INDEX_DIR)
    assert np.array_equal(index.reconstruct_n(0, N), raw) and side.place_mean == {}
    assert not (run / Run.INDEX_DIR / PLACE_EMBEDDINGS).exists()
