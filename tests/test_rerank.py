"""The geometric rerank (issue 38): local features stored compactly and resumably, inliers that agree with
a known geometry, the reorder, the choice on validation, and a run that answers with it."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from retrieval import GeolocError
from retrieval.answering.geometry import INLIER_CAP, OFF, Setting, candidate_settings, choose, inliers, matched_points, rescore
from retrieval.answering.local_features import LocalStore, extract, extract_database, matching_image
from retrieval.config import load_config
from retrieval.data.manifests import read_manifest

from conftest import untrained_run


def texture(seed: int, size=(320, 240)) -> np.ndarray:
    """A grey picture with corners and blobs at random: something SIFT finds features in."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8, size[0] // 8), dtype=np.uint8)
    img = cv2.resize(small, size, interpolation=cv2.INTER_NEAREST)
    return cv2.GaussianBlur(img, (3, 3), 0)


def test_inliers_agree_with_the_geometry_that_made_the_second_view():
    a = texture(1)
    H = np.array([[0.9, 0.05, 12.0], [-0.04, 0.95, 8.0], [1e-4, 0.0, 1.0]])
    b = cv2.warpPerspective(a, H, (a.shape[1], a.shape[0]))
    fa, fb = extract(Image.fromarray(a), 480, 480), extract(Image.fromarray(b), 480, 480)
    pa, pb = matched_points(fa, fb)
    assert len(pa) >= 40 and inliers(fa, fb) == len(pa)
    mapped = cv2.perspectiveTransform(pa[None].astype(np.float64), H)[0]
    assert np.mean(np.linalg.norm(mapped - pb, axis=1) < 3.0) > 0.9  # the known homography, not chance
    unrelated = extract(Image.fromarray(texture(2)), 480, 480)
    assert inliers(fa, unrelated) < len(pa) / 3


def test_features_are_capped_strongest_first_and_taken_at_the_matching_size():
    img = Image.fromarray(texture(3, (960, 720)))
    assert matching_image(img, 480).shape == (360, 480)
    assert matching_image(Image.fromarray(texture(3, (100, 80))), 480).shape == (80, 100)  # never enlarged
    xy, desc = extract(img, 480, 50)
    assert len(xy) == len(desc) == 50 and desc.dtype == np.uint8 and xy[:, 0].max() < 480
    xy0, desc0 = extract(Image.new("RGB", (64, 64), (90, 90, 90)), 480, 50)  # nothing to find
    assert xy0.shape == (0, 2) and desc0.shape == (0, 128)


def test_rescore_reorders_the_first_k_and_keeps_the_rest():
    sims = np.array([[0.9, 0.8, 0.7, 0.6]])
    ids = np.array([[5, 6, 7, 8]])
    inl = np.array([[0, 50, 200, 0]])
    scores, order, kept = rescore(sims, ids, inl, Setting(3, 1.0))
    assert order.tolist() == [[7, 6, 5, 8]]  # 0.7 + 1.0 (capped at INLIER_CAP) beats 0.8 + 0.5 and 0.9
    assert scores[0].tolist() == pytest.approx([1.7, 1.3, 0.9, 0.6])
    assert kept.tolist() == [[200, 50, 0, -1]] and INLIER_CAP == 100
    assert rescore(sims, ids, inl, OFF)[1].tolist() == ids.tolist()
    none = rescore(sims, np.array([[5, -1, 7, 8]]), inl, Setting(3, 1.0))[1]
    assert none.tolist() == [[7, 5, -1, 8]]  # a missing neighbour stays behind the checked ones


