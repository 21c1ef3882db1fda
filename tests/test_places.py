"""Place means of database descriptors (retrieval.answering.places), by hand, and in the index build."""
import numpy as np
import pytest

from retrieval.answering.places import place_means, same_place
from retrieval.config import load_config
from retrieval.geo import LocalProjection

LAT0, LON0 = 51.5, -0.1


def at(xy_m):
    """lat/lon of points given in metres east/north of (LAT0, LON0)."""
    proj = LocalProjection(LAT0, LON0)
    xy = np.asarray(xy_m, float)
    return proj.to_latlon(xy[:, 0], xy[:, 1])


# A at the origin facing north; B 10 m north facing 30 degrees; C 10 m east facing 120 (90+ degrees from A);
# D 100 m away; E 5 m west with no heading; F 24 m east facing 350 (within 25 m of A, not of B: 26 m).
XY = [(0, 0), (0, 10), (10, 0), (100, 0), (-5, 0), (24, 0)]
HEADING = np.array([0.0, 30.0, 120.0, 0.0, np.nan, 350.0])
A, B, C, D, E, F = range(6)


def neighbours(radius=25.0, tol=45.0, heading=HEADING):
    lat, lon = at(XY)
    m = same_place(lat, lon, heading, radius, tol)
    return {i: sorted(int(j) for j in m[i].indices) for i in range(len(XY))}, m


def test_same_place_is_within_the_radius_facing_alike_where_both_headings_are_known():
    nb, m = neighbours()
    assert nb[A] == [B, E, F]  # C faces 120 degrees away; D is 100 m off
    assert nb[B] == [A, E]  # F: 26 m away; C: 14 m away but 90 degrees apart
    assert nb[C] == [E]  # 15 m from E, whose heading is unknown: distance alone decides
    assert nb[D] == []
    assert (m != m.T).nnz == 0 and m.diagonal().sum() == 0


def test_same_place_without_headings_is_distance_alone():
    nb, _ = neighbours(heading=None)
    assert nb[A] == [B, C, E, F] and nb[D] == []
    nb, _ = neighbours(tol=180.0)
    assert nb[A] == [B, C, E, F]


def test_place_means_by_hand(tmp_path):
    _, m = neighbours()
    emb = np.zeros((6, 3), np.float32)
    emb[A], emb[B], emb[E], emb[F] = [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]
    emb[C], emb[D] = [0, 0, 2], [3, 0, 0]
    out = place_means(emb, m)
    # A: itself + the mean of B, E, F = (1, 2/3, 1/3), normalised
    assert out[A] == pytest.approx(np.array([1, 2 / 3, 1 / 3]) / np.sqrt(1 + 4 / 9 + 1 / 9), abs=1e-6)
    assert out[D] == pytest.approx([1, 0, 0])  # no neighbour: its own descriptor, normalised
    assert out[C] == pytest.approx(np.array([0, 1, 2]) / np.sqrt(5), abs=1e-6)  # (0,0,2) + E's (0,1,0)
    assert np.linalg.norm(out, axis=1) == pytest.approx(np.ones(6))
    # a block of rows at a time, from a memory map, gives the same rows
    np.save(tmp_path / "emb.npy", emb)
    mapped = np.load(tmp_path / "emb.npy", mmap_mode="r")
    parts = np.concatenate([place_means(mapped, m, slice(s, s + 4)) for s in (0, 4)])
    assert np.allclose(parts, out)


def test_place_mean_settings_are_checked_on_load(tmp_path):
    from retrieval import GeolocError

    with pytest.raises(GeolocError, match="index.place_mean_m"):
        load_config(None, ["index.place_mean_m=-1"])
    with pytest.raises(GeolocError, match="index.place_mean_heading_deg"):
        load_config(None, ["index.place_mean_heading_deg=0"])

