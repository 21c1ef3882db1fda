"""Square and Voronoi cells over a city's bounding polygon, in metres (the study worked in degrees).

Every point gets exactly one cell. Inside the boundary: a square lattice cell is half-open
([x0, x0 + s) x [y0, y0 + s)), and a Voronoi point goes to its nearest centre with ties broken towards
the lower cell id. Outside the boundary (a test photo beyond the training photos' hull): the nearest
cell polygon.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from scipy.spatial import Voronoi, cKDTree
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from retrieval import GeolocError
from retrieval.files import atomic_write_json
from retrieval.geo import LocalProjection, bounding_polygon



def _map_coords(geom: BaseGeometry, fn) -> BaseGeometry:
    """Apply fn(a, b) -> (c, d) (coordinate arrays) to every vertex of geom."""
    return shapely.transform(geom, lambda xy: np.column_stack(fn(xy[:, 0], xy[:, 1])))


@dataclass
class Grid:
    kind: str
    projection: LocalProjection
    ref: tuple[float, float]  # lat, lon the projection was made for
    cells: list[BaseGeometry]  # metres, clipped to the boundary; list index = cell id
    boundary: BaseGeometry  # metres
    cell_size_m: float
    origin: tuple[float, float] = (0.0, 0.0)  # square: lower-left corner of the lattice
    lattice: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))  # square: (i, j) per cell
    centres: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))  # voronoi: centre per cell

    def __len__(self) -> int:
        return len(self.cells)

    def assign_xy(self, x, y) -> np.ndarray:
        x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
        cell = np.full(len(x), -1, dtype=np.int64)
        inside = shapely.intersects_xy(self.boundary, x, y)
        if self.kind == "square":
            i = np.floor((x - self.origin[0]) / self.cell_size_m).astype(np.int64)
            j = np.floor((y - self.origin[1]) / self.cell_size_m).astype(np.int64)
            ids = {(int(a), int(b)): c for c, (a, b) in enumerate(self.lattice)}
            cell[inside] = [ids.get((a, b), -1) for a, b in zip(i[inside], j[inside])]
        else:
            k = min(4, len(self.centres))
            d, idx = cKDTree(self.centres).query(np.column_stack([x, y]), k=k)
            d, idx = d.reshape(len(x), k), idx.reshape(len(x), k)
            # Equidistant centres (a point on a shared border): the lowest id wins, deterministically.
            tied = np.where(np.isclose(d, d[:, :1], rtol=0, atol=1e-9), idx, np.iinfo(np.int64).max)
            cell[inside] = tied.min(axis=1)[inside]
        rest = np.flatnonzero(cell < 0)
        if len(rest):
            tree = shapely.STRtree(self.cells)
            cell[rest] = tree.query_nearest(shapely.points(x[rest], y[rest]), all_matches=False)[1]
        return cell

    def assign(self, lat, lon) -> np.ndarray:
        return self.assign_xy(*self.projection.to_xy(lat, lon))

    def polygon_centroids(self) -> tuple[np.ndarray, np.ndarray]:
        """lat, lon of each cell polygon's centroid."""
        c = np.array([[g.centroid.x, g.centroid.y] for g in self.cells])
        return self.projection.to_latlon(c[:, 0], c[:, 1])

    def to_geojson(self, properties: dict[str, list] | None = None) -> dict:
        """FeatureCollection in lon/lat; `grid` keeps the exact metre parameters for from_geojson."""
        def lonlat(g):
            return _map_coords(g, lambda x, y: self.projection.to_latlon(x, y)[::-1])

        features = []
        for c, g in enumerate(self.cells):
            props = {"cell": c, "area_m2": round(g.area, 1)}
            if self.kind == "square":
                props["i"], props["j"] = (int(v) for v in self.lattice[c])
            else:
                props["centre_x"], props["centre_y"] = (float(v) for v in self.centres[c])
            for k, values in (properties or {}).items():
                props[k] = values[c]
            features.append({"type": "Feature", "geometry": mapping(lonlat(g)), "properties": props})
        return {
            "type": "FeatureCollection",
            "grid": {"kind": self.kind, "ref_lat": self.ref[0], "ref_lon": self.ref[1],
                     "cell_size_m": self.cell_size_m, "origin_x": self.origin[0], "origin_y": self.origin[1],
                     "boundary": mapping(lonlat(self.boundary))},
            "features": features,
        }

    def save(self, path: str | Path, properties: dict[str, list] | None = None) -> Path:
        return atomic_write_json(path, self.to_geojson(properties))

    @classmethod
    def load(cls, path: str | Path) -> tuple["Grid", list[dict]]:
        """The grid and each cell's properties from a GeoJSON written by save()."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            g = obj["grid"]
            proj = LocalProjection(g["ref_lat"], g["ref_lon"])

            def metres(geom):
                return _map_coords(shape(geom), lambda lon, lat: proj.to_xy(lat, lon))

            feats = sorted(obj["features"], key=lambda f: f["properties"]["cell"])
            props = [f["properties"] for f in feats]
            grid = cls(kind=g["kind"], projection=proj, ref=(g["ref_lat"], g["ref_lon"]),
                       cells=[metres(f["geometry"]) for f in feats], boundary=metres(g["boundary"]),
                       cell_size_m=g["cell_size_m"], origin=(g["origin_x"], g["origin_y"]))
            if grid.kind == "square":
                grid.lattice = np.array([[p["i"], p["j"]] for p in props], dtype=np.int64)
            else:
                grid.centres = np.array([[p["centre_x"], p["centre_y"]] for p in props])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GeolocError(f"{path}: not a grid GeoJSON written by geoloc ({type(exc).__name__}: {exc})") from None
        return grid, props


def _projected(boundary_lonlat: BaseGeometry) -> tuple[LocalProjection, tuple[float, float], BaseGeometry]:
    c = boundary_lonlat.centroid
    proj = LocalProjection(c.y, c.x)
    poly = _map_coords(boundary_lonlat, lambda lon, lat: proj.to_xy(lat, lon))
    if poly.area <= 0:
        raise GeolocError("grid: the boundary has no area (photos on a line?)")
    return proj, (c.y, c.x), poly


def square_grid(boundary_lonlat: BaseGeometry, cell_size_m: float) -> Grid:
    """Squares of cell_size_m from the boundary's south-west corner, clipped; squares off it dropped."""
    proj, ref, poly = _projected(boundary_lonlat)
    x0, y0, x1, y1 = poly.bounds
    nx, ny = int(np.ceil((x1 - x0) / cell_size_m)), int(np.ceil((y1 - y0) / cell_size_m))
    cells, lattice = [], []
    for j in range(ny):
        for i in range(nx):
            sq = box(x0 + i * cell_size_m, y0 + j * cell_size_m, x0 + (i + 1) * cell_size_m,
                     y0 + (j + 1) * cell_size_m)
            clipped = sq.intersection(poly)
            if clipped.area > 0:
                cells.append(clipped)
                lattice.append((i, j))
    return Grid("square", proj, ref, cells, poly, cell_size_m, origin=(x0, y0),
                lattice=np.array(lattice, dtype=np.int64))


