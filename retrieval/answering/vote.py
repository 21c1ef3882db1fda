"""The k-NN vote: from a query's nearest training photos to one location and a confidence.

Pure functions over (queries, k) arrays of the neighbours' lat, lon and similarity, best first.
Each neighbour votes with weight max(similarity, 0); a neighbour whose lat, lon or similarity is NaN
(FAISS found fewer than k) does not vote. When no valid neighbour has a positive similarity the valid
ones vote equally, so a query always gets an answer if it has any neighbour.

pool (the default): neighbour i's pool is every neighbour within radius_m of i, itself included (a ball,
not a chain: neighbours strung out along a street do not merge into one pool). The strongest pool,
by total weight, wins; ties go to the better-ranked i. The answer is the weighted centre of that pool's
members and the confidence is its share of all the weight.
top1: the best-ranked neighbour's location. weighted_mean: the weighted centre of all neighbours, moved to
the neighbour nearest it: neighbours in two far places average to a point between them, often inside a
block, where no photo could have been taken; a database photo's position is on a street. For these two,
the confidence is the share of the weight within radius_m of the answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval import GeolocError
from retrieval.choices import VOTE_MODES
from retrieval.geo import haversine_m
from retrieval.metrics import errors_m

VOTE_RULES = 2  # bumped when a mode's answer changes (2: weighted_mean moves to its nearest neighbour)


@dataclass
class Vote:
    lat: np.ndarray  # (queries,) NaN where a query had no valid neighbour
    lon: np.ndarray
    confidence: np.ndarray  # (queries,) in [0, 1]
    support: np.ndarray  # (queries, k) bool: the neighbours whose weight the confidence counts


def vote_weights(sim) -> np.ndarray:
    """(queries, k) voting weights, per the module's rules (similarity clipped at 0, NaN does not vote)."""
    sim = np.asarray(sim, dtype=np.float64)
    w = np.where(np.isnan(sim), 0.0, np.clip(sim, 0.0, None))
    valid = ~np.isnan(sim)
    none_positive = w.sum(axis=1, keepdims=True) == 0
    return np.where(none_positive & valid, 1.0, w)


def weighted_centre(lat, lon, w) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean position of each row, as a mean of unit vectors: right across the antimeridian, where
    averaging longitudes is not. Rows with no weight give NaN."""
    la, lo = np.radians(lat), np.radians(lon)
    w = np.where(np.isnan(la) | np.isnan(lo), 0.0, w)
    la, lo = np.nan_to_num(la), np.nan_to_num(lo)
    v = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)
    s = (w[..., None] * v).sum(axis=-2)
    with np.errstate(invalid="ignore"):
        out_lat = np.degrees(np.arctan2(s[..., 2], np.hypot(s[..., 0], s[..., 1])))
        out_lon = np.degrees(np.arctan2(s[..., 1], s[..., 0]))
    empty = w.sum(axis=-1) == 0
    return np.where(empty, np.nan, out_lat), np.where(empty, np.nan, out_lon)


def _share(w, members) -> np.ndarray:
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * members).sum(axis=1) / total, 0.0)


def _near(lat, lon, at_lat, at_lon, radius_m) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return haversine_m(lat, lon, at_lat, at_lon) <= radius_m


def vote(lat, lon, sim, mode: str = "pool", radius_m: float = 50.0) -> Vote:
    """One answer per query from its neighbours (arrays (queries, k), best first); see the module doc."""
    lat, lon = np.atleast_2d(np.asarray(lat, dtype=np.float64)), np.atleast_2d(np.asarray(lon, dtype=np.float64))
    sim = np.atleast_2d(np.asarray(sim, dtype=np.float64))
    if not lat.shape == lon.shape == sim.shape:
        raise ValueError(f"vote: lat {lat.shape}, lon {lon.shape} and sim {sim.shape} must have one shape")
    sim = np.where(np.isnan(lat) | np.isnan(lon), np.nan, sim)
    w = vote_weights(sim)
    valid = ~np.isnan(sim)
    rows = np.arange(len(lat))
    if mode == "pool":
        near = _near(lat[:, :, None], lon[:, :, None], lat[:, None, :], lon[:, None, :], radius_m) & valid[:, None, :]
        pool_w = np.where(valid, (near * w[:, None, :]).sum(axis=2), -1.0)
        best = pool_w.argmax(axis=1)  # first maximum: the better-ranked neighbour wins a tie
        support = near[rows, best]
        out_lat, out_lon = weighted_centre(lat, lon, w * support)
    elif mode in ("top1", "weighted_mean"):
        if mode == "top1":
            first = valid.argmax(axis=1)
            out_lat = np.where(valid.any(axis=1), lat[rows, first], np.nan)
            out_lon = np.where(valid.any(axis=1), lon[rows, first], np.nan)
        else:
            c_lat, c_lon = weighted_centre(lat, lon, w)
            with np.errstate(invalid="ignore"):
                d = np.where(valid, haversine_m(lat, lon, c_lat[:, None], c_lon[:, None]), np.inf)
            nearest = d.argmin(axis=1)
            out_lat = np.where(valid.any(axis=1), lat[rows, nearest], np.nan)
            out_lon = np.where(valid.any(axis=1), lon[rows, nearest], np.nan)
        support = _near(lat, lon, out_lat[:, None], out_lon[:, None], radius_m) & valid
    else:
        raise GeolocError(f"vote mode {mode!r}: expected one of {', '.join(VOTE_MODES)}")
    return Vote(lat=out_lat, lon=out_lon, confidence=_share(w, support), support=support)


def choose_mode(lat, lon, sim, true_lat, true_lon, radius_m: float = 50.0) -> tuple[str, dict[str, float]]:
    """The vote mode with the lowest median error on held-out queries whose positions are known (the
    neighbours' arrays as for vote), and every mode's median in metres; a tie goes to the earlier of
    VOTE_MODES."""
    medians = {}
    for mode in VOTE_MODES:
        v = vote(lat, lon, sim, mode, radius_m)
        medians[mode] = float(np.median(errors_m(v.lat, v.lon, true_lat, true_lon)))
    return min(VOTE_MODES, key=lambda m: medians[m]), medians
