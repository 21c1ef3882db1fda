"""Database descriptors as places: each database photo's descriptor plus the mean of the descriptors of
the other database photos of its place (within place_mean_m in a straight line and, where both headings
are known, facing within place_mean_heading_deg), renormalised.

A query is one more photo of a place the database covers; a single database view of that place carries
its own lighting and framing, and the mean over the place's views keeps what they share. It uses only
what the database already knows (where, and which way, each of its photos was taken) and costs one
sparse product at index time. On the demo's trained models it lifts R@1 within 25 m by 1-5.5 points
(benchmarks/RESULTS.md, session 13).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from retrieval.geo import LocalProjection, heading_gap_deg


def same_place(lat, lon, heading, radius_m: float, heading_tol_deg: float = 180.0) -> sp.csr_matrix:
    """Boolean (N, N) matrix: distinct photos within radius_m of each other (straight line) and, where
    both headings are known, facing within heading_tol_deg."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    n = len(lat)
    if n == 0 or radius_m <= 0:
        return sp.csr_matrix((n, n), dtype=bool)
    xy = np.column_stack(LocalProjection.for_points(lat, lon).to_xy(lat, lon))
    pairs = cKDTree(xy).query_pairs(radius_m, output_type="ndarray")
    i, j = np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]
    if heading is not None and heading_tol_deg < 180:
        h = np.asarray(heading, float)
        known = np.isfinite(h[i]) & np.isfinite(h[j])
        keep = ~known | (heading_gap_deg(np.where(known, h[i], 0), np.where(known, h[j], 0)) <= heading_tol_deg)
        i, j = i[keep], j[keep]
    return sp.csr_matrix((np.ones(len(i), dtype=bool), (i, j)), shape=(n, n))


def place_means(emb, neighbours: sp.csr_matrix, rows: slice | None = None) -> np.ndarray:
    """Rows `rows` (default all) of emb + the mean of each photo's neighbours' rows, unit-normalised; a
    photo without neighbours keeps its own (normalised) descriptor. emb may be a memory map: only the
    neighbours of the rows asked for are read."""
    rows = rows if rows is not None else slice(0, neighbours.shape[0])
    nb = neighbours[rows].astype(np.float32)
    used = np.unique(nb.indices)
    own = np.asarray(emb[rows], dtype=np.float32)
    out = own.copy()
    if len(used):
        sums = nb[:, used] @ np.asarray(emb[used], dtype=np.float32)
        deg = np.asarray(nb.sum(axis=1)).ravel()
        out += sums / np.maximum(deg, 1.0)[:, None]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def place_neighbours(cfg, db) -> sp.csr_matrix | None:
    """The same-place neighbours of index.place_mean_m among db's photos (a Config, a Manifest), or None
    when place means are off."""
    i = cfg.index
    if i.place_mean_m <= 0:
        return None
    return same_place(db.lat, db.lon, db.heading, i.place_mean_m, i.place_mean_heading_deg)