def sample_centres(boundary: BaseGeometry, spacing_m: float, border_m: float, seed: int = 0,
                   patience: int = 2000) -> np.ndarray:
    """Dart throwing: uniform candidates inside the boundary are kept when at least border_m from its
    edge and spacing_m from every kept centre; stops after `patience` rejections in a row."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = boundary.bounds
    edge = boundary.boundary
    kept: list[tuple[float, float]] = []
    buckets: dict[tuple[int, int], list[tuple[float, float]]] = {}  # spacing-sized hash of kept centres

    def far_enough(x: float, y: float) -> bool:
        bx, by = int(np.floor(x / spacing_m)), int(np.floor(y / spacing_m))
        return all(np.hypot(x - px, y - py) >= spacing_m
                   for dx in (-1, 0, 1) for dy in (-1, 0, 1) for px, py in buckets.get((bx + dx, by + dy), ()))

    failures = 0
    bar = tqdm(desc="voronoi centres", unit="centre", leave=False)
    while failures < patience:
        xs, ys = rng.uniform(x0, x1, 512), rng.uniform(y0, y1, 512)
        ok = shapely.contains_xy(boundary, xs, ys)
        ok[ok] = shapely.distance(edge, shapely.points(xs[ok], ys[ok])) >= border_m
        for x, y, good in zip(xs, ys, ok):
            if good and far_enough(x, y):
                kept.append((x, y))
                buckets.setdefault((int(np.floor(x / spacing_m)), int(np.floor(y / spacing_m))), []).append((x, y))
                failures = 0
                bar.update(1)
            else:
                failures += 1
                if failures >= patience:
                    break
    bar.close()
    if not kept:
        raise GeolocError(f"grid: no Voronoi centre fits {border_m:g} m inside the boundary; "
                          "lower cells.border_spacing_m")
    return np.array(kept)


def voronoi_grid(boundary_lonlat: BaseGeometry, spacing_m: float, border_m: float = 0.0,
                 seed: int = 0) -> Grid:
    """Voronoi cells of rejection-sampled centres (see sample_centres), clipped to the boundary."""
    proj, ref, poly = _projected(boundary_lonlat)
    centres = sample_centres(poly, spacing_m, border_m, seed)
    x0, y0, x1, y1 = poly.bounds
    # Four far-away sentinels make every real centre's region finite.
    far = 10 * max(x1 - x0, y1 - y0, spacing_m)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sentinels = np.array([[cx - far, cy - far], [cx + far, cy - far], [cx + far, cy + far], [cx - far, cy + far]])
    vor = Voronoi(np.vstack([centres, sentinels]))
    cells = []
    for i in range(len(centres)):
        region = vor.regions[vor.point_region[i]]
        # A Voronoi region is convex, so its hull is the polygon whatever the vertex order.
        cells.append(shapely.MultiPoint(vor.vertices[region]).convex_hull.intersection(poly))
    return Grid("voronoi", proj, ref, cells, poly, spacing_m, centres=centres)


def build_grid(kind: str, boundary_lonlat: BaseGeometry, cell_size_m: float, border_spacing_m: float = 0.0,
               seed: int = 0) -> Grid:
    if kind == "square":
        return square_grid(boundary_lonlat, cell_size_m)
    return voronoi_grid(boundary_lonlat, cell_size_m, border_spacing_m, seed)


def make_grid(cfg, train) -> Grid:
    c = cfg.cells
    boundary = bounding_polygon(c.boundary or None, train.lat, train.lon)
    return build_grid(c.grid, boundary, c.cell_size_m, c.border_spacing_m, cfg.seed)


def cell_classes_of(cfg, train, heading_bins: int = 1) -> np.ndarray:
    """Each training photo's class: its occupied cell of the `cells` grid, or with heading_bins > 1 its
    (cell, heading bin) pair, bins of 360/heading_bins degrees centred on north; numbered in cell order."""
    key = make_grid(cfg, train).assign(train.lat, train.lon)
    if heading_bins > 1:
        width = 360.0 / heading_bins
        key = key * heading_bins + ((train.heading + width / 2) % 360 // width).astype(int)
    return np.unique(key, return_inverse=True)[1]
