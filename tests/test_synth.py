"""The OSM street-view renderer: reader, demo city, ray caster geometry, camera placement, datasets."""
import bz2
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Point, box

from retrieval import GeolocError
from retrieval.synth.cameras import CLEARANCE_M, TREE_CLEARANCE_M, render_dataset, sample_views
from retrieval.synth.city import write_demo_city
from retrieval.synth.osm import building_height, check_osm_xml, load_city, parse_length_m
from retrieval.synth.render import Camera, Renderer, sample_look
from retrieval.synth.scene import build_world, world_from_city
from retrieval.synth.sheet import contact_sheet


@pytest.fixture(scope="module")
def small_city(tmp_path_factory):
    path = write_demo_city(tmp_path_factory.mktemp("city") / "city.osm", seed=1, size_m=500)
    return path, load_city(path)


@pytest.fixture(scope="module")
def small_world(small_city):
    return world_from_city(small_city[1])


def test_demo_city_parses_back_connected_with_buildings_and_river(small_city):
    import networkx as nx
    import osmnx as ox

    path, city = small_city
    assert nx.is_weakly_connected(city.graph)
    assert city.graph.number_of_edges() > 50
    assert len(city.buildings) > 100 and city.water and city.green
    heights = city.buildings["height"].to_numpy()
    assert heights.min() >= 3.0 and heights.max() > 25.0  # low old town and downtown towers
    assert city.buildings["building:colour"].notna().all()
    assert city.streets["bridge"].eq("yes").sum() >= 2
    # OSMnx reads the buildings on its own too.
    feats = ox.features_from_xml(path, tags={"building": True})
    assert len(feats) == len(city.buildings)
    # No building stands on a street centre line.
    streets = city.streets.geometry.union_all()
    assert not city.buildings.geometry.buffer(-0.2).intersects(streets).any()


def test_demo_city_is_deterministic(tmp_path):
    a = write_demo_city(tmp_path / "a.osm", seed=3, size_m=450).read_bytes()
    b = write_demo_city(tmp_path / "b.osm.bz2", seed=3, size_m=450).read_bytes()
    assert bz2.decompress(b) == a
    assert write_demo_city(tmp_path / "c.osm", seed=4, size_m=450).read_bytes() != a


def test_parse_length_units():
    assert parse_length_m("12") == 12.0
    assert parse_length_m("12.5 m") == 12.5
    assert parse_length_m("40 ft") == pytest.approx(12.192)
    assert parse_length_m("12'6\"") == pytest.approx(3.81)
    assert parse_length_m("7,5") == 7.5
    assert parse_length_m("tall") is None and parse_length_m(None) is None
    assert building_height({"building:levels": "5"}, "w1") == (5 * 3.2 + 1.0, 0.0)
    assert building_height({"height": "30 m", "building:levels": "5", "min_height": "6"}, "w1") == (30.0, 6.0)
    h1, _ = building_height({"building": "house"}, "w1")
    assert building_height({"building": "house"}, "w1")[0] == h1 and 3 < h1 < 12


def _box_world(depth_m: float, half_width: float, height: float):
    bld = box(-half_width, depth_m, half_width, depth_m + 10)
    street = LineString([(-100, -5), (100, -5)])
    return build_world([(bld, {"osm_id": "way/1", "height": height, "min_height": 0.0, "building": "yes"})],
                       [(street, "residential", 7.0, False)])


def _pixel_rays(cam: Camera):
    """Independent pinhole model: unit ray of every pixel centre in world axes (x east, y north, z up)."""
    yaw, pitch, roll = (math.radians(a) for a in (cam.heading, cam.pitch, cam.roll))
    f = np.array([math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch)])
    r0 = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
    u0 = np.cross(r0, f)
    r = math.cos(roll) * r0 + math.sin(roll) * u0
    u = np.cross(r, f)
    t = math.tan(math.radians(cam.fov) / 2)
    j = (np.arange(cam.width) + 0.5) / cam.width * 2 - 1
    i = 1 - (np.arange(cam.height) + 0.5) / cam.height * 2
    px, py = np.meshgrid(j * t, i * t * cam.height / cam.width)
    d = f + px[..., None] * r + py[..., None] * u
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


