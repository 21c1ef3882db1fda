"""Route decoding: the chain against brute-force enumeration, walking distances against networkx, the
decoder on synthetic candidates (decoys, parallel streets, jumps), photo order, camera walks, and one
tiny untrained run through Locator.locate_route and `geoloc query --route`."""
import itertools
import json
import shutil
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import logsumexp
from shapely.geometry import LineString

from retrieval import GeolocError
from retrieval.config import load_config
from retrieval.run import prepare_run_dir
from retrieval.geo import LocalProjection, haversine_m
from retrieval.data.manifests import read_manifest
from retrieval.answering.route import (StreetWalks, decode, expected_steps, follow_scores, order_photos, posteriors,
                             read_route_list, viterbi)
from retrieval.data.streets import StreetGraph, snap_photos, spliced_networkx_graph
from tests.conftest import REPO

ORIGIN = LocalProjection(51.5138, -0.0984)
X0, Y0 = ORIGIN.to_xy(51.5138, -0.0984)


def latlon(points):
    x, y = np.array(points, dtype=float).reshape(-1, 2).T
    return ORIGIN.to_latlon(X0 + x, Y0 + y)


def street_nx(nodes: dict, edges: list) -> nx.MultiDiGraph:
    """An OSMnx-style lat/lon graph from node positions in metres around St Paul's and (u, v) edges."""
    G = nx.MultiDiGraph(crs="epsg:4326")
    for n, xy in nodes.items():
        lat, lon = latlon([xy])
        G.add_node(n, x=float(lon[0]), y=float(lat[0]))
    for i, (u, v) in enumerate(edges):
        lat, lon = latlon([nodes[u], nodes[v]])
        G.add_edge(u, v, osmid=i, highway="residential", length=float(np.hypot(*np.subtract(nodes[u], nodes[v]))),
                   geometry=LineString(np.column_stack([lon, lat])))
    return G


def params(**kw):
    return load_config(None, [f"route.{k}={v}" for k, v in kw.items()]).route


# --- the chain against brute force -------------------------------------------------------------------

def brute_force(emit, follow, break_cost):
    """Every path and every choice of breaks, scored one by one: the best, and each candidate's marginal."""
    T, K = emit.shape
    best, scores, paths = (-np.inf, None, None), [], []
    for path in itertools.product(range(K), repeat=T):
        for flags in itertools.product((False, True), repeat=T - 1):
            s = sum(emit[t, path[t]] for t in range(T))
            s += sum(-break_cost if flags[t] else follow[t, path[t], path[t + 1]] for t in range(T - 1))
            scores.append(s)
            paths.append(path)
            if s > best[0]:
                best = (s, np.array(path), np.array(flags, dtype=bool))
    scores, paths = np.array(scores), np.array(paths)
    z = logsumexp(scores)
    marginal = np.array([[np.exp(logsumexp(scores[paths[:, t] == k]) - z) if (paths[:, t] == k).any() else 0.0
                          for k in range(K)] for t in range(T)])
    return best, marginal


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_and_posteriors_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    T, K, break_cost = 5, 3, 1.5
    emit = rng.normal(0, 1, (T, K))
    follow = rng.normal(-1, 1, (T - 1, K, K))
    follow[rng.random(follow.shape) < 0.3] = -np.inf  # impossible steps
    emit[1, 2] = -np.inf  # a photo with one candidate fewer
    (score, path, flags), marginal = brute_force(emit, follow, break_cost)
    got_path, got_breaks, got_score = viterbi(emit, follow, break_cost)
    assert got_score == pytest.approx(score)
    assert got_path.tolist() == path.tolist()
    assert got_breaks.tolist() == flags.tolist()
    np.testing.assert_allclose(posteriors(emit, follow, break_cost), marginal, atol=1e-9)


def test_one_photo_is_its_best_candidate():
    path, breaks, score = viterbi(np.array([[0.1, 0.7, 0.3]]), np.zeros((0, 3, 3)), 5.0)
    assert path.tolist() == [1] and breaks.size == 0 and score == pytest.approx(0.7)


