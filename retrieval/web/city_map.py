"""The city the page draws, as GeoJSON in lon/lat: the run's street graph as lines, or, where the run
has none, its database photos' positions as dots. The page draws it as vector lines itself, so no tile
server is needed and the map works offline."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.config import Config
from retrieval.data.streets import GRAPH_SUFFIXES, lonlat_lines

MAX_DOTS = 5000  # database positions drawn when there is no street graph: enough to show the city's shape


def street_source(cfg: Config) -> Path | None:
    """The street graph the run's data carries (DATA/streets.graphml, as the renderer saves it), else a local
    file named by embedding.streets; None when there is neither."""
    data = Path(cfg.data.train)
    candidates = [(data if data.is_dir() else data.parent) / "streets.graphml"]
    streets = cfg.embedding.streets
    if streets and streets.lower().endswith(GRAPH_SUFFIXES):
        candidates.append(Path(streets).expanduser())
    return next((p for p in candidates if p.is_file()), None)


def city_geojson(cfg: Config, lat: np.ndarray, lon: np.ndarray) -> dict:
    """A FeatureCollection of the streets (LineStrings) or, without a readable street graph, the database
    photos at lat/lon (one MultiPoint); `source` says which was drawn."""
    path = street_source(cfg)
    if path is not None:
        try:
            lines = [np.round(line, 6).tolist() for line in lonlat_lines(path)]
        except GeolocError as exc:
            warnings.warn(f"{exc}; the map shows the database photos instead", stacklevel=2)
            lines = []
        if lines:
            # the file's name alone: the page is for others, the server's folders are not theirs to see
            return {"type": "FeatureCollection", "source": f"streets: {path.name}",
                    "features": [{"type": "Feature", "properties": {"kind": "street"},
                                  "geometry": {"type": "LineString", "coordinates": c}} for c in lines]}
    pick = np.unique(np.linspace(0, len(lat) - 1, min(len(lat), MAX_DOTS)).astype(int))
    dots = np.round(np.column_stack([lon[pick], lat[pick]]), 6).tolist()
    return {"type": "FeatureCollection", "source": f"database photos ({len(pick)} of {len(lat)}): no street graph",
            "features": [{"type": "Feature", "properties": {"kind": "photos"},
                          "geometry": {"type": "MultiPoint", "coordinates": dots}}]}
