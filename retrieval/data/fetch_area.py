"""`geoloc data fetch panoramax|mapillary`: an area (a bbox or a place name) from one source into a data
folder, with its street graph; the work is in retrieval.data.fetch and the sources' modules."""
from __future__ import annotations

import os
from pathlib import Path

from retrieval import GeolocError
from retrieval.data.fetch import SIZES, Options, Summary, fetch, http_session
from retrieval.files import atomic_write

SOURCES = ("panoramax", "mapillary")


def area(bbox: str | None, place: str | None) -> tuple[float, float, float, float]:
    if bool(bbox) == bool(place):
        raise GeolocError("data fetch: give the area as --bbox W,S,E,N or as --place NAME (one of them)")
    return parse_bbox(bbox) if bbox else place_bbox(place)


def fetch_area(source: str, out: Path, bbox: str | None = None, place: str | None = None, api: str | None = None,
               size: str = "sd", max_pictures: int | None = None, pano_crops: int = 8, fov: float = 90.0,
               concurrency: int = 8, streets: Path | None = None, no_streets: bool = False,
               token: str | None = None, retries: int = 5, per_request: int | None = None,
               progress: bool = True) -> Summary:
    """Fetch the area's pictures from `source` into out (retrieval.data.fetch), then its streets.graphml unless
    no_streets (from the `streets` OSM extract, else downloaded)."""
    if size not in SIZES:
        raise GeolocError(f"data fetch: --size {size!r}: choose one of {', '.join(SIZES)}")
    if pano_crops < 0 or pano_crops > 36 or not 20 <= fov <= 150 or concurrency < 1 or retries < 0 \
            or (max_pictures is not None and max_pictures < 1):
        raise GeolocError(f"data fetch: --pano-crops {pano_crops} (0 to 36), --fov {fov:g} (20 to 150 degrees), "
                          f"--concurrency {concurrency} (at least 1), --retries {retries} (0 or more) or --max "
                          f"{max_pictures} (at least 1) out of range")
    if streets is not None and no_streets:
        raise GeolocError("data fetch: --streets and --no-streets contradict each other")
    box = area(bbox, place)
    if source == "panoramax":
        from retrieval.data import panoramax

        api = api or panoramax.DEFAULT_API
        opts = Options(Path(out), source, api, box, size, pano_crops, fov, concurrency, max_pictures, retries=retries)
        session = http_session(concurrency, retries)
        pictures = panoramax.search(api, box, size, session, opts.timeout_s, per_request or panoramax.PER_REQUEST)
        refresh, line = None, f"Photos: Panoramax, {api} (each under its own open licence)."
    elif source == "mapillary":
        from retrieval.data import mapillary

        api = api or mapillary.DEFAULT_API
        opts = Options(Path(out), source, api, box, size, pano_crops, fov, concurrency, max_pictures, retries=retries)
        client = mapillary.Mapillary(api, token or os.environ.get(mapillary.TOKEN_ENV, ""), size,
                                     http_session(concurrency, retries), opts.timeout_s,
                                     per_request or mapillary.PER_REQUEST)
        pictures, refresh = client.search(box), client.refresh
        line = f"Photos: Mapillary, {api}, under {mapillary.LICENCE} (https://creativecommons.org/licenses/by-sa/4.0/)."
    else:
        raise GeolocError(f"data fetch: source {source!r}: choose one of {', '.join(SOURCES)}")
    graph = None if no_streets else (lambda: write_streets(Path(out), box, streets))
    return fetch(pictures, opts, line, refresh, graph, progress)


def describe(out: Path, s: Summary, concurrency: int) -> str:
    """The one-paragraph report of a fetch."""
    rate = f", {s.fetched / s.seconds:.1f} pictures/s at concurrency {concurrency}" if s.fetched and s.seconds else ""
    parts = [f"wrote {out / 'photos.csv'}: {s.rows} photos of {s.pictures} pictures"
             f" ({s.fetched} fetched now{rate}, {s.already} by an earlier run"
             + (f", {s.panoramas} panoramas cut into views" if s.panoramas else "") + ")"]
    if s.no_position:
        parts.append(f"skipped {s.no_position} without a position")
    if s.no_heading:
        parts.append(f"{s.no_heading} without a direction (empty heading)")
    if s.failed:
        parts.append(f"{len(s.failed)} could not be had (named above; a rerun tries them again)")
    return "; ".join(parts)


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """--bbox W,S,E,N in degrees."""
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise GeolocError(f"--bbox {text!r}: expected W,S,E,N (four numbers, degrees)") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise GeolocError(f"--bbox {text!r}: need west < east in [-180, 180] and south < north in [-90, 90]")
    return w, s, e, n


def place_bbox(name: str) -> tuple[float, float, float, float]:
    """The bounding box of a place name, from OpenStreetMap's Nominatim through OSMnx (needs internet)."""
    import osmnx as ox

    try:
        w, s, e, n = (float(v) for v in ox.geocode_to_gdf(name).total_bounds)
    except Exception as exc:  # requests/OSMnx raise many types offline or for unknown places
        msg = str(exc).split(" (Caused by")[0].splitlines()[0] if str(exc) else ""
        raise GeolocError(f"--place {name!r}: cannot geocode it (no internet, or OpenStreetMap does not know it: "
                          f"{type(exc).__name__}: {msg[:160]}); give --bbox W,S,E,N instead") from None
    return w, s, e, n


def write_streets(out: Path, bbox: tuple[float, float, float, float], osm_file: Path | None = None) -> bool:
    """DIR/streets.graphml for the bbox: from an OSM extract (cut to the bbox), else downloaded through
    OSMnx (internet). Kept when it is already there (a resumed fetch)."""
    import osmnx as ox

    from retrieval.data.streets import download_graph, graph_from_xml, streets_only

    path = out / "streets.graphml"
    if path.is_file():
        return True
    w, s, e, n = bbox
    if osm_file is None:
        G = download_graph(f"bbox:{w},{s},{e},{n}", "all")
    else:
        if not osm_file.is_file():
            raise GeolocError(f"--streets {osm_file}: file not found")
        G = streets_only(graph_from_xml(osm_file), osm_file)
        try:
            G = ox.truncate.truncate_graph_bbox(G, (w, s, e, n), truncate_by_edge=True)
        except ValueError:  # "Found no graph nodes within the requested polygon"
            G = None
        if G is None or G.number_of_edges() == 0:
            raise GeolocError(f"--streets {osm_file}: no street of the extract lies in the bbox {w},{s},{e},{n}")
    G.graph.pop("created_date", None)  # the same bytes every run
    atomic_write(path, lambda p: ox.save_graphml(G, p))
    return True