def test_expected_steps_from_times_else_the_configured_step():
    p = params(pace_mps=1.4, step_m=15, step_tol_m=10, step_tol=0.5)
    step, spread = expected_steps(np.array([0.0, 10.0, 10.0, np.nan, 100.0]), p)
    np.testing.assert_allclose(step, [14.0, 0.0, 15.0, 15.0])
    np.testing.assert_allclose(spread, [10.0, 10.0, 10.0, 10.0])
    step, spread = expected_steps(np.array([0.0, 100.0]), p)  # a long gap: a long step, loosely held
    assert step[0] == pytest.approx(140.0) and spread[0] == pytest.approx(70.0)
    f = follow_scores(np.array([[[14.0, 44.0, 200.0, np.nan]]]), np.array([14.0]), np.array([10.0]), 8.0)
    assert f[0, 0].tolist() == [0.0, -3.0, -np.inf, -np.inf]


# --- the decoder on synthetic candidates -------------------------------------------------------------

def candidates(points_per_photo, sims):
    """ids, sims, lat, lon of candidates given in metres; the database is every candidate in order."""
    xy = np.array(points_per_photo, dtype=float)  # (T, K, 2)
    T, K, _ = xy.shape
    lat, lon = latlon(xy.reshape(-1, 2))
    return np.arange(T * K).reshape(T, K), np.array(sims, dtype=float), lat.reshape(T, K), lon.reshape(T, K)


def test_decoys_far_away_lose_to_a_walk_in_order():
    # photos every 15 m along a street; the top candidate of every other photo is a look-alike far away
    # (the look-alikes hundreds of metres from each other: no walk joins them)
    T = 8
    pts = [[(15 * t, 0), (400 * (1 + t % 3), 300 * (t % 2))] for t in range(T)]
    sims = [[0.60, 0.70] if t % 2 else [0.60, 0.50] for t in range(T)]
    ids, s, lat, lon = candidates(pts, sims)
    d = decode(ids, s, lat, lon, np.full(T, np.nan), params(distance="euclidean"))
    assert d.choice.tolist() == [0] * T and not d.breaks.any()
    assert (d.confidence > 0.9).all()


def parallel_streets():
    """Two 100 m streets 20 m apart, joined only at their east end: 20 m across, 200 m on foot."""
    return street_nx({1: (0, 0), 2: (100, 0), 3: (0, 20), 4: (100, 20)}, [(1, 2), (3, 4), (2, 4)])


def test_walking_distance_keeps_the_route_on_its_street_where_the_straight_line_does_not():
    graph = StreetGraph.from_networkx(parallel_streets())
    T = 6
    pts = [[(5 + 15 * t, 0), (5 + 15 * t, 20)] for t in range(T)]  # the truth on the south street, a decoy across
    sims = [[0.6, 0.7] if t in (2, 3) else [0.6, 0.4] for t in range(T)]
    ids, s, lat, lon = candidates(pts, sims)
    walks = StreetWalks(graph, lat.ravel(), lon.ravel(), max_snap_m=5)
    times = np.full(T, np.nan)
    straight = decode(ids, s, lat, lon, times, params(distance="euclidean"))
    walking = decode(ids, s, lat, lon, times, params(distance="geodesic"), walks)
    assert straight.choice.tolist() == [0, 0, 1, 1, 0, 0]  # 25 m across is a plausible step
    assert walking.choice.tolist() == [0] * T  # a 175 m walk is not


