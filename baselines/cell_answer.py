"""Which cell answers, and where it puts the photo: the cells method's decision rule (cells.decision)
and centroid (cells.centroid), as pure functions over class probabilities and cell tables."""
from __future__ import annotations

import numpy as np

from retrieval.metrics import errors_m

DECISION_RADII_CELLS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # cells.decision auto's candidates, in cell sizes


def centroids(table: dict[str, list], which: str) -> tuple[np.ndarray, np.ndarray]:
    """lat, lon per cell: photo centroid ('photos', the polygon's where a cell is empty) or 'polygon'."""
    lat, lon = np.array(table["poly_lat"], float), np.array(table["poly_lon"], float)
    if which == "photos":
        has = np.array([v is not None for v in table["photo_lat"]])
        lat[has] = [table["photo_lat"][c] for c in np.flatnonzero(has)]
        lon[has] = [table["photo_lon"][c] for c in np.flatnonzero(has)]
    return lat, lon


def pairwise_m(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) distances between planar points (x, y in metres)."""
    return np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])


def mass_choice(probs: np.ndarray, class_xy: np.ndarray, radius_m: float) -> np.ndarray:
    """Each row's class whose centroid has the most probability within radius_m of it (planar metres):
    the answer most likely within radius_m of the truth, were every photo at its cell's centroid. Ties go
    to the lower class; radius_m 0 is the argmax."""
    if radius_m <= 0:
        return probs.argmax(axis=1)
    d = pairwise_m(class_xy, class_xy)
    return (probs @ (d <= radius_m).astype(probs.dtype)).argmax(axis=1)


def choose_radius(probs: np.ndarray, class_xy: np.ndarray, class_lat: np.ndarray, class_lon: np.ndarray,
                  true_lat: np.ndarray, true_lon: np.ndarray, radii_m) -> tuple[float, dict[str, float]]:
    """The radius of mass_choice with the lowest median error on held-out photos, and each radius's
    median in metres (keys: the radius as text); a tie goes to the smaller radius."""
    medians = {}
    for r in radii_m:
        c = mass_choice(probs, class_xy, r)
        medians[f"{r:g}"] = float(np.median(errors_m(class_lat[c], class_lon[c], true_lat, true_lon)))
    best = min(radii_m, key=lambda r: (medians[f"{r:g}"], r))
    return float(best), medians
