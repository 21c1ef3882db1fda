
import networkx as nx
import numpy as np
import pytest
from shapely.geometry import LineString

from retrieval import GeolocError
from retrieval.geo import LocalProjection
from retrieval.data.streets import (StreetGraph, euclidean_neighbours, geodesic_neighbours, load_graph, photo_distances,
                               photos_along_streets, snap_photos, spliced_networkx_graph)
from tests.conftest import SHARED_DATA

ORIGIN = LocalProjection(51.5138, -0.0984)  # St Paul's; the hand-built graphs are drawn in metres around it
X0, Y0 = ORIGIN.to_xy(51.5138, -0.0984)


def latlon(points):
    x, y = np.array(points, dtype=float).T
    return ORIGIN.to_latlon(X0 + x, Y0 + y)


def hand_graph(nodes: dict, edges: list) -> StreetGraph:
    """A lat/lon OSMnx-style graph from node positions in metres and (u, v[, via-points]) edges."""
    G = nx.MultiDiGraph(crs="epsg:4326")
    for n, xy in nodes.items():
        lat, lon = latlon([xy])
        G.add_node(n, x=float(lon[0]), y=float(lat[0]))
    for i, (u, v, *via) in enumerate(edges):
        pts = [nodes[u], *(via[0] if via else []), nodes[v]]
        lat, lon = latlon(pts)
        attrs = {"osmid": i, "highway": "residential"}
        if via:
            attrs["geometry"] = LineString(np.column_stack([lon, lat]))
        G.add_edge(u, v, **attrs)
    return StreetGraph.from_networkx(G)


def test_parallel_streets_joined_at_one_end():
    # two 100 m streets 20 m apart, joined only at their east end: straight line 20 m, walking 210 m
    g = hand_graph({1: (0, 0), 2: (100, 0), 3: (0, 20), 4: (100, 20)}, [(1, 2), (3, 4), (2, 4)])
    lat, lon = latlon([(5, 0), (5, 20), (40, 0)])
    snap = snap_photos(g, lat, lon, max_snap_m=5)
    geo = geodesic_neighbours(g, snap, radius_m=500, progress=False).toarray()
    euc = euclidean_neighbours(lat, lon, radius_m=500).toarray()
    assert geo[0, 1] == pytest.approx(95 + 20 + 95, abs=0.05)
    assert euc[0, 1] == pytest.approx(20, abs=0.05)
    assert geo[0, 2] == pytest.approx(35, abs=0.05)  # same edge: the offset difference
    assert np.allclose(geo, geo.T)
    # within 100 m the two photos across the gap are neighbours in a straight line only
    near_geo = geodesic_neighbours(g, snap, radius_m=100, progress=False)
    near_euc = euclidean_neighbours(lat, lon, radius_m=100)
    assert 1 not in near_geo[0].indices and 1 in near_euc[0].indices


def test_same_edge_takes_a_shortcut_when_shorter():
    # a 300 m U-shaped street whose ends are also joined by a 20 m lane
    g = hand_graph({1: (0, 0), 2: (20, 0)}, [(1, 2, [(0, 140), (20, 140)]), (1, 2)])
    lat, lon = latlon([(0, 10), (20, 10)])  # 10 m up each arm of the U
    geo = geodesic_neighbours(g, snap_photos(g, lat, lon, 5), radius_m=1000, progress=False)
    assert geo[0, 1] == pytest.approx(10 + 20 + 10, abs=0.05)  # not 280 m around the U


def test_coincident_photos_are_explicit_zero_neighbours():
    g = hand_graph({1: (0, 0), 2: (100, 0)}, [(1, 2)])
    lat, lon = latlon([(30, 1), (30, 1), (0, 0)])  # two at one spot, one on a node
    for d in (geodesic_neighbours(g, snap_photos(g, lat, lon, 5), 50, progress=False),
              euclidean_neighbours(lat, lon, 50)):
        rows = {i: dict(zip(d[i].indices, d[i].data)) for i in range(3)}
        assert rows[0] == pytest.approx({0: 0.0, 1: 0.0, 2: 30.0}, abs=0.05)
        assert rows[2] == pytest.approx({0: 30.0, 1: 30.0, 2: 0.0}, abs=0.05)