def test_walking_distances_match_networkx():
    graph = StreetGraph.from_networkx(street_nx(
        {1: (0, 0), 2: (100, 0), 3: (0, 20), 4: (100, 20), 5: (50, 80)}, [(1, 2), (3, 4), (2, 4), (4, 5), (3, 5)]))
    rng = np.random.default_rng(0)
    pts = [[(rng.uniform(0, 100), rng.choice([0, 20])) for _ in range(3)] for _ in range(4)]
    ids, _, lat, lon = candidates(pts, np.zeros((4, 3)))
    walks = StreetWalks(graph, lat.ravel(), lon.ravel(), max_snap_m=5)
    got = walks.distances(ids, np.full(3, 1e6))
    H = spliced_networkx_graph(graph, snap_photos(graph, lat.ravel(), lon.ravel(), 5))
    for t, i, j in itertools.product(range(3), range(3), range(3)):
        want = nx.shortest_path_length(H, ("photo", int(ids[t, i])), ("photo", int(ids[t + 1, j])), weight="w")
        assert got[t, i, j] == pytest.approx(want, abs=1e-6)
    limited = walks.distances(ids, np.full(3, 50.0))
    assert np.all((limited == got) | (np.isinf(limited) & (got > 50)))
    # the street path joining two photos is as long as the walk between them
    line = walks.path([int(ids[0, 0]), int(ids[1, 0])], got[0, 0, :1])[0]
    walked = haversine_m(line[:-1, 0], line[:-1, 1], line[1:, 0], line[1:, 1]).sum()
    assert walked == pytest.approx(got[0, 0, 0], rel=5e-3)  # haversine's sphere vs the UTM plane


@pytest.mark.parametrize("distance", ["euclidean", "geodesic"])
def test_photos_from_two_cities_break_the_route(distance):
    # four photos walk one street, four more a street 3 km away that no walk joins: two segments
    graph = StreetGraph.from_networkx(street_nx({1: (0, 0), 2: (100, 0), 3: (3000, 0), 4: (3100, 0)}, [(1, 2), (3, 4)]))
    pts = [[(10 + 15 * t + 3000 * (t >= 4) - 60 * (t >= 4), 0), (90 - 15 * t + 3000 * (t >= 4), 0)] for t in range(8)]
    ids, s, lat, lon = candidates(pts, [[0.6, 0.5]] * 8)
    walks = StreetWalks(graph, lat.ravel(), lon.ravel(), max_snap_m=5) if distance == "geodesic" else None
    d = decode(ids, s, lat, lon, np.full(8, np.nan), params(distance=distance), walks)
    assert d.breaks.tolist() == [False] * 3 + [True] + [False] * 3
    assert d.segment.tolist() == [0] * 4 + [1] * 4 and d.choice.tolist() == [0] * 8


def test_a_photo_from_elsewhere_stands_alone_and_the_route_goes_on():
    pts = [[(15 * t, 0), (15 * t, 5)] if t != 3 else [(5000, 0), (5000, 400)] for t in range(7)]
    ids, s, lat, lon = candidates(pts, [[0.6, 0.5]] * 7)
    d = decode(ids, s, lat, lon, np.full(7, np.nan), params(distance="euclidean"))
    assert d.segment.tolist() == [0, 0, 0, 1, 2, 2, 2]
    # the photos either side are 30 m apart, still one walk had the odd photo been left out
    assert (d.choice[[0, 1, 2, 4, 5, 6]] == 0).all()


def test_confidence_is_low_where_the_route_cannot_tell():
    # the middle photo has two equally good candidates 40 m apart across the street's axis, both
    # a plausible step from its neighbours: about half the posterior each
    pts = [[(0, 0), (0, 0)], [(15, 20), (15, -20)], [(30, 0), (30, 0)]]
    ids, s, lat, lon = candidates(pts, [[0.6, 0.6]] * 3)
    d = decode(ids, s, lat, lon, np.full(3, np.nan), params(distance="euclidean"))
    assert d.confidence[1] == pytest.approx(0.5, abs=1e-6) and d.confidence[0] == pytest.approx(1.0)


