"""Perspective views cut from a 360-degree equirectangular panorama, as a street-view camera would see them.

A panorama's centre column looks along its azimuth; column x looks (x / width - 0.5) * 360 degrees to its
right, row y at (0.5 - y / height) * 180 degrees above the horizon. A crop is a pinhole camera with a level
horizon at one heading: every output pixel's ray is turned into the panorama's (column, row) with numpy and
sampled with OpenCV's remap (bilinear, wrapping at the 180-degree seam).
"""
from __future__ import annotations

import math

import numpy as np

MIN_SIDE, MAX_SIDE = 64, 1024  # pixels of a crop: below, too little to learn from; above, wasted disk


def is_equirectangular(width: int, height: int) -> bool:
    """A 2:1 image (give or take a pixel of rounding): how a 360 x 180 degree panorama is stored."""
    return height > 0 and abs(width - 2 * height) <= 2


def crop_side(pano_width: int, fov: float) -> int:
    """A crop's side in pixels: the panorama's own resolution over fov degrees, within MIN_SIDE..MAX_SIDE."""
    return int(min(MAX_SIDE, max(MIN_SIDE, round(pano_width * fov / 360.0))))


def crop_offsets(n: int) -> list[float]:
    """n headings evenly spaced from the panorama's centre (0 = its azimuth), degrees clockwise."""
    return [k * 360.0 / n for k in range(n)]


def perspective_crop(pano: np.ndarray, yaw: float, fov: float, side: int | None = None) -> np.ndarray:
    """The square view of an (H, W, 3) equirectangular panorama looking yaw degrees clockwise of its
    centre, level, with a horizontal (and vertical) field of view of fov degrees."""
    import cv2  # opencv-python-headless: only panoramas need it

    h, w = pano.shape[:2]
    side = side or crop_side(w, fov)
    half = math.tan(math.radians(fov) / 2)
    t = (np.arange(side, dtype=np.float64) + 0.5) / side * 2 - 1  # -1..1 across the image plane
    x, y = np.meshgrid(t * half, -t * half)  # right, up (image rows run down)
    lon = np.degrees(np.arctan2(x, 1.0)) + yaw  # degrees right of the panorama's centre
    lat = np.degrees(np.arctan2(y, np.hypot(x, 1.0)))  # degrees above the horizon
    map_x = ((lon / 360.0 + 0.5) % 1.0) * w - 0.5
    map_y = (0.5 - lat / 180.0) * h - 0.5
    return cv2.remap(pano, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_WRAP)