@pytest.mark.parametrize("pitch,roll", [(0.0, 0.0), (3.0, -2.5)])
def test_depth_of_a_box_building_matches_geometry(pitch, roll):
    D, half, H = 20.0, 8.0, 12.0
    world = _box_world(D, half, H)
    ox_, oy_ = -world.origin[0], -world.origin[1]  # the scene's coordinates of the world point (0, 0)
    cam = Camera(x=ox_, y=oy_, heading=0.0, pitch=pitch, roll=roll, eye=2.5, fov=90.0, width=64, height=64)
    look = sample_look(np.random.default_rng(0))
    _, depth = Renderer(world).render(cam, look, with_depth=True)
    d = _pixel_rays(cam)
    # Front face y = D: ray parameter where it reaches the plane; a hit if inside the face rectangle.
    s = D / np.where(d[..., 1] > 1e-9, d[..., 1], np.nan)
    x, z = s * d[..., 0], 2.5 + s * d[..., 2]
    on_face = (np.abs(x) <= half) & (z >= 0) & (z <= H)
    ground = ~on_face & (d[..., 2] < 0)
    expected = np.where(on_face, s, np.where(ground, 2.5 / -np.where(ground, d[..., 2], -1), np.inf))
    # The silhouette agrees everywhere except, at most, a pixel along the box's edges.
    with np.errstate(invalid="ignore"):  # inf - inf where both say sky
        rendered_face = np.isfinite(depth) & (np.abs(depth - expected) < 1e-3 * expected) & on_face
    from scipy.ndimage import binary_dilation, binary_erosion

    core = binary_erosion(on_face)
    assert rendered_face[core].all()
    assert not (np.abs(depth - s) < 1e-3 * s)[~binary_dilation(on_face) & np.isfinite(s)].any()
    # Depth on the face and on the open ground matches the geometry.
    np.testing.assert_allclose(depth[core], expected[core], rtol=1e-4)
    open_ground = ground & ~binary_dilation(on_face)
    assert open_ground.sum() > 500
    np.testing.assert_allclose(depth[open_ground], expected[open_ground], rtol=1e-3)
    sky = ~on_face & (d[..., 2] > 0)
    assert np.isinf(depth[sky & ~binary_dilation(on_face)]).all()


def test_light_changes_pixels_not_geometry():
    world = _box_world(15.0, 6.0, 9.0)
    cam = Camera(x=-world.origin[0], y=-world.origin[1], heading=10.0, width=48, height=48)
    rend = Renderer(world)
    a, da = rend.render(cam, sample_look(np.random.default_rng(1), "day"), with_depth=True)
    b, db = rend.render(cam, sample_look(np.random.default_rng(2), "dusk"), with_depth=True)
    np.testing.assert_array_equal(da, db)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    # The facade is textured (windows, floors), not a flat colour.
    face = a[15:27, 16:32].reshape(-1, 3).astype(float)
    assert face.std(axis=0).max() > 8


def test_cameras_never_inside_or_against_a_building(small_world):
    for split, n in (("train", 150), ("test", 150)):
        views = sample_views(small_world, split, n, None, seed=5)
        assert len(views) == n
        polys = np.array(small_world.footprint_polys, dtype=object)
        for v in views:
            p = Point(v.camera.x, v.camera.y)
            gap = shapely.distance(polys, p).min()  # brute force over every building
            assert gap >= CLEARANCE_M * 0.999, f"{v.name} is {gap:.2f} m from a building"
            assert np.hypot(*(small_world.trees[:, :2] - [p.x, p.y]).T).min() >= TREE_CLEARANCE_M
    headings = np.array([v.camera.heading for v in sample_views(small_world, "test", 200, None, seed=5)])
    assert np.histogram(headings, bins=4, range=(0, 360))[0].min() > 25  # spread over all 360 degrees


def test_training_cameras_follow_spacing(small_world):
    from retrieval.synth.cameras import Streets

    length = Streets(small_world).length
    views = sample_views(small_world, "train", None, 25.0, seed=0)
    assert abs(len(views) - length / 25.0) <= 2
    assert len(sample_views(small_world, "train", 40, None, seed=0)) == 40