def test_known_times_set_the_step():
    # with a 30 s gap a walker went about 42 m: the candidate 40 m on beats one 10 m on, which the
    # configured 15 m step would have preferred
    pts = [[(0, 0), (0, 0)], [(40, 0), (10, 0)]]
    ids, s, lat, lon = candidates(pts, [[0.6, 0.6], [0.6, 0.6]])
    p = params(distance="euclidean")
    assert decode(ids, s, lat, lon, np.array([0.0, 30.0]), p).choice[1] == 0
    assert decode(ids, s, lat, lon, np.array([np.nan, np.nan]), p).choice[1] == 1


def test_a_photo_without_candidates_is_refused():
    ids, s, lat, lon = candidates([[(0, 0)], [(10, 0)]], [[0.5], [0.5]])
    ids[1] = -1
    with pytest.raises(GeolocError, match="at least one candidate"):
        decode(ids, s, lat, lon, np.full(2, np.nan), params(distance="euclidean"))


def test_route_settings_are_checked():
    with pytest.raises(GeolocError, match="route.distance"):
        params(distance="manhattan")
    with pytest.raises(GeolocError, match="route.k"):
        params(k=0)


# --- which photos, in which order ----------------------------------------------------------------------

def photo(path, colour=(90, 90, 90), taken=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    Image.new("RGB", (40, 40), colour).save(path, exif=exif)
    return path


def test_capture_times_order_the_photos_whatever_their_names(tmp_path):
    files = [photo(tmp_path / f"img{i}.jpg", taken=f"2024:05:01 10:00:{s:02d}") for i, s in enumerate([30, 10, 20])]
    r = order_photos([(str(f), f) for f in files])
    assert [n for n, _ in r.sources] == [str(files[1]), str(files[2]), str(files[0])]
    assert r.order == "capture time" and r.seconds.tolist() == [0.0, 10.0, 20.0] and not r.notes


def test_photos_without_times_go_by_file_name_and_say_so(tmp_path):
    files = [photo(tmp_path / f"img{i}.jpg") for i in (10, 2, 1)]
    r = order_photos([(str(f), f) for f in files])
    assert [n.split("/")[-1] for n, _ in r.sources] == ["img1.jpg", "img2.jpg", "img10.jpg"]
    assert r.order == "file name" and "no capture time" in r.notes[0] and np.isnan(r.seconds).all()


def test_a_photo_listed_twice_is_located_once(tmp_path):
    a, b = photo(tmp_path / "a.jpg"), photo(tmp_path / "b.jpg")
    r = order_photos([(str(a), a), (str(b), b), (str(tmp_path / "." / "a.jpg"), tmp_path / "." / "a.jpg")])
    assert len(r.sources) == 2 and any("listed twice" in n for n in r.notes)


def test_a_csv_list_gives_dates_order_and_routes(tmp_path):
    for name in "abcd":
        photo(tmp_path / f"{name}.jpg")
    (tmp_path / "walk.csv").write_text("path,order,route\nd.jpg,2,x\nc.jpg,1,x\nb.jpg,2,y\na.jpg,1,y\n")
    sources, times, order, groups = read_route_list(tmp_path / "walk.csv")
    r = order_photos(sources, times, order, groups)
    assert [n.split("/")[-1] for n, _ in r.sources] == ["c.jpg", "d.jpg", "a.jpg", "b.jpg"]
    assert r.order == "the manifest's order column" and r.groups.tolist() == [0, 0, 1, 1]
    (tmp_path / "bad.csv").write_text("path,date\na.jpg,yesterday\n")
    with pytest.raises(GeolocError, match=r"bad.csv: row 2: 'yesterday' is not a date"):
        read_route_list(tmp_path / "bad.csv")


# --- camera walks ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def walk_renders(tmp_path_factory):
    from retrieval.synth.cameras import render_dataset
    from retrieval.synth.city import write_demo_city

    root = tmp_path_factory.mktemp("walks")
    osm = write_demo_city(root / "city.osm", seed=1, size_m=600)
    common = dict(n_train=12, n_test=2, size=24, seed=1, workers=1, write_graph=False)
    render_dataset(osm, root / "plain", **common)
    render_dataset(osm, root / "walks", n_routes=4, route_len=6, route_step=12.0, **common)
    return root


def test_walks_follow_the_streets_in_order_at_a_walking_pace(walk_renders):
    m = read_manifest(walk_renders / "walks" / "routes.csv")
    sources, times, order, groups = read_route_list(walk_renders / "walks" / "routes.csv")
    assert len(m) == 24 and m.date is not None and groups.tolist() == np.repeat(np.arange(4), 6).tolist()
    for r in range(4):
        rows = np.flatnonzero(groups == r)
        step = haversine_m(m.lat[rows[:-1]], m.lon[rows[:-1]], m.lat[rows[1:]], m.lon[rows[1:]])
        gap = np.diff(m.date[rows]).astype(float)
        # about 12 m apart (a turn cuts the corner; a pose against a wall moves a few metres on)
        assert np.all(step < 12 * 1.15 + 6) and 8 < np.median(step) < 14
        assert np.all(gap > 0) and 12 / 1.6 - 1 < np.median(gap) < 12 / 1.1 + 1  # seconds at 1.1-1.6 m/s
        # facing along the walk, give or take a few degrees (bearing of the next step vs heading)
        bearing = np.degrees(np.arctan2((m.lon[rows[1:]] - m.lon[rows[:-1]]) * np.cos(np.radians(m.lat[rows[0]])),
                                        m.lat[rows[1:]] - m.lat[rows[:-1]])) % 360
        off = np.abs((bearing - m.heading[rows[:-1]] + 180) % 360 - 180)
        assert np.median(off) < 15


def test_routes_leave_the_database_views_as_they_were(walk_renders):
    for name in ("train.csv", "test.csv"):
        assert (walk_renders / "plain" / name).read_text() == (walk_renders / "walks" / name).read_text()
    plain = json.loads((walk_renders / "plain" / "dataset.json").read_text())["cameras"]
    walks = json.loads((walk_renders / "walks" / "dataset.json").read_text())["cameras"]
    assert all(walks[k] == v for k, v in plain.items()) and sum(k.startswith("route_") for k in walks) == 24


# --- one tiny untrained run: Locator.locate_route and the CLI ---------------------------------------------

DB_X = [10.0 * i for i in range(1, 25)]  # 24 photos along one street, 10 m apart
FAR_X = [5000.0 + 10 * i for i in range(6)]  # and 6 in another town 5 km east, off the street graph


def noise(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import osmnx as ox

    from retrieval.learning.models import embedding_net
    from retrieval.answering.run_index import build_run_index

    root = tmp_path_factory.mktemp("route_run")
    rows = ["path,lat,lon"]
    for i, x in enumerate(DB_X + FAR_X):
        noise(root / "db" / f"{i:02d}.png", seed=i)
        lat, lon = latlon([(x, 0)])
        rows.append(f"{i:02d}.png,{lat[0]:.7f},{lon[0]:.7f}")
    (root / "db" / "train.csv").write_text("\n".join(rows) + "\n")
    ox.save_graphml(street_nx({1: (0, 0), 2: (130, 0), 3: (260, 0), 4: (130, 100)}, [(1, 2), (2, 3), (2, 4)]),
                    root / "db" / "streets.graphml")
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.embed_dim=16", "data.resize=36",
                             "data.image_size=32", "train.precision=fp32", "index.k=4", "index.vote=pool",
                             "index.place_mean_m=0", "route.k=6", f"data.train={root / 'db'}",
                             # an untrained network's similarities span 0.02 where a trained one's span ~0.3
                             "route.temperature=0.002"],
                      base={"name": "embedding"})
    prepare_run_dir(root / "run", cfg)
    torch.manual_seed(0)
    torch.save({"model": embedding_net("none", 16, arch="resnet18").state_dict()}, root / "run" / "best.pt")
    build_run_index(root / "run", cfg, db=read_manifest(root / "db" / "train.csv"))
    return root