def test_snap_follows_the_polyline_not_the_chord():
    # an L-shaped simplified edge: (0,0) -> (100,0) -> (100,100); the chord runs 35 m from the photo
    g = hand_graph({1: (0, 0), 2: (100, 100), 3: (-50, 0)}, [(1, 2, [(100, 0)]), (3, 1)])
    lat, lon = latlon([(103, 50), (-20, 2)])
    snap = snap_photos(g, lat, lon, max_snap_m=10)
    assert snap.excluded == 0
    (u, v, _), = [g.edge_key[snap.edge[0]]]
    assert {u, v} == {1, 2}
    start = g.nodes[g.edge_u[snap.edge[0]]]
    expect = 150.0 if start == 1 else 50.0  # measured from the end the geometry starts at
    assert snap.offset_m[0] == pytest.approx(expect, abs=0.1)
    assert snap.distance_m[0] == pytest.approx(3.0, abs=0.05)
    assert g.length_m[snap.edge[0]] == pytest.approx(200.0, abs=0.01)


def test_far_photos_are_warned_about_and_excluded():
    g = hand_graph({1: (0, 0), 2: (100, 0)}, [(1, 2)])
    lat, lon = latlon([(10, 5), (50, 80), (90, -2), (50, -300)])
    with pytest.warns(UserWarning, match=r"2 of 4 photos are more than 30 m from any street.*#1, #3"):
        snap = snap_photos(g, lat, lon, max_snap_m=30)
    assert snap.kept.tolist() == [True, False, True, False] and snap.excluded == 2
    d = geodesic_neighbours(g, snap, 1000, progress=False)
    assert np.diff(d.indptr).tolist() == [2, 0, 2, 0]  # excluded photos have empty rows
    e = euclidean_neighbours(lat, lon, 1000, keep=snap.kept)
    assert np.diff(e.indptr).tolist() == [2, 0, 2, 0]


def test_bad_sources_fail_with_one_line(tmp_path, monkeypatch):
    import osmnx as ox

    with pytest.raises(GeolocError, match="street graph file not found"):
        load_graph(tmp_path / "nowhere.osm")
    with pytest.raises(GeolocError, match="must be .osm"):
        load_graph(tmp_path / "streets.shp")
    bad = tmp_path / "broken.osm.bz2"
    bad.write_bytes(b"not bzip2 at all")
    with pytest.raises(GeolocError, match="broken.osm.bz2: cannot read street graph"):
        load_graph(bad)
    with pytest.raises(GeolocError, match="expected bbox:lon_min"):
        load_graph("bbox:1,2,3")

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /api/interpreter\nsecond line")

    monkeypatch.setattr(ox, "graph_from_place", offline)
    with pytest.raises(GeolocError) as err:
        load_graph("place:City of London, UK")
    assert "cannot download the street graph for 'place:City of London, UK'" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(GeolocError, match="need a street graph"):
        photo_distances([51.5], [-0.1], 100, positives="geodesic")


def test_osm_file_keeps_streets_only(tmp_path):
    # an L-shaped street through a bend node, a building outline touching it and a proposed road
    pts = {1: (0, 0), 2: (100, 0), 3: (100, 60), 4: (40, 5), 5: (60, 5), 6: (60, 20), 7: (0, 200)}
    lat, lon = latlon(list(pts.values()))
    nodes = "".join(f'<node id="{n}" lat="{a:.8f}" lon="{o:.8f}" version="1"/>' for n, a, o in zip(pts, lat, lon))
    ways = ('<way id="10"><nd ref="1"/><nd ref="2"/><nd ref="3"/><tag k="highway" v="residential"/></way>'
            '<way id="11"><nd ref="4"/><nd ref="5"/><nd ref="6"/><nd ref="4"/><tag k="building" v="yes"/></way>'
            '<way id="12"><nd ref="3"/><nd ref="7"/><tag k="highway" v="proposed"/></way>')
    path = tmp_path / "tiny.osm"
    path.write_text(f'<?xml version="1.0"?><osm version="0.6">{nodes}{ways}</osm>')
    g = load_graph(path)
    assert len(g.length_m) == 1 and set(g.nodes.tolist()) == {1, 3}  # bend node 2 simplified away
    assert g.length_m[0] == pytest.approx(160.0, abs=0.05)
    plat, plon = latlon([(10, 3), (100, 50), (50, 150)])  # the last one is only near the proposed road
    with pytest.warns(UserWarning, match="1 of 3 photos"):
        geo = photo_distances(plat, plon, 300, "geodesic", streets=path, max_snap_m=20, progress=False)
    with pytest.warns(UserWarning, match="1 of 3 photos"):
        euc = photo_distances(plat, plon, 300, "euclidean", streets=path, max_snap_m=20)
    assert geo[0, 1] == pytest.approx(90 + 50, abs=0.05)  # round the corner
    assert euc[0, 1] == pytest.approx(np.hypot(90, 47), abs=0.05)
    assert np.diff(geo.indptr).tolist() == np.diff(euc.indptr).tolist() == [2, 2, 0]  # same photos


