"""Camera walks along the streets, to test route decoding (retrieval.answering.route) on: photos a few metres apart
in order, facing along the street give or take a few degrees, going on as straight as the streets allow
at a junction or, now and then, turning, with capture times at a walking pace. They are drawn from a
random stream of their own, so adding routes to a render changes none of its database or test views.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from shapely import affinity

from retrieval import GeolocError
from retrieval.files import atomic_write
from retrieval.synth.osm import City
from retrieval.synth.scene import CAMERA_HIGHWAYS, PAVED_AS_STREET, highway_kind, street_width

HEADING_SD_DEG = 3.0  # a walker's camera points along the street, give or take this much
TURN_P = 0.3  # at a junction: the chance of taking another street than the straightest one
PACE_MPS = (1.1, 1.6)  # walking pace, drawn per route
STEP_JITTER = 0.15  # each step is route_step give or take this share
START = np.datetime64("2024-05-01T09:00:00", "s")
ROUTE_GAP_S = 3600  # routes start an hour apart: no two read as one walk


@dataclass
class Walk:
    """One route's camera poses in scene coordinates, in order."""
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray  # degrees clockwise from north
    seconds: np.ndarray  # capture time since the route's start
    streets: list  # (line, highway, width, metres along the line) of each pose, for the vehicles near it


class Network:
    """The streets cameras stand on (as world_from_city keeps them: camera highways, no tunnels), in scene
    coordinates, with the streets that meet at each junction."""

    def __init__(self, city: City, origin: tuple[float, float]):
        self.lines, self.kind, self.width, self.ends = [], [], [], []
        for row in city.streets.to_dict("records"):
            hw = highway_kind(row.get("highway"))
            row = {**row, "highway": hw, "width": highway_kind(row.get("width")),
                   "lanes": highway_kind(row.get("lanes"))}
            tunnel = highway_kind(row.get("tunnel")) not in ("", "no")
            if hw not in CAMERA_HIGHWAYS or tunnel or row["geometry"].length <= 1:
                continue
            self.lines.append(affinity.translate(row["geometry"], -origin[0], -origin[1]))
            self.kind.append(hw)
            self.width.append(street_width(row))
            self.ends.append((row["u"], row["v"]))
        if not self.lines:
            raise GeolocError("routes: no streets to walk along")
        self.length = np.array([line.length for line in self.lines])
        self.at = collections.defaultdict(list)  # junction -> streets meeting there
        for e, (u, v) in enumerate(self.ends):
            self.at[u].append(e)
            self.at[v].append(e)

    def direction(self, e: int, d: float, forward: bool) -> tuple[float, float, float, float]:
        """x, y of metre d along street e and the unit direction of walking it (forward: from its start)."""
        line = self.lines[e]
        p, q, r = (line.interpolate(min(max(v, 0.0), line.length)) for v in (d, d + 0.5, d - 0.5))
        tx, ty = q.x - r.x, q.y - r.y
        n = (math.hypot(tx, ty) or 1.0) * (1 if forward else -1)
        return p.x, p.y, tx / n, ty / n

    def next_street(self, e: int, forward: bool, rng: np.random.Generator) -> tuple[int, bool]:
        """The street taken at the end of e: the straightest on, or with TURN_P another; a dead end turns back."""
        node = self.ends[e][1] if forward else self.ends[e][0]
        options = [(f, self.ends[f][0] == node) for f in self.at[node] if f != e]
        if not options:
            return e, not forward
        _, _, tx, ty = self.direction(e, self.length[e] if forward else 0.0, forward)
        going = [self.direction(f, 0.0 if fwd else self.length[f], fwd)[2:] for f, fwd in options]
        straight = int(np.argmax([tx * gx + ty * gy for gx, gy in going]))
        if len(options) > 1 and rng.random() < TURN_P:
            straight = int(rng.choice([i for i in range(len(options)) if i != straight]))
        return options[straight]

    def advance(self, e: int, d: float, forward: bool, metres: float, rng) -> tuple[int, float, bool]:
        while True:
            left = self.length[e] - d if forward else d
            if metres <= left:
                return e, d + metres if forward else d - metres, forward
            metres -= left
            e, forward = self.next_street(e, forward, rng)
            d = 0.0 if forward else self.length[e]