def test_render_dataset_is_deterministic_parallel_and_resumes(small_city, tmp_path):
    from retrieval.data.splits import load_splits

    path, _ = small_city
    a = render_dataset(path, tmp_path / "a", n_train=10, n_test=4, size=32, seed=2, workers=2)
    b = render_dataset(path, tmp_path / "b", n_train=10, n_test=4, size=32, seed=2, workers=1)
    assert a["rendered"] == b["rendered"] == 14
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*")
                   if p.suffix in (".jpg", ".csv"))
    assert len(files) == 16
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    victim = tmp_path / "a" / "images" / "test_00002.jpg"
    before = victim.read_bytes()
    victim.unlink()
    again = render_dataset(path, tmp_path / "a", n_train=10, n_test=4, size=32, seed=2, workers=2)
    assert again["rendered"] == 1 and victim.read_bytes() == before
    splits = load_splits(tmp_path / "a", val_fraction=0.0)
    assert len(splits["train"]) == 10 and len(splits["test"]) == 4
    assert splits["test"].heading is not None and np.isfinite(splits["test"].heading).all()
    info = (tmp_path / "a" / "dataset.json").read_text()
    assert "no OpenStreetMap data" in info and (tmp_path / "a" / "streets.graphml").is_file()
    with pytest.raises(GeolocError, match="other settings"):
        render_dataset(path, tmp_path / "a", n_train=11, n_test=4, size=32, seed=2, workers=1)
    c = render_dataset(path, tmp_path / "c", n_train=10, n_test=4, size=32, seed=3, workers=1)
    assert c["rendered"] == 14
    assert (tmp_path / "c" / "train.csv").read_bytes() != (tmp_path / "a" / "train.csv").read_bytes()
    sheet = contact_sheet(tmp_path / "a", tmp_path / "sheet.png", n=6, cols=3, thumb=40)
    from PIL import Image

    assert Image.open(sheet).size == (120, 2 * (40 + 28))


OSM_HEAD = "<?xml version='1.0' encoding='UTF-8'?>\n<osm version=\"0.6\">\n"
NODES = "".join(f'<node id="{i}" lat="{51.5 + i * 1e-4}" lon="{-0.1 + (i % 2) * 1e-4}"/>\n' for i in range(1, 9))
STREET = '<way id="1"><nd ref="1"/><nd ref="3"/><nd ref="5"/><tag k="highway" v="residential"/></way>\n'
BUILDING = ('<way id="2"><nd ref="2"/><nd ref="4"/><nd ref="6"/><nd ref="8"/><nd ref="2"/>'
            '<tag k="building" v="yes"/></way>\n')