def test_auto_keeps_off_unless_a_setting_helps():
    db_lat, db_lon = np.array([0.0, 0.001, 0.002]), np.zeros(3)
    sims, ids = np.array([[0.9, 0.8, 0.1]]), np.array([[1, 0, 2]])
    true_lat, true_lon = np.array([0.0]), np.array([0.0])  # photo 0 is right, ranked second
    helped, recall = choose(sims, ids, np.array([[0, 80, 0]]), db_lat, db_lon, true_lat, true_lon,
                            settings=[OFF, Setting(2, 1.0)])
    assert helped == Setting(2, 1.0) and recall == {"off": 0.0, "k2_w1": 1.0}
    useless, _ = choose(sims, ids, np.array([[0, 0, 0]]), db_lat, db_lon, true_lat, true_lon,
                        settings=[OFF, Setting(2, 1.0)])
    assert useless == OFF  # a tie: the rerank is kept only where it helps
    assert candidate_settings(25)[0] == OFF and max(s.k for s in candidate_settings(25)) == 25


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """A tiny city rendered at 160 px: big enough for SIFT."""
    from retrieval.synth.cameras import render_dataset
    from retrieval.synth.city import write_demo_city

    root = tmp_path_factory.mktemp("rr")
    osm = write_demo_city(root / "city.osm", seed=2, size_m=400)
    render_dataset(osm, root / "data", n_train=30, n_test=6, n_val=10, size=160, seed=2, headings=2, workers=1)
    return root / "data"


def test_database_features_are_compact_and_resume_after_a_kill(views, tmp_path, monkeypatch):
    import retrieval.answering.local_features as lf

    db = read_manifest(views / "train.csv")
    rr = load_config(None).rerank
    calls, real = [], lf.extract

    def dies_at_25(image, size, keypoints):
        if len(calls) == 25:
            raise KeyboardInterrupt
        calls.append(1)
        return real(image, size, keypoints)

    monkeypatch.setattr(lf, "extract", dies_at_25)
    with pytest.raises(KeyboardInterrupt):
        extract_database(db, "sha", rr, tmp_path / "local", chunk=10)
    assert json.loads((tmp_path / "local" / "local.json").read_text())["rows_done"] == 20
    monkeypatch.setattr(lf, "extract", real)
    calls.clear()
    rec = extract_database(db, "sha", rr, tmp_path / "local", chunk=10)
    store = LocalStore(tmp_path / "local")
    assert rec["rows_done"] == len(store) == len(db)
    assert rec["bytes_per_photo"] == 480 * (128 + 4) + 2 <= 64_000  # the 64 KB per photo
    xy, d = store.features(0)
    want_xy, want_d = real(Image.open(db.paths[0]).convert("RGB"), rr.size, rr.keypoints)
    assert np.array_equal(d, want_d) and np.allclose(xy, want_xy, atol=0.1)  # float16 positions
    again = extract_database(db, "sha", rr, tmp_path / "local", chunk=10)  # the same settings: nothing to do
    assert again["seconds"] == rec["seconds"]


def test_a_run_answers_with_the_rerank(views, tmp_path):
    from retrieval.answering.locator import Locator
    from retrieval.config import dump_yaml
    from retrieval.answering.run_index import build_local_features

    run = untrained_run(tmp_path / "run", views, k=4)
    cfg = load_config(run / "config.yaml", ["index.rerank=on", "rerank.k=30", "rerank.weight=4"])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    with pytest.raises(GeolocError, match=r"index.rerank=on needs the database's local features"):
        Locator.load(run)
    build_local_features(run, cfg, read_manifest(views / "train.csv"))
    loc = Locator.load(run)
    assert loc.check == Setting(30, 4.0)
    db = read_manifest(views / "train.csv")
    with Image.open(db.paths[7]) as im:  # a database view, cropped: the embedding moves, the geometry holds
        query = im.convert("RGB").crop((8, 8, 152, 152))
    a = loc.locate(query)[0]
    assert a.neighbours[0].path == str(db.paths[7])
    assert a.neighbours[0].inliers == max(n.inliers for n in a.neighbours) >= 20
    assert all(n.inliers >= 0 for n in a.neighbours)  # every one of the 4 shown was checked
    # the web page's answer carries the counts (shown under each neighbour's thumbnail)
    import io

    from retrieval.web.app import create_app
    from retrieval.web.city_map import city_geojson

    buf = io.BytesIO()
    query.save(buf, format="PNG")
    client = create_app(loc, city_geojson(loc.cfg, loc.side.lat, loc.side.lon)).test_client()
    r = client.post("/api/locate", data={"photo": [(io.BytesIO(buf.getvalue()), "q.png")]},
                    content_type="multipart/form-data")
    nbs = r.get_json()[0]["neighbours"]
    assert r.status_code == 200 and nbs[0]["inliers"] == a.neighbours[0].inliers
    # a route's candidates are the reranked ones: each photo's own answer is the same as locate's
    with Image.open(db.paths[9]) as im:
        second = im.convert("RGB").crop((8, 8, 152, 152))
    route = loc.locate_route([query, second])
    assert route.points[0].single.neighbours[0].path == str(db.paths[7])