def walk(net: Network, n: int, step_m: float, rng: np.random.Generator, clear: Callable[[float, float], bool]) -> Walk:
    """n poses step_m apart (give or take STEP_JITTER) from a random start; a pose that is not clear (a
    wall, a tree) is moved a little farther on. The walker keeps to one side of each street."""
    e = int(rng.choice(len(net.lines), p=net.length / net.length.sum()))
    d, forward = rng.uniform(0, net.length[e]), bool(rng.random() < 0.5)
    side, pace = rng.uniform(-0.8, 0.8), rng.uniform(*PACE_MPS)
    out: dict[str, list] = {"x": [], "y": [], "heading": [], "seconds": [], "streets": []}
    metres, tries = 0.0, 0
    while len(out["x"]) < n:
        tries += 1
        if tries > 20 * n + 20:
            raise GeolocError("routes: could not find free street positions to walk along "
                              "(buildings cover the streets?)")
        x, y, tx, ty = net.direction(e, d, forward)
        half = max(net.width[e] / 2 - (0.5 if net.kind[e] in PAVED_AS_STREET else 1.0), 0.0)
        cx, cy = x + ty * side * half, y - tx * side * half
        if clear(cx, cy):
            heading = math.degrees(math.atan2(tx, ty)) + float(np.clip(rng.normal(0, HEADING_SD_DEG), -8, 8))
            for key, value in zip(out, (cx, cy, heading % 360.0, metres / pace, (net.lines[e], net.kind[e],
                                                                                 net.width[e], d))):
                out[key].append(value)
            move = step_m * rng.uniform(1 - STEP_JITTER, 1 + STEP_JITTER)
        else:
            move = rng.uniform(1.0, 3.0)
        e, d, forward = net.advance(e, d, forward, move, rng)
        metres += move
    return Walk(**{k: (v if k == "streets" else np.array(v)) for k, v in out.items()})


def sample_walks(city: City, origin: tuple[float, float], n_routes: int, length: int, step_m: float, seed: int,
                 clear: Callable[[float, float], bool]) -> list[Walk]:
    """n_routes walks of `length` photos each, step_m apart, from the random stream (seed, 4)."""
    if n_routes < 0 or length < 1 or not step_m > 0:
        raise GeolocError(f"routes: {n_routes} routes of {length} photos at {step_m:g} m steps: need routes >= 0, "
                          "at least 1 photo and a step > 0")
    net, rng = Network(city, origin), np.random.default_rng([seed, 4])
    return [walk(net, length, step_m, rng, clear) for _ in range(n_routes)]


def capture_times(walks: list[Walk]) -> np.ndarray:
    """Each pose's capture time, whole seconds (as a manifest writes them); routes start ROUTE_GAP_S apart."""
    return np.concatenate([START + np.timedelta64(r * ROUTE_GAP_S, "s")
                           + np.round(w.seconds).astype("timedelta64[s]") for r, w in enumerate(walks)])


def write_routes_manifest(path: Path, paths: list[Path], lat, lon, heading, date, route) -> Path:
    """path,lat,lon,heading,date,route (paths relative to the manifest): read_manifest reads it as a
    manifest (route ignored), `geoloc query --route` as routes to decode one after the other."""
    def write(tmp: Path) -> None:
        lines = ["path,lat,lon,heading,date,route"]
        lines += [f"{Path(p).resolve().relative_to(path.parent.resolve()).as_posix()},{a:.7f},{b:.7f},{h:.1f},{t},{r}"
                  for p, a, b, h, t, r in zip(paths, lat, lon, heading, date, route)]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")

    return atomic_write(path, write)
