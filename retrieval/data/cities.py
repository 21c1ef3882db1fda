"""A data set of several cities (what `geoloc pretrain` trains on): one data folder whose manifests list
the photos of every city, and cities.json naming each city's folder and street graph.

Ground distances are measured within a city only; two photos of different cities are never near, so
they are always negatives of each other.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.files import atomic_write_json

CITIES_FILE = "cities.json"


def write_cities(data_dir: Path, cities: list[dict]) -> Path:
    """cities: [{"name", "folder" (its rendered data folder), "streets" (its street graph)}, ...]."""
    return atomic_write_json(Path(data_dir) / CITIES_FILE, {"cities": cities})


def read_cities(data: str | Path) -> list[dict]:
    """The cities of a multi-city data folder (data, or the folder of the manifest data), [] for one city."""
    data = Path(data)
    path = (data if data.is_dir() else data.parent) / CITIES_FILE
    if not path.is_file():
        return []
    try:
        cities = json.loads(path.read_text(encoding="utf-8"))["cities"]
        return [{"name": str(c["name"]), "folder": str(c["folder"]), "streets": str(c["streets"])} for c in cities]
    except (ValueError, KeyError, TypeError) as exc:
        raise GeolocError(f"{path}: not a list of cities with name, folder and streets ({exc})") from None


def city_of_photos(paths, cities: list[dict]) -> np.ndarray:
    """Each photo's city (its index in cities), by the city folder its file lies in."""
    folders = [str(Path(c["folder"]).resolve()) + "/" for c in cities]
    out = np.full(len(paths), -1)
    for i, p in enumerate(paths):
        here = str(Path(p).resolve())
        for c, folder in enumerate(folders):
            if here.startswith(folder):
                out[i] = c
                break
        else:
            raise GeolocError(f"{p}: in none of the cities of {CITIES_FILE} ({', '.join(c['name'] for c in cities)})")
    return out
