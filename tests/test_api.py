"""The Locator: one run loaded once, asked about paths, folders, PIL images and arrays, one or many."""
import json

import numpy as np
import pytest
from PIL import Image

from retrieval import GeolocError
from retrieval.answering.places import place_means, place_neighbours
from retrieval.api import Locator
from retrieval.data.manifests import Manifest, read_manifest
from retrieval.learning.inference import embed, load_embedding_model
from retrieval.learning.transforms import decode_images
from retrieval.run import load_run_config
from tests.conftest import untrained_run

K = 4


def noise_image(path, seed: int, size=(48, 40)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An untrained ResNet-18 over 20 textured photos (an untrained network tells them apart) and 5 queries."""
    root = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(1)
    rows = ["path,lat,lon"]
    for i in range(20):
        noise_image(root / "db" / f"{i:02d}.png", seed=i)
        rows.append(f"{i:02d}.png,{51.5138 + rng.uniform(-0.003, 0.003):.6f},{-0.0984 + rng.uniform(-0.004, 0.004):.6f}")
    (root / "db" / "train.csv").write_text("\n".join(rows) + "\n")
    for i in range(5):
        noise_image(root / "queries" / f"q{i}.png", seed=100 + i)
    out = untrained_run(root / "run", root / "db", k=K)
    cfg = load_run_config(out)
    return out, cfg, root


@pytest.fixture(scope="module")
def loc(run):
    return Locator.load(run[0])


def brute_force(cfg, run_dir, db_csv, query_paths):
    """The k nearest database photos by numpy over the run's own embeddings (what the index must find)."""
    db = read_manifest(db_csv)
    model, _ = load_embedding_model(run_dir, cfg)
    x = embed(model, decode_images(db, cfg.data.resize), cfg)
    x = place_means(x, place_neighbours(cfg, db))  # the index holds place means
    queries = Manifest(paths=list(query_paths), lat=np.zeros(len(query_paths)), lon=np.zeros(len(query_paths)))
    q = embed(model, decode_images(queries, cfg.data.resize), cfg)
    sims = q @ x.T
    return {str(p): float(v) for p, v in zip(db.paths, sims[0])}, np.sort(sims[0])[::-1][:K]


def test_one_path_finds_the_brute_force_neighbours(run, loc):
    run_dir, cfg, root = run
    q = root / "queries" / "q0.png"
    (a,) = loc.locate(q)
    sim_of, top = brute_force(cfg, run_dir, root / "db" / "train.csv", [q])
    assert a.error is None and a.source == str(q)
    # the k most similar (photos of one place share a place mean, so ties are compared by similarity)
    assert [n.similarity for n in a.neighbours] == pytest.approx(top, abs=1e-5)
    assert all(n.similarity == pytest.approx(sim_of[n.path], abs=1e-5) for n in a.neighbours)
    assert a.vote == "pool" and 0 <= a.confidence <= 1 and np.isfinite([a.lat, a.lon]).all()
    # the answer lies among its neighbours' positions (a pool's weighted centre)
    lats = [n.lat for n in a.neighbours]
    assert min(lats) - 1e-9 <= a.lat <= max(lats) + 1e-9
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d and set(d) == {"path", "lat", "lon", "confidence", "vote", "ms", "neighbours"}


def test_a_batch_answers_as_one_photo_at_a_time(run, loc):
    queries = sorted((run[2] / "queries").glob("*.png"))
    batch = loc.locate(queries)
    single = [loc.locate(q)[0] for q in queries]
    assert [a.source for a in batch] == [str(q) for q in queries]
    for b, s in zip(batch, single):
        assert [n.path for n in b.neighbours] == [n.path for n in s.neighbours]
        assert b.lat == pytest.approx(s.lat, abs=1e-9) and b.lon == pytest.approx(s.lon, abs=1e-9)


def test_a_folder_pil_image_and_array_answer_like_the_file(run, loc):
    folder = run[2] / "queries"
    answers = loc.locate(folder)
    assert [a.source for a in answers] == [str(p) for p in sorted(folder.glob("*.png"))]
    first = answers[0]
    with Image.open(folder / "q0.png") as im:
        pil, arr = im.copy(), np.asarray(im.convert("RGB"))
    from_pil, from_array = loc.locate([pil, arr])
    assert from_pil.source == "<image 0>" and from_array.source == "<image 1>"
    for a in (from_pil, from_array):
        assert [n.path for n in a.neighbours] == [n.path for n in first.neighbours]
        assert a.lat == pytest.approx(first.lat, abs=1e-9)
    gray = loc.locate(np.asarray(pil.convert("L")))[0]
    assert gray.error is None and len(gray.neighbours) == K


def test_one_bad_image_among_good_ones(run, loc, tmp_path):
    good = sorted((run[2] / "queries").glob("*.png"))[:2]
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[0].read_bytes()[:200])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    answers = loc.locate([good[0], cut, np.zeros((40, 40), np.float32), tmp_path / "missing.jpg", text, good[1],
                          np.zeros((10, 10, 3), np.uint8)])
    errors = [a.error for a in answers]
    assert errors[0] is None and errors[5] is None
    assert "cut.png" in errors[1] and errors[2].startswith("<image 2>: expected a uint8 array")
    assert all(e.count(a.source) == 1 for a, e in zip(answers, errors) if e)  # named once (issue 41)
    assert "no such image or folder" in errors[3] and "notes.jpg" in errors[4]
    assert "10 x 10 px, too small to locate" in errors[6]
    assert answers[0].lat == pytest.approx(loc.locate(good[0])[0].lat, abs=1e-9)
    assert all(set(a.to_dict()) == {"path", "error"} for a in answers if a.error)