@pytest.fixture(scope="module")
def loc(run):
    from retrieval.answering.locator import Locator

    return Locator.load(run / "run")


def copies(run, folder, ids, names):
    """Copies of database photos under other names: a walk whose true places are the database's."""
    for i, name in zip(ids, names):
        (run / folder).mkdir(exist_ok=True)
        shutil.copy(run / "db" / f"{i:02d}.png", run / folder / name)
    return run / folder


def assert_on_its_copy(pt, i):
    lat, lon = latlon([((DB_X + FAR_X)[i], 0)])
    assert pt.error is None and haversine_m(pt.lat, pt.lon, lat[0], lon[0]) < 0.5, pt


def test_a_walk_is_located_along_the_street_beside_its_single_answers(run, loc, tmp_path):
    from retrieval.reports.route_map import write_route

    walk = copies(run, "walk", range(3, 11), [f"q{n}.png" for n in range(1, 9)])
    r = loc.locate_route(walk)
    assert r.order == "file name" and r.distance == "geodesic" and len(r.paths) == 1
    for pt, i in zip(r.points, range(3, 11)):
        assert_on_its_copy(pt, i)
        assert pt.segment == 0 and 0 < pt.confidence <= 1
    singles = loc.locate(sorted(walk.iterdir()))
    assert [(pt.single.lat, pt.single.lon) for pt in r.points] == [(a.lat, a.lon) for a in singles]
    geojson, png = write_route(r, tmp_path / "walk.geojson")
    g = json.loads(geojson.read_text())
    kinds = [f["properties"]["kind"] for f in g["features"]]
    assert kinds.count("photo") == 8 and kinds.count("street path") == 1
    line = np.array(g["features"][-1]["geometry"]["coordinates"])
    assert haversine_m(line[:-1, 1], line[:-1, 0], line[1:, 1], line[1:, 0]).sum() == pytest.approx(70, abs=1)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_one_photo_is_its_single_answer_and_says_so(run, loc):
    r = loc.locate_route(copies(run, "one", [5], ["only.png"]) / "only.png")
    (pt,) = r.points
    assert (pt.lat, pt.lon, pt.confidence) == (pt.single.lat, pt.single.lon, pt.single.confidence)
    assert any("only one photo" in n for n in r.notes) and len(r.paths) == 1