# --- a real city ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def monaco():
    path = SHARED_DATA / "osm" / "monaco.osm.bz2"
    if not path.is_file():
        pytest.skip(f"{path} is absent (only the developers' machines have ../shared)")
    return load_graph(path)


def photos_along(g: StreetGraph, n: int, seed: int = 0, jitter_m: float = 6.0):
    return photos_along_streets(g, n, np.random.default_rng(seed), jitter_m)


def test_geodesic_matches_networkx_on_a_real_city(monaco):
    lat, lon = photos_along(monaco, 1500)
    snap = snap_photos(monaco, lat, lon, max_snap_m=30)
    assert snap.excluded == 0
    radius = 250.0
    d = geodesic_neighbours(monaco, snap, radius, progress=False)
    H = spliced_networkx_graph(monaco, snap)
    rng = np.random.default_rng(1)
    total = 0
    for p in rng.choice(len(lat), 60, replace=False):
        ref = nx.single_source_dijkstra_path_length(H, ("photo", int(p)), cutoff=radius, weight="w")
        ref = {n[1]: v for n, v in ref.items() if isinstance(n, tuple)}
        ours = dict(zip(d[p].indices.tolist(), d[p].data))
        assert set(ours) == set(ref)
        assert np.allclose([ours[q] for q in ref], [ref[q] for q in ref], atol=1e-6)
        total += len(ref)
    assert total > 60 * 20  # the sets are not trivially small
    # random pairs, near and far, against nx.shortest_path_length
    for p, q in rng.choice(len(lat), (40, 2)):
        try:
            ref = nx.shortest_path_length(H, ("photo", int(p)), ("photo", int(q)), weight="w")
        except nx.NetworkXNoPath:
            ref = np.inf
        if ref <= radius:
            assert q in d[p].indices and d[p, q] == pytest.approx(ref, abs=1e-6)
        else:
            assert q not in d[p].indices
    assert abs(d - d.T).max() < 1e-6


def test_euclidean_matches_brute_force(monaco):
    lat, lon = photos_along(monaco, 800, seed=2)
    d = euclidean_neighbours(lat, lon, 120.0, projection=monaco.projection)
    x, y = monaco.projection.to_xy(lat, lon)
    full = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    r, c = np.nonzero(full <= 120.0)
    assert d.nnz == len(r)
    assert np.allclose(np.asarray(d[r, c]).ravel(), full[r, c])
    # walking is never shorter than the straight line
    snap = snap_photos(monaco, lat, lon, 30)
    geo = geodesic_neighbours(monaco, snap, 120.0, progress=False).tocoo()
    straight = full[geo.row, geo.col]
    along = np.abs(snap.distance_m[geo.row]) + np.abs(snap.distance_m[geo.col])
    assert np.all(geo.data + along >= straight - 1e-6)


def test_real_graph_is_streets_only_and_projected(monaco):
    assert monaco.crs.to_epsg() == 32632  # UTM 32N, as LocalProjection picks for Monaco
    assert 1000 < len(monaco.nodes) < 5000  # buildings and coastline ways dropped
    hw = {h for *_, d in monaco.graph.edges(keys=True, data=True)
          for h in (d["highway"] if isinstance(d["highway"], list) else [d["highway"]])}
    assert "footway" in hw and "residential" in hw
    # UTM polyline lengths agree with OSMnx's spherical great-circle lengths to the sphere's error
    osmnx_len = np.array([d["length"] for *_, d in monaco.graph.edges(keys=True, data=True)])
    assert np.allclose(monaco.length_m, osmnx_len, rtol=4e-3, atol=0.01)
    assert np.median(monaco.length_m / osmnx_len) == pytest.approx(1.0, abs=3e-3)
