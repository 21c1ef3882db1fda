import numpy as np
import pytest

from retrieval import GeolocError
from retrieval.answering.vote import choose_mode, vote, vote_weights, weighted_centre
from retrieval.geo import LocalProjection, haversine_m

PROJ = LocalProjection(51.5138, -0.0984)
X0, Y0 = PROJ.to_xy(51.5138, -0.0984)


def at(*xy_m):
    """lat, lon arrays (1, k) of points given in metres east/north of St Paul's."""
    x, y = np.array(xy_m, dtype=float).T
    lat, lon = PROJ.to_latlon(X0 + x, Y0 + y)
    return lat[None], lon[None]


def metres(lat, lon):
    x, y = PROJ.to_xy(lat, lon)
    return np.array([x - X0, y - Y0]).T


def test_pool_beats_a_lone_best_match():
    # three agreeing neighbours at ~(0, 0) outweigh the best two, which lie 1 km east
    lat, lon = at((1000, 0), (1010, 0), (0, 0), (6, 0), (0, 9))
    sim = np.array([[0.9, 0.8, 0.6, 0.6, 0.6]])
    v = vote(lat, lon, sim, "pool", radius_m=50)
    assert v.confidence[0] == pytest.approx(1.8 / 3.5)
    assert v.support[0].tolist() == [False, False, True, True, True]
    assert metres(v.lat, v.lon)[0] == pytest.approx([2.0, 3.0], abs=0.01)  # equal weights: the plain mean
    t = vote(lat, lon, sim, "top1", radius_m=50)
    assert metres(t.lat, t.lon)[0] == pytest.approx([1000, 0], abs=0.01)
    assert t.confidence[0] == pytest.approx(1.7 / 3.5)
    m = vote(lat, lon, sim, "weighted_mean", radius_m=50)
    # the weighted centre, (489, 1.5) m, lies between the two places, where no photo was taken (issue 41:
    # "confidence 0.00" between streets): the answer is the neighbour nearest it, (6, 0)
    assert metres(m.lat, m.lon)[0] == pytest.approx([6, 0], abs=0.01)
    assert m.confidence[0] == pytest.approx(1.8 / 3.5)


def test_pools_are_balls_and_ties_go_to_the_better_ranked():
    # four neighbours 40 m apart on a line: balls of radius 50 hold 2, 3, 3, 2 of them
    lat, lon = at((0, 0), (40, 0), (80, 0), (120, 0))
    v = vote(lat, lon, np.ones((1, 4)), "pool", radius_m=50)
    assert v.support[0].tolist() == [True, True, True, False]  # neighbour 1's ball, not 2's, and no chain
    assert v.confidence[0] == pytest.approx(0.75)
    assert metres(v.lat, v.lon)[0] == pytest.approx([40, 0], abs=0.01)


def test_similarity_weights_pull_the_centre():
    lat, lon = at((0, 0), (30, 0))
    v = vote(lat, lon, [[0.75, 0.25]], "pool", radius_m=50)
    assert metres(v.lat, v.lon)[0] == pytest.approx([7.5, 0], abs=0.01)
    assert v.confidence[0] == 1.0


def test_negative_and_missing_neighbours():
    assert vote_weights([[0.5, -0.2, np.nan]]).tolist() == [[0.5, 0.0, 0.0]]
    assert vote_weights([[-0.5, -0.2, np.nan]]).tolist() == [[1.0, 1.0, 0.0]]  # none positive: equal votes
    lat, lon = at((0, 0), (500, 0), (0, 10))
    lat[0, 2] = np.nan  # FAISS returned id -1 here
    v = vote(lat, lon, [[0.2, 0.9, 0.95]], "pool", radius_m=50)
    assert metres(v.lat, v.lon)[0] == pytest.approx([500, 0], abs=0.01)
    assert v.confidence[0] == pytest.approx(0.9 / 1.1) and not v.support[0, 2]
    empty = vote([[np.nan] * 3], [[np.nan] * 3], [[np.nan] * 3])
    assert np.isnan(empty.lat[0]) and np.isnan(empty.lon[0]) and empty.confidence[0] == 0.0


def test_vectorised_over_queries_matches_one_by_one():
    rng = np.random.default_rng(0)
    lat = 51.51 + rng.uniform(0, 0.002, (30, 10))
    lon = -0.1 + rng.uniform(0, 0.003, (30, 10))
    sim = rng.uniform(-0.1, 1.0, (30, 10))
    for mode in ("pool", "top1", "weighted_mean"):
        batch = vote(lat, lon, sim, mode, radius_m=60)
        assert ((batch.confidence >= 0) & (batch.confidence <= 1)).all()
        for q in range(30):
            one = vote(lat[q], lon[q], sim[q], mode, radius_m=60)
            assert one.lat[0] == batch.lat[q] and one.lon[0] == batch.lon[q]
            assert one.confidence[0] == batch.confidence[q]
        # the pool is the ball of one of its members, and the answer lies inside that ball
        if mode == "pool":
            for q in range(30):
                sup = batch.support[q]
                centres = [i for i in np.flatnonzero(sup)
                           if (haversine_m(lat[q, i], lon[q, i], lat[q], lon[q]) <= 60).tolist() == sup.tolist()]
                assert any(haversine_m(batch.lat[q], batch.lon[q], lat[q, i], lon[q, i]) <= 60 for i in centres)


def test_weighted_centre_across_the_antimeridian():
    lat, lon = weighted_centre(np.array([[10.0, 10.0]]), np.array([[179.9, -179.9]]), np.array([[1.0, 1.0]]))
    assert abs(lon[0]) == pytest.approx(180.0) and lat[0] == pytest.approx(10.0, abs=1e-3)


def test_unknown_mode():
    with pytest.raises(GeolocError, match="vote mode 'median'"):
        vote([[51.5]], [[-0.1]], [[1.0]], "median")


def test_choose_mode_takes_the_lowest_median_on_held_out_queries():
    # the neighbours of test_pool_beats_a_lone_best_match: pool answers (2, 3), top1 (1000, 0)
    lat, lon = at((1000, 0), (1010, 0), (0, 0), (6, 0), (0, 9))
    sim = np.array([[0.9, 0.8, 0.6, 0.6, 0.6]])
    t_near, t_far = at((2, 3)), at((1000, 0))
    mode, medians = choose_mode(lat, lon, sim, t_near[0][0], t_near[1][0], radius_m=50)
    assert mode == "pool" and medians["pool"] == pytest.approx(0.0, abs=0.05)
    assert medians["top1"] == pytest.approx(haversine_m(lat[0, 0], lon[0, 0], t_near[0][0, 0], t_near[1][0, 0]), abs=0.05)
    mode, medians = choose_mode(lat, lon, sim, t_far[0][0], t_far[1][0], radius_m=50)
    assert mode == "top1" and medians["top1"] == pytest.approx(0.0, abs=0.05)
    # a tie goes to the earlier mode of VOTE_MODES: one neighbour, every mode answers the same
    mode, _ = choose_mode(*at((5, 5)), np.array([[0.5]]), *(a[0] for a in at((0, 0))), radius_m=50)
    assert mode == "pool"