def test_k_sets_how_many_neighbours_vote(run, loc):
    q = run[2] / "queries" / "q1.png"
    assert len(loc.locate(q, k=2)[0].neighbours) == 2
    with pytest.raises(GeolocError, match="at least 1 neighbour"):
        loc.locate(q, k=0)


def test_the_locator_says_it_needs_an_embedding_run(tmp_path):
    from retrieval.config import load_config
    from retrieval.run import prepare_run_dir

    run = tmp_path / "cells_run"
    prepare_run_dir(run, load_config(None, ["model.weights=none"]))
    (run / "run.json").write_text(json.dumps({"kind": "cells"}))
    with pytest.raises(GeolocError, match=r"cells_run: a cells run; the Locator \(query, serve, routes\) answers with "
                                          "an embedding run"):
        Locator.load(run)


def test_answering_reads_the_run_alone(tmp_path):
    """index.vote=auto is chosen where the data is (choose=True: index build, evaluate) and kept in
    RUN/vote.json; a Locator loaded later reads only the run, even with the data folder gone. Without a
    record it answers with pool and says how to choose."""
    import shutil
    import warnings

    root = tmp_path
    rows = ["path,lat,lon"]
    for i in range(12):
        noise_image(root / "db" / f"{i:02d}.png", seed=i)
        rows.append(f"{i:02d}.png,{51.5138 + 0.0004 * i:.6f},-0.0984")
    (root / "db" / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "db" / "val.csv").write_text("path,lat,lon\n00.png,51.5138,-0.0984\n05.png,51.5158,-0.0984\n")
    out = untrained_run(root / "run", root / "db", k=K, vote="auto")
    with pytest.warns(UserWarning, match="no mode was chosen for this checkpoint"):
        assert Locator.load(out).mode == "pool"
    chosen = Locator.load(out, choose=True)
    assert json.loads((out / "vote.json").read_text())["mode"] == chosen.mode
    shutil.rmtree(root / "db")  # the run's data folder gone: answering needs only the run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Locator.load(out)
    assert again.mode == chosen.mode and len(again.side.paths) == 12
