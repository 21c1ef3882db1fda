"""Camera sampling on the street network and the rendered-dataset writer (images + manifests)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.files import atomic_write, atomic_write_json, atomic_write_text
from retrieval.run import command_line, git_revision
from retrieval.data.manifests import Manifest, write_manifest
from retrieval.synth.osm import load_city
from retrieval.synth.randomize import knob_rng, randomize_camera, randomize_look
from retrieval.synth.render import (
    BIN, BOLLARD, BUS, CABINET, CAR, MAX_VEHICLES, POST, SHELTER, VAN, Camera, Look, Renderer, sample_look,
)
from retrieval.synth.routes import Walk, capture_times, sample_walks, write_routes_manifest
from retrieval.synth.scene import CAMERA_HIGHWAYS, PAVED_AS_STREET, World, world_from_city

CLEARANCE_M = 0.8  # a camera keeps this far from any wall
TREE_CLEARANCE_M = 1.5  # and this far from a tree's centre
CAR_COLOURS = [(0.75, 0.75, 0.76), (0.08, 0.08, 0.09), (0.93, 0.93, 0.92), (0.55, 0.06, 0.06),
               (0.10, 0.20, 0.45), (0.35, 0.36, 0.38), (0.60, 0.62, 0.64), (0.15, 0.30, 0.18)]
# Street furniture (the furniture knob): half length, half width, height in metres; how often; colours.
FURNITURE = {POST: ((0.06, 0.06, 2.7), 0.3, [(0.1, 0.25, 0.6), (0.85, 0.85, 0.85), (0.7, 0.1, 0.1), (0.1, 0.4, 0.2)]),
             BIN: ((0.25, 0.25, 1.0), 0.2, [(0.1, 0.25, 0.12), (0.15, 0.15, 0.16), (0.6, 0.5, 0.2)]),
             BOLLARD: ((0.1, 0.1, 0.95), 0.25, [(0.12, 0.12, 0.13), (0.3, 0.3, 0.32), (0.5, 0.45, 0.35)]),
             CABINET: ((0.45, 0.25, 1.3), 0.15, [(0.2, 0.35, 0.25), (0.55, 0.56, 0.55), (0.3, 0.3, 0.33)]),
             SHELTER: ((1.6, 0.7, 2.5), 0.1, [(0.3, 0.32, 0.35), (0.15, 0.2, 0.3), (0.5, 0.1, 0.1)])}


@dataclass
class View:
    """One image to render: where, which way, and its light/vehicles."""

    name: str
    camera: Camera
    look: Look


class Streets:
    """The camera-eligible streets laid end to end, so positions can be drawn by arc length."""

    def __init__(self, world: World):
        self.items = [(line, hw, w) for line, hw, w in world.streets
                      if hw in CAMERA_HIGHWAYS and line.length > 1.0]
        if not self.items:
            raise GeolocError("no drivable or pedestrian streets to place cameras on")
        self.cum = np.concatenate([[0.0], np.cumsum([line.length for line, _, _ in self.items])])

    @property
    def length(self) -> float:
        return float(self.cum[-1])

    def locate(self, a: float) -> tuple[int, float]:
        k = int(np.clip(np.searchsorted(self.cum, a, side="right") - 1, 0, len(self.items) - 1))
        return k, float(a - self.cum[k])


def _tangent(line, d: float) -> tuple[float, float, float, float]:
    p = line.interpolate(d)
    q = line.interpolate(min(d + 0.5, line.length))
    r = line.interpolate(max(d - 0.5, 0.0))
    tx, ty = q.x - r.x, q.y - r.y
    n = math.hypot(tx, ty) or 1.0
    return p.x, p.y, tx / n, ty / n


def _clear(world: World, trunks, x: float, y: float, radius: float) -> bool:
    """Inside the scene, `radius` from every building and not hugging a tree trunk."""
    from shapely.geometry import Point

    if not (radius < x < world.size[0] - radius and radius < y < world.size[1] - radius):
        return False
    if trunks is not None and trunks.query_ball_point((x, y), TREE_CLEARANCE_M):
        return False
    return len(world.footprints.query(Point(x, y).buffer(radius, 8), predicate="intersects")) == 0


def _vehicles(world: World, line, hw: str, width: float, d_cam: float, cx: float, cy: float,
              rng: np.random.Generator, min_width: float = 5.0) -> np.ndarray:
    """Cars, vans and the odd bus parked or driving on the camera's own street."""
    if hw in PAVED_AS_STREET or width < min_width:
        return np.zeros((0, 11))
    rows = []
    for _ in range(rng.poisson(4.0)):
        d = d_cam + rng.choice([-1, 1]) * rng.uniform(5.0, 45.0)
        if not 0 < d < line.length:
            continue
        x, y, tx, ty = _tangent(line, d)
        kind = rng.choice([CAR, VAN, BUS], p=[0.82, 0.13, 0.05])
        hl, hwid, h = {CAR: (rng.uniform(2.0, 2.4), 0.9, rng.uniform(1.4, 1.6)),
                       VAN: (2.7, 1.0, 2.2), BUS: (5.5, 1.25, 4.3)}[kind]
        side = rng.choice([-1, 1])
        lateral = side * (width / 2 - hwid - 0.3 if rng.random() < 0.6 else width / 4)
        x, y = x + ty * lateral, y - tx * lateral
        if rng.random() < 0.5:
            tx, ty = -tx, -ty
        if math.hypot(x - cx, y - cy) < hl + 2.5 or not _fits(world, x, y, tx, ty, hl, hwid):
            continue
        colour = (0.62, 0.05, 0.05) if kind == BUS else CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
        if kind == VAN and rng.random() < 0.6:
            colour = (0.92, 0.92, 0.9)
        rows.append([x, y, tx, ty, hl, hwid, h, *np.array(colour) * rng.uniform(0.9, 1.05), kind])
    return np.array(rows, dtype=np.float64).reshape(-1, 11)