def test_an_unreadable_photo_is_skipped_and_the_route_goes_on(run, loc):
    walk = copies(run, "broken", [4, 5, 7, 8], ["a1.png", "a2.png", "a4.png", "a5.png"])
    (walk / "a3.png").write_bytes(b"not an image")
    r = loc.locate_route(walk)
    assert [pt.error is not None for pt in r.points] == [False, False, True, False, False]
    assert "a3.png" in r.points[2].error and any(n.startswith("skipped: ") and "a3.png" in n for n in r.notes)
    for pt, i in zip([r.points[k] for k in (0, 1, 3, 4)], [4, 5, 7, 8]):
        assert_on_its_copy(pt, i)
        assert pt.segment == 0


def test_a_photo_given_twice_is_located_once(run, loc):
    walk = copies(run, "twice", [4, 5, 6], ["b1.png", "b2.png", "b3.png"])
    r = loc.locate_route([walk, walk / "b2.png"])
    assert len(r.points) == 3 and any("listed twice" in n for n in r.notes)


def test_photos_from_two_towns_break_the_route(run, loc):
    walk = copies(run, "towns", [4, 5, 6, 25, 26, 27], ["c1.png", "c2.png", "c3.png", "c4.png", "c5.png", "c6.png"])
    r = loc.locate_route(walk)
    assert [pt.segment for pt in r.points] == [0, 0, 0, 1, 1, 1] and len(r.paths) == 2
    for pt, i in zip(r.points, [4, 5, 6, 25, 26, 27]):
        assert_on_its_copy(pt, i)
    assert any("breaks between" in n and "c3.png" in n and "c4.png" in n for n in r.notes)
    assert any("6 of 30 database photos lie more than" in n for n in r.notes)


