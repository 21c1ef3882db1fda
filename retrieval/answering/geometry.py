"""The geometric check: a query's nearest database photos reordered by how many of its local features
they match under one epipolar geometry (OpenCV: brute-force matching with Lowe's ratio test, then a
fundamental matrix by MAGSAC++, cv2.USAC_MAGSAC), combined with the global similarity:

    score = similarity + weight * min(inliers, INLIER_CAP) / INLIER_CAP

for the first k neighbours; the others keep their similarity (lower than every reranked one's). The
scores replace the similarities everywhere after (the vote's weights, the route's candidates). k and
weight are settings, or with index.rerank: auto chosen on the validation views, where "off" stays a
choice (a rerank can lower a strong descriptor's recall: it is kept only where it helps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.geo import haversine_m

INLIER_CAP = 100  # inliers beyond this add nothing: two views of one facade already agree
MIN_MATCHES = 12  # fewer ratio-test matches than this: no geometry is fitted, 0 inliers
AUTO_KS = (10, 25, 50)  # candidates reranked, tried by auto
AUTO_WEIGHTS = (0.25, 1.0, 4.0)  # inliers' weight against the similarity, tried by auto
RERANK_RULES = 2  # bumped when the inlier count changes (2: one match per database feature)


@dataclass(frozen=True)
class Setting:
    k: int  # 0: off
    weight: float

    @property
    def off(self) -> bool:
        return self.k == 0


OFF = Setting(0, 0.0)


def _matcher():
    import cv2  # here, not at the top: the settings read RERANK_MODES without loading OpenCV

    return cv2.BFMatcher(cv2.NORM_L2)


def _fundamental_inliers(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which of the point pairs (a[i], b[i]) agree with one fundamental matrix (MAGSAC++, 1 px)."""
    import cv2

    none = np.zeros(len(a), bool)
    if len(np.unique(np.hstack([a, b]), axis=0)) < MIN_MATCHES:  # repeated points: nothing to fit a geometry to
        return none
    try:
        _, mask = cv2.findFundamentalMat(a.astype(np.float64), b.astype(np.float64), cv2.USAC_MAGSAC, 1.0, 0.999,
                                         10000)
    except cv2.error:  # a degenerate configuration (e.g. every point on one line): no geometry found
        return none
    return mask.ravel().astype(bool) if mask is not None else none


def _ratio_matches(query, other, ratio: float, matcher=None) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the matches passing Lowe's ratio test, in each photo; empty below MIN_MATCHES."""
    (xy_q, d_q), (xy_o, d_o) = query, other
    empty = np.zeros((0, 2), np.float32)
    if len(d_q) < 2 or len(d_o) < 2:
        return empty, empty
    pairs = (matcher or _matcher()).knnMatch(d_q.astype(np.float32), d_o.astype(np.float32), k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    # one match per feature of the other photo, its closest: repeated facades send many query features to
    # one window corner, and a geometry fitted through such a fan counts it many times over
    best = {}
    for m in good:
        if m.trainIdx not in best or m.distance < best[m.trainIdx].distance:
            best[m.trainIdx] = m
    good = list(best.values())
    if len(good) < MIN_MATCHES:
        return empty, empty
    return xy_q[[m.queryIdx for m in good]], xy_o[[m.trainIdx for m in good]]


def inliers(query: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], ratio: float = 0.8,
            matcher=None) -> int:
    """Matches between two photos' (positions, descriptors) consistent with one fundamental matrix."""
    a, b = _ratio_matches(query, other, ratio, matcher)
    return int(_fundamental_inliers(a, b).sum()) if len(a) else 0


def matched_points(query, other, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The inlier matches themselves, (n, 2) positions in each photo: for pictures of the check."""
    a, b = _ratio_matches(query, other, ratio)
    keep = _fundamental_inliers(a, b) if len(a) else np.zeros(0, bool)
    return a[keep], b[keep]


def inlier_table(queries: list, ids: np.ndarray, database, k: int, ratio: float = 0.8, progress=None) -> np.ndarray:
    """(queries, k) inlier counts between each query's features and its first k neighbours' (ids, -1 for
    none: 0); database(j) gives photo j's features."""
    out = np.zeros((len(queries), k), dtype=np.int32)
    matcher = _matcher()
    for q, feats in enumerate(queries):
        for c in range(min(k, ids.shape[1])):
            j = int(ids[q, c])
            if j >= 0:
                out[q, c] = inliers(feats, database(j), ratio, matcher)
        if progress is not None:
            progress(1)
    return out


def rescore(sims: np.ndarray, ids: np.ndarray, inl: np.ndarray, setting: Setting) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, ids, inliers) reordered, best first: the first setting.k by the combined score, the rest as
    they were. inl holds at least setting.k columns; inliers of the rest are -1 (not checked)."""
    n = sims.shape[1]
    full = np.full(sims.shape, -1, dtype=np.int32)
    if setting.off:
        return sims, ids, full
    k = min(setting.k, n, inl.shape[1])
    full[:, :k] = inl[:, :k]
    scores = sims.astype(np.float64).copy()
    bonus = setting.weight * np.minimum(inl[:, :k], INLIER_CAP) / INLIER_CAP
    scores[:, :k] = np.where(ids[:, :k] >= 0, scores[:, :k] + bonus, scores[:, :k])
    head = np.argsort(-np.where(ids[:, :k] >= 0, scores[:, :k], -np.inf), axis=1, kind="stable")
    order = np.concatenate([head, np.broadcast_to(np.arange(k, n), (len(sims), n - k))], axis=1)
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return take(scores).astype(np.float32), take(ids), take(full)


def candidate_settings(k_max: int) -> list[Setting]:
    """What auto tries: off, and every AUTO_KS up to k_max (the neighbours at hand) with every AUTO_WEIGHTS."""
    return [OFF] + [Setting(k, w) for k in AUTO_KS if k <= k_max for w in AUTO_WEIGHTS]


def choose(sims, ids, inl, db_lat, db_lon, true_lat, true_lon, radius_m: float = 25.0,
           settings: list[Setting] | None = None) -> tuple[Setting, dict[str, float]]:
    """The setting with the highest R@1 within radius_m on held-out queries of known position (off wins
    ties: a rerank is kept only where it helps), and every setting's R@1."""
    settings = settings or candidate_settings(inl.shape[1])
    recall = {}
    for s in settings:
        _, order, _ = rescore(sims, ids, inl, s)
        first = order[:, 0]
        ok = first >= 0
        d = np.full(len(first), np.inf)
        d[ok] = haversine_m(db_lat[first[ok]], db_lon[first[ok]], true_lat[ok], true_lon[ok])
        recall[label(s)] = float((d <= radius_m).mean()) if len(d) else 0.0
    best = max(settings, key=lambda s: (recall[label(s)], s.off))
    return best, recall


def label(s: Setting) -> str:
    return "off" if s.off else f"k{s.k}_w{s.weight:g}"