def _fits(world: World, x: float, y: float, tx: float, ty: float, hl: float, hw: float) -> bool:
    """A box of half length hl along (tx, ty) and half width hw at (x, y) stands clear of every building."""
    from shapely.geometry import Polygon

    corners = [(x + sa * hl * tx - sb * hw * ty, y + sa * hl * ty + sb * hw * tx)
               for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    return len(world.footprints.query(Polygon(corners), predicate="intersects")) == 0


def _furniture(world: World, line, width: float, d_cam: float, cx: float, cy: float,
               rng: np.random.Generator) -> np.ndarray:
    """Posts with signs, bins, bollards, cabinets and shelters along the kerbs of the camera's street."""
    kinds = list(FURNITURE)
    share = np.array([FURNITURE[k][1] for k in kinds])
    rows = []
    for _ in range(rng.poisson(5.0)):
        d = d_cam + rng.choice([-1, 1]) * rng.uniform(2.0, 40.0)
        if not 0 < d < line.length:
            continue
        kind = kinds[rng.choice(len(kinds), p=share / share.sum())]
        (hl, hwid, h), _, colours = FURNITURE[kind]
        x, y, tx, ty = _tangent(line, d)
        lateral = rng.choice([-1, 1]) * (width / 2 + rng.uniform(0.2, 1.2))
        x, y = x + ty * lateral, y - tx * lateral
        if math.hypot(x - cx, y - cy) < hl + 1.5 or not _fits(world, x, y, tx, ty, hl, hwid):
            continue
        colour = np.array(colours[rng.integers(len(colours))]) * rng.uniform(0.85, 1.1)
        rows.append([x, y, tx, ty, hl, hwid, h * rng.uniform(0.9, 1.1), *colour, kind])
    return np.array(rows, dtype=np.float64).reshape(-1, 11)


def _street_extras(world: World, look: Look, line, hw: str, width: float, d: float, cx: float, cy: float,
                   krng: np.random.Generator, knobs: tuple[str, ...]) -> Look:
    """The occluders knob: up to as many vehicles again, on streets down to 3.5 m wide; the furniture
    knob: street furniture along the kerbs."""
    extra = [look.vehicles]
    if "occluders" in knobs:
        more = _vehicles(world, line, hw, width, d, cx, cy, krng, min_width=3.5)
        extra.append(more[: int(krng.integers(0, len(more) + 1))])
    if "furniture" in knobs:
        extra.append(_furniture(world, line, width, d, cx, cy, krng))
    if len(extra) == 1:
        return look
    return dataclasses.replace(look, vehicles=np.concatenate(extra)[:MAX_VEHICLES])


def sample_views(world: World, split: str, n: int | None, spacing_m: float | None, seed: int,
                 condition: str = "day", size: int = 224, fov: float = 90.0, eye: float = 2.5,
                 headings: int = 1, knobs: tuple[str, ...] = ()) -> list[View]:
    """Training cameras ('train'): positions about one per spacing_m metres along all streets (or n in
    total); other splits: n independent uniform positions. Lateral offset inside the carriageway; never
    inside or against a building. With headings == 1 each position faces a random way; with more, a
    position is a Street-View-like panorama: `headings` views at one moment (same light and vehicles),
    evenly spaced, the first along the street give or take half a step. knobs: domain randomisation
    (retrieval.synth.randomize), drawn from a stream of their own."""
    from scipy.spatial import cKDTree

    krng = knob_rng(seed, split)

    streets = Streets(world)
    trunks = cKDTree(world.trees[:, :2]) if len(world.trees) else None
    rng = np.random.default_rng([seed, {"train": 1, "test": 2}.get(split, 3)])
    if split == "train":
        if n is not None:
            spacing_m = streets.length / max(n, 1)
        if not spacing_m or spacing_m <= 0:
            raise GeolocError("train cameras: give a positive count or spacing")
        anchors = np.arange(rng.uniform(0, spacing_m), streets.length, spacing_m)
        anchors = anchors + rng.uniform(-0.3, 0.3, len(anchors)) * spacing_m
        anchors = anchors[: n] if n is not None else anchors
    else:
        anchors = None
    views: list[View] = []
    attempts, placed = 0, 0
    wanted = len(anchors) if anchors is not None else n
    while placed < wanted:
        attempts += 1
        if attempts > 50 * wanted + 100:
            raise GeolocError(f"{split} cameras: could not find free street positions (buildings cover the streets?)")
        a = anchors[placed] if anchors is not None else rng.uniform(0, streets.length)
        k, d = streets.locate(a % streets.length)
        line, hw, width = streets.items[k]
        x, y, tx, ty = _tangent(line, d)
        half = max(width / 2 - (0.5 if hw in PAVED_AS_STREET else 1.0), 0.0)
        for lateral in (rng.uniform(-half, half), 0.0):
            cx, cy = x + ty * lateral, y - tx * lateral
            if _clear(world, trunks, cx, cy, CLEARANCE_M):
                break
        else:
            if anchors is not None:
                anchors[placed] += rng.uniform(1.0, 5.0)  # nudge along the street and retry
            continue
        if headings == 1:
            yaws = [float(rng.uniform(0, 360))]
        else:
            # The panorama's first view is along the street give or take half a step, drawn per position:
            # neighbouring positions then differ by up to half a step in heading, as a query may.
            step = 360.0 / headings
            first = math.degrees(math.atan2(tx, ty)) + rng.uniform(-step / 2, step / 2)  # clockwise from north
            yaws = [float((first + k * step) % 360) for k in range(headings)]
        look = sample_look(rng, condition)
        look.vehicles = _vehicles(world, line, hw, width, d, cx, cy, rng)
        look = _street_extras(world, randomize_look(look, krng, knobs), line, hw, width, d, cx, cy, krng, knobs)
        for yaw in yaws:
            cam = Camera(x=cx, y=cy, heading=yaw, pitch=float(np.clip(rng.normal(0, 1.5), -4, 4)),
                         roll=float(np.clip(rng.normal(0, 1.0), -3, 3)), eye=eye, fov=fov, width=size, height=size)
            views.append(View(name=f"{split}_{len(views):05d}", camera=randomize_camera(cam, krng, knobs), look=look))
        placed += 1
    return views


def route_views(world: World, walks: list[Walk], seed: int, condition: str = "day", size: int = 224,
                fov: float = 90.0, eye: float = 2.5, knobs: tuple[str, ...] = ()) -> list[View]:
    """The views of camera walks (retrieval.synth.routes): one light per route, vehicles per photo."""
    rng, krng = np.random.default_rng([seed, 5]), knob_rng(seed, "routes")
    views = []
    for r, w in enumerate(walks):
        light = randomize_look(sample_look(rng, condition), krng, knobs)
        for i, (x, y, heading, (line, hw, width, d)) in enumerate(zip(w.x, w.y, w.heading, w.streets)):
            look = dataclasses.replace(light, vehicles=_vehicles(world, line, hw, width, d, x, y, rng))
            look = _street_extras(world, look, line, hw, width, d, x, y, krng, knobs)
            cam = Camera(x=float(x), y=float(y), heading=float(heading),
                         pitch=float(np.clip(rng.normal(0, 1.5), -4, 4)), roll=float(np.clip(rng.normal(0, 1.0), -3, 3)),
                         eye=eye, fov=fov, width=size, height=size)
            views.append(View(name=f"route_{r:05d}_{i:03d}", camera=randomize_camera(cam, krng, knobs), look=look))
    return views


def clear_of(world: World):
    """Whether a camera may stand at x, y (as sample_views places them)."""
    from scipy.spatial import cKDTree

    trunks = cKDTree(world.trees[:, :2]) if len(world.trees) else None
    return lambda x, y: _clear(world, trunks, x, y, CLEARANCE_M)


# --- dataset writer ---------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(world: World) -> None:
    _WORKER["renderer"] = Renderer(world)


def _render_one(job) -> str:
    from PIL import Image

    view, path = job
    img = _WORKER["renderer"].render(view.camera, view.look)
    atomic_write(path, lambda p: Image.fromarray(img).save(p, format="JPEG", quality=view.look.jpeg_quality))
    return view.name


def render_views(world: World, views: list[View], image_dir: Path, workers: int = 2, desc: str = "render") -> int:
    """Render every view not already on disk (so a killed run resumes); returns how many were rendered."""
    from tqdm import tqdm

    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(v, image_dir / f"{v.name}.jpg") for v in views if not (image_dir / f"{v.name}.jpg").is_file()]
    if not jobs:
        return 0
    _init_worker(world)
    _WORKER["renderer"].render(Camera(x=world.size[0] / 2, y=world.size[1] / 2, heading=0, width=8, height=8),
                               sample_look(np.random.default_rng(0)))  # compile once, before forking
    bar = tqdm(total=len(jobs), desc=desc, unit="img")
    if workers <= 1 or len(jobs) < 8:
        for job in jobs:
            _render_one(job)
            bar.update()
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        # Forked workers inherit the renderer; spawned ones get the arrays (not the shapely index).
        initargs = () if ctx.get_start_method() == "fork" else (
            dataclasses.replace(world, footprints=None, footprint_polys=[], streets=[]),)
        with ctx.Pool(workers, initializer=_init_worker if initargs else None, initargs=initargs) as pool:
            for _ in pool.imap_unordered(_render_one, jobs, chunksize=8):
                bar.update()
    bar.close()
    return len(jobs)


