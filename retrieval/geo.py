"""Distances on the Earth, a local metric projection (UTM) and the bounding polygon of a data set."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from pyproj import CRS, Transformer
from shapely.geometry import MultiPoint, Polygon, shape
from shapely.geometry.base import BaseGeometry

from retrieval import GeolocError

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius


def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres; arguments broadcast like numpy arrays (degrees)."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def utm_crs(lat: float, lon: float) -> CRS:
    zone = int((lon + 180) // 6) % 60 + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


class LocalProjection:
    """lat/lon <-> metres in the UTM zone of a reference point (a city fits well inside one zone)."""

    def __init__(self, lat: float, lon: float, crs: CRS | None = None):
        self.crs = crs or utm_crs(lat, lon)
        self._fwd = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)
        self._inv = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)

    @classmethod
    def for_points(cls, lat, lon) -> "LocalProjection":
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        return cls(float(np.mean(lat)), float(np.mean(lon)))

    def to_xy(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._fwd.transform(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
        return np.asarray(x), np.asarray(y)

    def to_latlon(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        lon, lat = self._inv.transform(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        return np.asarray(lat), np.asarray(lon)


def _polygon_from_geojson(path: Path) -> BaseGeometry:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GeolocError(f"{path}: not readable GeoJSON ({exc})") from exc
    if obj.get("type") == "FeatureCollection":
        geoms = [shape(f["geometry"]) for f in obj.get("features", []) if f.get("geometry")]
    elif obj.get("type") == "Feature":
        geoms = [shape(obj["geometry"])]
    else:
        geoms = [shape(obj)]
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        raise GeolocError(f"{path}: no Polygon or MultiPolygon in the GeoJSON")
    from shapely.ops import unary_union

    return unary_union(polys)


def _polygon_from_csv(path: Path) -> Polygon:
    """The seed study's boundary file: one vertex per row, columns lat and lng (or lon)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        lon_col = cols.get("lng") or cols.get("lon")
        if "lat" not in cols or not lon_col:
            raise GeolocError(f"{path}: boundary CSV needs columns lat and lng (found {reader.fieldnames})")
        pts = []
        for row_no, row in enumerate(reader, start=2):
            try:
                pts.append((float(row[lon_col]), float(row[cols["lat"]])))
            except (TypeError, ValueError):
                raise GeolocError(f"{path}: row {row_no}: lat/lng is not a number") from None
    if len(pts) < 3:
        raise GeolocError(f"{path}: a boundary needs at least 3 vertices, found {len(pts)}")
    poly = Polygon(pts)
    if not poly.is_valid:
        poly = poly.buffer(0)
    return poly


def bounding_polygon(boundary: str | Path | None = None, lat=None, lon=None,
                     concave_ratio: float | None = None) -> BaseGeometry:
    """The area a data set covers, in lon/lat: from a boundary file, else the hull of the photos.

    concave_ratio (0..1, shapely.concave_hull) gives a tighter outline than the convex hull.
    """
    if boundary:
        path = Path(boundary)
        if not path.is_file():
            raise GeolocError(f"{path}: boundary file not found")
        if path.suffix.lower() in (".geojson", ".json"):
            return _polygon_from_geojson(path)
        if path.suffix.lower() == ".csv":
            return _polygon_from_csv(path)
        raise GeolocError(f"{path}: boundary must be .geojson/.json or a lat,lng .csv")
    if lat is None or lon is None or len(lat) < 3:
        raise GeolocError("bounding polygon: need a boundary file or at least 3 photos")
    pts = MultiPoint(np.column_stack([np.asarray(lon, float), np.asarray(lat, float)]))
    if concave_ratio is not None:
        import shapely

        return shapely.concave_hull(pts, ratio=concave_ratio)
    return pts.convex_hull


def heading_gap_deg(a, b) -> np.ndarray:
    """Smallest angle between headings a and b (degrees, 0..180)."""
    d = np.abs(np.asarray(a, float) - np.asarray(b, float)) % 360.0
    return np.minimum(d, 360.0 - d)
