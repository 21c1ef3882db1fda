"""Contact sheet: a grid of rendered views, each labelled with its coordinates and heading."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.data.manifests import load_rgb, read_manifest
from retrieval.files import atomic_write
from retrieval.geo import LocalProjection


def contact_sheet(data_dir: str | Path, out: str | Path, n: int = 24, cols: int = 6, split: str = "train",
                  thumb: int = 160, order: str = "spread") -> Path:
    """Write a PNG of n views from data_dir/<split>.csv, or from data_dir itself when it is a manifest
    (real photos from `geoloc data import`, to look at beside renders; each is cropped to its central
    square as the models see it). order 'spread' takes evenly spaced rows; 'neighbours' takes pairs of
    nearby cameras facing within 45 degrees, side by side, to check that neighbours share content."""
    from PIL import Image, ImageDraw, ImageOps

    data_dir = Path(data_dir)
    m = read_manifest(data_dir if data_dir.is_file() else data_dir / f"{split}.csv")
    if order == "spread":
        idx = np.linspace(0, len(m) - 1, min(n, len(m))).round().astype(int)
    elif order == "neighbours":
        idx = _neighbour_pairs(m, n)
        if not len(idx):
            raise GeolocError(f"{data_dir}: no pair of nearby cameras facing the same way in {split}.csv")
    else:
        raise GeolocError(f"sheet: unknown order {order!r} (spread or neighbours)")
    rows = math.ceil(len(idx) / cols)
    label_h = 28
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(idx):
        im = ImageOps.fit(load_rgb(m.paths[i]), (thumb, thumb))
        x, y = (k % cols) * thumb, (k // cols) * (thumb + label_h)
        sheet.paste(im, (x, y))
        heading = "" if m.heading is None else f" {m.heading[i]:.0f}°"
        draw.text((x + 3, y + thumb + 2), f"{m.lat[i]:.5f}, {m.lon[i]:.5f}", fill=(0, 0, 0))
        draw.text((x + 3, y + thumb + 14), f"{m.paths[i].stem}{heading}", fill=(70, 70, 70))
    return atomic_write(Path(out), lambda p: sheet.save(p, format="PNG", optimize=True))


def _neighbour_pairs(m, n: int, max_m: float = 15.0, max_turn: float = 45.0) -> list[int]:
    from scipy.spatial import cKDTree

    x, y = LocalProjection.for_points(m.lat, m.lon).to_xy(m.lat, m.lon)
    heading = m.heading if m.heading is not None else np.zeros(len(m))
    pairs = []
    used: set[int] = set()
    for i, j in sorted(cKDTree(np.column_stack([x, y])).query_pairs(max_m)):
        turn = abs((heading[i] - heading[j] + 180) % 360 - 180)
        if turn <= max_turn and i not in used and j not in used:
            pairs += [i, j]
            used |= {i, j}
        if len(pairs) >= n:
            break
    return pairs