def _plan_digest(args: dict) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def _write_manifests(out_dir: Path, city, world: World, splits: dict[str, list], walks: list, routes: list) -> None:
    """train/val/test.csv (path, lat, lon, heading) of the rendered views, and routes.csv of the walks."""
    for split, views in splits.items():
        if not views:
            continue
        xs = np.array([v.camera.x for v in views]) + world.origin[0]
        ys = np.array([v.camera.y for v in views]) + world.origin[1]
        lat, lon = city.projection.to_latlon(xs, ys)
        write_manifest(out_dir / f"{split}.csv", Manifest(
            paths=[(out_dir / "images" / f"{v.name}.jpg").resolve() for v in views], lat=lat, lon=lon,
            heading=np.array([v.camera.heading for v in views])))
    if routes:
        lat, lon = city.projection.to_latlon(np.concatenate([w.x for w in walks]) + world.origin[0],
                                             np.concatenate([w.y for w in walks]) + world.origin[1])
        write_routes_manifest(out_dir / "routes.csv", [out_dir / "images" / f"{v.name}.jpg" for v in routes],
                              lat, lon, [v.camera.heading for v in routes], capture_times(walks),
                              np.repeat(np.arange(len(walks)), [len(w.x) for w in walks]))


def render_dataset(osm_path: str | Path, out_dir: str | Path, n_train: int | None = None, n_test: int = 100,
                   size: int = 224, seed: int = 0, test_condition_shift: bool = False, workers: int = 2,
                   spacing_m: float | None = None, fov: float = 90.0, eye: float = 2.5,
                   write_graph: bool = True, headings: int = 1, n_val: int = 0, n_routes: int = 0,
                   route_len: int = 10, route_step: float = 10.0, knobs: tuple[str, ...] = ()) -> dict:
    """Render a street-view data set of an OSM extract into out_dir: images/*.jpg, train.csv,
    [val.csv,] test.csv (path,lat,lon,heading), dataset.json (source, attribution, settings),
    ATTRIBUTION.txt and streets.graphml; with n_routes, routes.csv too (path,lat,lon,heading,date,route:
    camera walks of route_len photos route_step metres apart, in the test views' condition;
    retrieval.synth.routes). n_train counts training positions, each rendered at `headings` headings;
    validation views are drawn like the test views (same condition), so model selection sees the
    queries the test asks. knobs: domain randomisation of every view (retrieval.synth.randomize).
    Same arguments, same bytes; a killed run picks up where it stopped."""
    t0 = time.perf_counter()
    osm_path, out_dir = Path(osm_path), Path(out_dir)
    if n_train is None and spacing_m is None:
        spacing_m = 10.0
    if (n_train is not None and n_train < 1) or n_test < 0 or n_val < 0 or size < 8 or not 1 <= headings <= 36:
        raise GeolocError("render: need at least 1 training view, non-negative test and validation counts, "
                          "size >= 8 and 1 to 36 headings")
    if not 10.0 <= fov <= 150.0 or not 0.3 <= eye <= 20.0:
        raise GeolocError(f"render: field of view {fov:g} (10 to 150 degrees) or eye height {eye:g} m "
                          "(0.3 to 20 m) out of range")
    args = {"osm": osm_path.name, "osm_sha256": hashlib.sha256(osm_path.read_bytes()).hexdigest()
            if osm_path.is_file() else None, "n_train": n_train, "n_test": n_test, "size": size, "seed": seed,
            "test_condition_shift": test_condition_shift, "spacing_m": spacing_m, "fov": fov, "eye": eye,
            "headings": headings, "n_val": n_val}
    if n_routes:  # only then: a render without routes keeps the plan digest it had before routes existed
        args.update(n_routes=n_routes, route_len=route_len, route_step=route_step)
    if knobs:  # the same for knobs
        args.update(randomize=list(knobs))
    plan_path = out_dir / "plan.json"
    if plan_path.is_file():
        old = json.loads(plan_path.read_text(encoding="utf-8"))
        if old.get("digest") != _plan_digest(args):
            raise GeolocError(f"{out_dir}: holds a render with other settings ({plan_path}); choose another --out")
    city = load_city(osm_path)
    world = world_from_city(city)
    atomic_write_json(plan_path, {"digest": _plan_digest(args), "args": args})
    t_load = time.perf_counter() - t0
    held_out = "dusk" if test_condition_shift else "day"
    train = sample_views(world, "train", n_train, spacing_m, seed, "day", size, fov, eye, headings, knobs)
    val = sample_views(world, "val", n_val, None, seed, held_out, size, fov, eye, knobs=knobs) if n_val else []
    test = sample_views(world, "test", n_test, None, seed, held_out, size, fov, eye, knobs=knobs) if n_test else []
    walks = sample_walks(city, world.origin, n_routes, route_len, route_step, seed, clear_of(world)) if n_routes else []
    routes = route_views(world, walks, seed, held_out, size, fov, eye, knobs)
    t1 = time.perf_counter()
    rendered = render_views(world, train + val + test + routes, out_dir / "images", workers)
    t_render = time.perf_counter() - t1
    _write_manifests(out_dir, city, world, {"train": train, "val": val, "test": test}, walks, routes)
    if write_graph:
        import osmnx as ox

        atomic_write(out_dir / "streets.graphml", lambda p: ox.save_graphml(city.graph, p))
    info = {
        "source": str(osm_path.resolve()), "attribution": city.attribution, "settings": args,
        "command": command_line(), "git": git_revision(),
        "crs": city.projection.crs.to_string(), "scene_origin_xy": list(world.origin),
        "counts": {"train": len(train), "val": len(val), "test": len(test), "routes": len(walks),
                   "buildings": int(len(world.buildings)), "walls": int(len(world.walls)), "trees": int(len(world.trees))},
        "street_length_m": round(Streets(world).length, 1),
        "train_spacing_m": round(Streets(world).length / max(len(train) // headings, 1), 2),
        "test_condition": held_out,
        "cameras": {v.name: {**asdict(v.camera), "vehicles": int(len(v.look.vehicles))}
                    for v in train + val + test + routes},
    }
    atomic_write_json(out_dir / "dataset.json", info)
    atomic_write_text(out_dir / "ATTRIBUTION.txt", f"Rendered from {osm_path.name}. {city.attribution}\n")
    return {"out": str(out_dir), "train": len(train), "val": len(val), "test": len(test), "routes": len(walks),
            "rendered": rendered, "load_s": round(t_load, 2), "render_s": round(t_render, 2),
            "images_per_s": round(rendered / t_render, 1) if rendered else None,
            "total_s": round(time.perf_counter() - t0, 2)}
