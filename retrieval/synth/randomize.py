"""Domain randomisation: knobs that widen what a render varies, so a model trained on renders meets real
photos (other skies, facades, cameras and sensors) less surprised.

Each knob draws from its own random stream (`knob_rng`), never from the stream that places cameras and
lights, so a render with knobs shows the same positions, headings and base light as one without, and
a render without any knob is byte-identical to one made before the knobs existed.

    sky        sun 5-75 degrees up, overcast 2 in 5, cloud cover to 1, sky and ambient tints
    facades    each building's colour and weathering contrast shift per image
    windows    each building's window bays, panes, glass, shopfront and style redrawn per image
    occluders  up to twice the parked and passing vehicles, on narrow streets too
    furniture  sign posts, bins, bollards, cabinets and shelters along the kerbs
    camera     eye height 0.55-1.3x, pitch +-12, roll +-8 degrees, field of view 0.65-1.15x
    optics     exposure, colour casts, sensor noise, blur, vignetting and JPEG quality over wider ranges
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from retrieval import GeolocError
from retrieval.synth.render import (
    L_AMB_B, L_AMB_R, L_CLOUDS, L_EXPOSURE, L_FACADE, L_HOR_B, L_HOR_R, L_NOISE, L_SUN_EL, L_VIGNETTE, L_WB_B,
    L_WB_R, L_WINDOWS, L_ZEN_B, L_ZEN_R, Camera, Look,
)

KNOBS = ("sky", "facades", "windows", "occluders", "furniture", "camera", "optics")


def parse_knobs(text: str | None) -> tuple[str, ...]:
    """'sky,camera' -> ('sky', 'camera') in KNOBS order; 'all' -> KNOBS; '' or 'none' -> ()."""
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    if words in ([], ["none"]):
        return ()
    if words == ["all"]:
        return KNOBS
    bad = [w for w in words if w not in KNOBS]
    if bad:
        raise GeolocError(f"--randomize: unknown knob {bad[0]!r} (choose from {', '.join(KNOBS)}, all or none)")
    return tuple(k for k in KNOBS if k in words)


def knob_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 1, "test": 2, "val": 3}.get(split, 5), 77])


def randomize_look(look: Look, rng: np.random.Generator, knobs: tuple[str, ...]) -> Look:
    """The look with the sky, facades, windows and optics knobs applied (a copy; the input is unchanged)."""
    if not knobs:
        return look
    p = look.params.copy()
    blur, quality = look.blur, look.jpeg_quality
    if "sky" in knobs:
        p[L_SUN_EL] = math.radians(rng.uniform(5, 75))
        if rng.random() < 0.4:  # overcast: a grey sky, weak sun
            grey = rng.uniform(0.55, 0.85)
            p[L_ZEN_R:L_ZEN_B + 1] = p[L_HOR_R:L_HOR_B + 1] = grey * rng.uniform(0.95, 1.05, 3)
            p[L_CLOUDS] = 0.0
        else:
            p[L_CLOUDS] = rng.uniform(0.0, 1.0)
            p[L_ZEN_R:L_ZEN_B + 1] *= rng.uniform(0.75, 1.25, 3)
            p[L_HOR_R:L_HOR_B + 1] *= rng.uniform(0.8, 1.2, 3)
        p[L_AMB_R:L_AMB_B + 1] *= rng.uniform(0.8, 1.2, 3)
    if "facades" in knobs:
        p[L_FACADE] = rng.uniform(0.15, 0.45)
    if "optics" in knobs:
        p[L_EXPOSURE] = rng.uniform(0.7, 1.35)
        # White balance along the warm-cold axis, as cameras get it wrong, with a little green-magenta tint.
        warm, tint = rng.uniform(-0.18, 0.18), rng.uniform(-0.05, 0.05)
        p[L_WB_R], p[L_WB_B] = 1.0 + warm + tint, 1.0 - warm + tint
        p[L_NOISE] = rng.uniform(0.005, 0.06)
        p[L_VIGNETTE] = rng.uniform(0.0, 0.5)
        blur = float(rng.uniform(0.0, 1.0) ** 2 * 2.0)  # pixels at 224 px; most images stay sharp
        quality = int(rng.integers(25, 95))
    if "windows" in knobs:  # drawn last: the knobs before it draw as they did before it existed
        p[L_WINDOWS] = rng.uniform(0.3, 1.0)
    return dataclasses.replace(look, params=p, blur=blur, jpeg_quality=quality)


def randomize_camera(cam: Camera, rng: np.random.Generator, knobs: tuple[str, ...]) -> Camera:
    """The camera with the camera knob applied: other heights, tilts and lenses."""
    if "camera" not in knobs:
        return cam
    return dataclasses.replace(
        cam, eye=cam.eye * rng.uniform(0.55, 1.3), pitch=float(np.clip(rng.normal(0, 5.0), -12, 12)),
        roll=float(np.clip(rng.normal(0, 3.0), -8, 8)), fov=float(np.clip(cam.fov * rng.uniform(0.65, 1.15), 10, 150)))