def test_panorama_headings_and_validation_views(small_city, tmp_path):
    import csv

    path = small_city[0] if isinstance(small_city, tuple) else small_city
    info = render_dataset(path, tmp_path / "p", n_train=5, n_test=3, n_val=2, size=16, seed=1, workers=1,
                          headings=4, write_graph=False)
    assert (info["train"], info["val"], info["test"]) == (20, 2, 3)
    with open(tmp_path / "p" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for k in range(5):  # a position's four views stand together, 90 degrees apart
        pano = rows[4 * k:4 * k + 4]
        assert len({(r["lat"], r["lon"]) for r in pano}) == 1
        h = np.array([float(r["heading"]) for r in pano])
        assert np.allclose(np.diff(np.unwrap(np.radians(h))) % (2 * np.pi), np.pi / 2, atol=1e-6)
    assert len({(r["lat"], r["lon"]) for r in rows}) == 5
    assert (tmp_path / "p" / "val.csv").read_text().count("\n") == 3


@pytest.mark.parametrize("body,message", [
    (NODES + STREET + BUILDING, None),
    (NODES + STREET + BUILDING[:40], "malformed or truncated"),
    (NODES + BUILDING, "no highway"),
    (NODES + STREET, "no building"),
    (NODES.replace('lat="51.5001"', 'lat="95.0"') + STREET + BUILDING, "node 1: coordinate .* out of range"),
    (NODES + '<node id="99" lat="0.0" lon="0.0"/>\n' + STREET + BUILDING, "node 99 .* outside the extract"),
    (NODES.replace(' lat="51.5001"', "") + STREET + BUILDING, "node 1: lat/lon missing"),
])
def test_bad_osm_input_is_one_clear_error(tmp_path, body, message):
    path = tmp_path / "bad.osm"
    tail = "" if message == "malformed or truncated" else "</osm>\n"
    path.write_text(OSM_HEAD + body + tail)
    if message is None:
        assert check_osm_xml(path)["highways"] == 1
        return
    with pytest.raises(GeolocError, match=message):
        check_osm_xml(path)


def test_not_osm_and_truncated_bz2(tmp_path, small_city):
    html = tmp_path / "page.osm"
    html.write_text("<html><body>not a map</body></html>")
    with pytest.raises(GeolocError, match="not OSM XML"):
        check_osm_xml(html)
    cut = tmp_path / "cut.osm.bz2"
    cut.write_bytes(bz2.compress(small_city[0].read_bytes())[:20000])
    with pytest.raises(GeolocError, match=re.escape(str(cut))):
        load_city(cut)


def _way_ids(G) -> set:
    """The OSM ways behind a graph's edges (a simplified edge lists every way it merged)."""
    ids = set()
    for *_, d in G.edges(keys=True, data=True):
        ids.update(d["osmid"] if isinstance(d["osmid"], list) else [d["osmid"]])
    return ids


def test_renderer_and_street_graph_take_the_same_ways_for_streets(small_city, tmp_path):
    from retrieval.data.streets import load_graph

    path, city = small_city
    assert _way_ids(city.graph) == _way_ids(load_graph(path).graph)
    # Three connected streets, and ways that are no streets touching them: a pedestrian square's outline
    # (area=yes), a platform, stops, a lift, a race track, and roads planned or being built.
    xy = {1: (0, 0), 2: (200, 0), 3: (200, 100), 4: (0, 100), 5: (260, 0), 6: (260, 60), 7: (200, 60),
          8: (300, 100), 9: (0, 300), 20: (50, 20), 21: (80, 20), 22: (80, 40), 23: (50, 40)}
    nodes = "".join(f'<node id="{n}" lat="{44.0 + y / 111_320:.7f}" lon="{-30.0 + x / 80_000:.7f}"/>\n'
                    for n, (x, y) in xy.items())
    ways = {10: ((1, 2), "highway=residential"), 11: ((2, 3), "highway=footway"), 12: ((1, 4), "highway=service"),
            13: ((2, 5, 6, 7, 2), "highway=pedestrian area=yes"), 14: ((3, 8), "highway=platform"),
            15: ((4, 9), "highway=planned"), 16: ((3, 9), "highway=construction"), 17: ((8, 9), "highway=bus_stop"),
            18: ((5, 8), "highway=elevator"), 19: ((6, 8), "highway=raceway"),
            30: ((20, 21, 22, 23, 20), "building=yes")}
    body = "".join(f'<way id="{w}">' + "".join(f'<nd ref="{r}"/>' for r in refs)
                   + "".join('<tag k="{}" v="{}"/>'.format(*kv.split("=")) for kv in tags.split()) + "</way>\n"
                   for w, (refs, tags) in ways.items())
    tiny = tmp_path / "tiny.osm"
    tiny.write_text(OSM_HEAD + nodes + body + "</osm>\n")
    assert check_osm_xml(tiny)["highways"] == 3
    assert _way_ids(load_city(tiny).graph) == _way_ids(load_graph(tiny).graph) == {10, 11, 12}


def test_cli_reports_bad_osm_in_one_line(tmp_path):
    bad = tmp_path / "bad.osm"
    bad.write_text(OSM_HEAD + NODES + BUILDING + "</osm>\n")
    out = subprocess.run([sys.executable, "-c", "from retrieval.cli import main; main()", "synth", "render",
                          "--osm", str(bad), "--out", str(tmp_path / "out"), "--train", "2", "--test", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {bad}: no highway ways: the extract has no streets "
                                               "to place cameras on"]


def test_real_extract_renders(shared_data, tmp_path):
    osm = shared_data / "osm" / "monaco.osm.bz2"
    info = render_dataset(osm, tmp_path / "mc", n_train=6, n_test=2, size=32, seed=0, workers=1,
                          write_graph=False)
    assert info["train"] == 6 and info["test"] == 2
    from retrieval.data.manifests import read_manifest

    m = read_manifest(tmp_path / "mc" / "train.csv", check_images=True)
    # Inside Monaco's extract (its ways reach a little past the core box).
    assert ((m.lat > 43.715) & (m.lat < 43.76) & (m.lon > 7.40) & (m.lon < 7.46)).all()
    assert "OpenStreetMap contributors" in (tmp_path / "mc" / "ATTRIBUTION.txt").read_text()