def test_straight_line_steps_need_no_street_graph_and_geodesic_ones_say_how_to_get_one(run, loc):
    import dataclasses

    cfg = load_config(run / "run" / "config.yaml", [f"data.train={run / 'elsewhere'}"])
    bare = dataclasses.replace(loc, cfg=cfg)
    with pytest.raises(GeolocError, match="--streets.*--distance euclidean"):
        bare.locate_route(copies(run, "walk2", [3, 4], ["d1.png", "d2.png"]))
    cfg.route.distance = "euclidean"
    r = bare.locate_route(run / "walk2")
    assert r.distance == "euclidean" and r.graph is None
    for pt, i in zip(r.points, [3, 4]):
        assert_on_its_copy(pt, i)


def test_query_route_prints_each_photo_and_writes_the_map(run, tmp_path):
    walk = copies(run, "cli", [6, 7, 8], ["e1.png", "e2.png", "e3.png"])
    (walk / "e9.png").write_bytes(b"broken")
    out = subprocess.run([sys.executable, "-m", "retrieval.cli", "query", "--run", str(run / "run"), "--route",
                          str(walk), "--route-out", str(tmp_path / "r.geojson")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr  # a photo could not be read: said, and the status says so
    lines = out.stdout.splitlines()
    assert "ordered by file name, geodesic steps, 1 segment(s)" in lines[0]
    assert "e1.png  route" in lines[1] and "single" in lines[1] and "e9.png: skipped" in lines[4]
    assert "note: skipped: " in out.stderr and "e9.png" in out.stderr and (tmp_path / "r.png").is_file()
    assert len(json.loads((tmp_path / "r.geojson").read_text())["skipped"]) == 1


def test_a_map_of_many_segments_names_them_in_its_title_not_a_legend(run, loc, tmp_path, monkeypatch):
    """60 routes in one CSV drew a 61-entry legend over the map."""
    from matplotlib.axes import Axes

    from retrieval.reports.route_map import MAX_LEGEND, route_png

    r = loc.locate_route(copies(run, "many", range(3, 7), [f"m{n}.png" for n in range(4)]))
    legends, titles = [], []
    monkeypatch.setattr(Axes, "legend", lambda self, *a, **kw: legends.append(len(self.get_legend_handles_labels()[1])))
    real_title = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, text, **kw: (titles.append(text), real_title(self, text, **kw)))
    r.paths = [r.paths[0]] * (MAX_LEGEND + 1)
    assert route_png(r, tmp_path / "many.png").read_bytes()[:4] == b"\x89PNG"
    assert legends == [] and f"{MAX_LEGEND + 1} segments (colours repeat)" in titles[-1]
    r.paths = r.paths[:2]
    route_png(r, tmp_path / "two.png")
    assert legends == [2] and "segments" not in titles[-1]


def test_a_jump_the_route_kept_is_named():
    """Three photos at one corner and three at the far one, kept on one route: the note says so and why."""
    from retrieval.answering.route import kept_jumps

    lat, lon = latlon([(x, 0) for x in (0, 10, 20, 1000, 1010, 1020)])
    step, spread = np.full(5, 15.0), np.full(5, 10.0)
    none = np.zeros(5, bool)
    (t, d, reach), = kept_jumps(lat, lon, none, step, spread, 8.0)
    assert t == 2 and d == pytest.approx(980, rel=0.01) and reach == 95
    assert kept_jumps(lat, lon, np.eye(5, dtype=bool)[2], step, spread, 8.0) == []  # it broke there: said already
    # one wrong answer in a walk is what the route is for, not a jump
    lat, lon = latlon([(x, 0) for x in (0, 10, 900, 30, 40, 50)])
    assert kept_jumps(lat, lon, none, step, spread, 8.0) == []