def test_auto_chooses_on_validation_and_evaluation_reports_both(views, tmp_path):
    from retrieval.config import dump_yaml
    from retrieval.reports.evaluate import evaluate_run

    run = untrained_run(tmp_path / "run", views, k=4, index=False)
    cfg = load_config(run / "config.yaml", ["index.rerank=auto"])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    (run / "run.json").write_text(json.dumps({"kind": "embedding", "zero_shot": True}))
    m = evaluate_run(run)
    rec = json.loads((run / "rerank.json").read_text())
    assert set(rec["val_recall@1_25m"]) >= {"off", "k10_w1"} and rec["val_views"] == 10
    assert m["rerank"]["mode"] == "auto" and (m["rerank"]["k"], m["rerank"]["weight"]) == (rec["k"], rec["weight"])
    assert "recall@1_25m" in m["rerank"]["without"]
    if rec["k"] == 0:  # off chosen: the headline is the figures without it, and it costs nothing
        assert m["recall@1_25m"] == m["rerank"]["without"]["recall@1_25m"] and m["rerank"]["ms_per_query"] == 0
    else:
        assert m["rerank"]["ms_per_query"] > 0


def test_the_vote_is_chosen_on_reranked_neighbours(views, tmp_path):
    """index.vote=auto with the rerank on compares the modes on the validation views' reranked neighbours (as
    the answers are), recorded with the setting; without the rerank the record is chosen again, without it."""
    import numpy as np

    from retrieval.answering.index import nearest_of
    from retrieval.answering.locator import Locator
    from retrieval.answering.places import place_means, place_neighbours
    from retrieval.answering.rerank import check, validation_features
    from retrieval.answering.run_index import build_local_features
    from retrieval.answering.vote import choose_mode
    from retrieval.config import dump_yaml
    from retrieval.learning.inference import embed, load_embedding_model
    from retrieval.learning.transforms import decode_images

    run = untrained_run(tmp_path / "run", views, k=4, vote="auto")
    cfg = load_config(run / "config.yaml", ["index.rerank=on", "rerank.k=10", "rerank.weight=4"])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    build_local_features(run, cfg, read_manifest(views / "train.csv"))
    loc = Locator.load(run, choose=True)
    rec = json.loads((run / "vote.json").read_text())
    assert rec["rerank"] == [10, 4.0] and rec["mode"] == loc.mode

    train, val = read_manifest(views / "train.csv"), read_manifest(views / "val.csv")
    model, _ = load_embedding_model(run, cfg)
    db = embed(model, decode_images(train, cfg.data.resize), cfg)
    nb = place_neighbours(cfg, train)
    db = place_means(db, nb) if nb is not None else db  # as the index holds them
    q = embed(model, decode_images(val, cfg.data.resize), cfg)
    sims, ids = nearest_of(db, q, 10)
    sims, ids, inl = check(loc.check, loc.local, cfg, sims, ids, validation_features(loc.local, loc.side, train, val, cfg))
    assert (inl[:, :10] >= 0).all()
    mode, medians = choose_mode(train.lat[ids[:, :4]], train.lon[ids[:, :4]], sims[:, :4], val.lat, val.lon,
                                cfg.index.vote_radius_m)
    assert mode == rec["mode"] and np.allclose([medians[m] for m in sorted(medians)],
                                               [rec["val_median_error_m"][m] for m in sorted(medians)])

    off = load_config(run / "config.yaml", ["index.rerank=off"])
    Locator.load(run, off, choose=True)
    assert json.loads((run / "vote.json").read_text())["rerank"] is None
