"""The no-learning floors and the oracle, on cases small enough to check by hand."""
import math

import numpy as np
import pytest
import torch

from retrieval.reports.floors import constant_guess, knn_floor, oracle, thumbnails

M_PER_DEG = 2 * math.pi * 6_371_008.8 / 360  # one degree of a great circle, metres


def test_constant_guess_is_the_mean_training_position():
    # training photos at lon 0 and 0.002 on the equator: the guess is lon 0.001
    out = constant_guess([0.0, 0.0], [0.0, 0.002], [0.0, 0.0], [0.001, 0.0])
    assert out["n"] == 2
    assert out["median_error_m"] == pytest.approx(0.0005 * M_PER_DEG, rel=1e-6)  # errors 0 and 111.2 m
    assert out["recall@1_25m"] == 0.5


def test_knn_floor_places_each_query_at_its_most_similar_photo():
    db_lat, db_lon = np.zeros(3), np.array([0.0, 0.001, 0.002])  # 0, 111 m and 222 m east
    db = np.eye(3, dtype=np.float32)
    q = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]], dtype=np.float32)  # like photo 0, like photo 2
    out = knn_floor(db, q, db_lat, db_lon, np.zeros(2), np.array([0.0, 0.001]))
    # query 0 sits on photo 0 (a hit); query 1 sits on photo 1 but looks like photo 2 (111 m off),
    # and photo 1 is its second neighbour
    assert out["recall@1_25m"] == 0.5 and out["recall@5_25m"] == 1.0
    assert out["median_error_m"] == pytest.approx(0.0005 * M_PER_DEG, rel=1e-6)


def test_oracle_distance_and_facing_share():
    db_lat, db_lon = np.zeros(2), np.array([0.0, 0.001])
    db_heading = np.array([0.0, 90.0])
    q_lat, q_lon = np.zeros(3), np.array([0.0001, 0.0005, 0.001])  # 11 m, 56 m, 0 m from a photo
    q_heading = np.array([30.0, 0.0, 300.0])
    out = oracle(db_lat, db_lon, q_lat, q_lon, db_heading, q_heading)
    assert out["median_error_m"] == pytest.approx(0.0001 * M_PER_DEG, rel=5e-3)  # a local projection
    assert out["recall@1_25m"] == pytest.approx(2 / 3)
    # query 0 faces 30 degrees from photo 0 (within 45); query 2 faces 150 degrees from photo 1
    assert out["facing_25m_45deg"] == pytest.approx(1 / 3)
    assert "facing_25m_45deg" not in oracle(db_lat, db_lon, q_lat, q_lon)


def test_thumbnails_are_centred_unit_vectors_of_the_centre_square():
    im = torch.zeros(3, 20, 40, dtype=torch.uint8)
    im[:, :, 20:] = 200  # right half bright: the centre 20x20 square is half dark, half bright
    t = thumbnails([im, im.flip(-1)], side=4)
    assert t.shape == (2, 48)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0) and np.allclose(t.mean(axis=1), 0.0, atol=1e-6)
    assert float(t[0] @ t[1]) == pytest.approx(-1.0)  # mirrored halves: opposite vectors
