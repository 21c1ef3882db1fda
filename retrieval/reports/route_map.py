"""A decoded route written for people: GeoJSON (the photos and the street path joining them) and a PNG of
it on the street map. Apart from retrieval.answering.route so that loading a config does not load matplotlib."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import shapely  # noqa: E402

from retrieval.answering.route import Route  # noqa: E402
from retrieval.files import atomic_write, atomic_write_json  # noqa: E402

MARGIN_M = 150.0  # streets drawn this far around the route (in degrees, roughly, below)
MAX_LEGEND = 10  # segments named in the legend at most


def route_png(route: Route, path: str | Path, db_lat=None, db_lon=None) -> Path:
    """The route on its street map (or, without a street graph, among the database photos): each segment's
    street path in its own colour, the photos numbered on it, and a grey line from each photo's
    single-photo answer to its place on the route."""
    pts = [pt for pt in route.points if not pt.error]
    lat, lon = np.array([pt.lat for pt in pts]), np.array([pt.lon for pt in pts])
    pad = MARGIN_M / 111_000
    box = (lon.min() - pad * 1.6, lat.min() - pad, lon.max() + pad * 1.6, lat.max() + pad)
    fig, ax = plt.subplots(figsize=(8, 8))
    if route.graph is not None:
        g = route.graph
        for line in g.geometry[shapely.intersects(g.geometry, shapely.box(*_xy_box(g, box)))]:
            la, lo = g.projection.to_latlon(*shapely.get_coordinates(line).T)
            ax.plot(lo, la, color="0.75", lw=0.8, zorder=1)
    elif db_lat is not None:
        ax.scatter(db_lon, db_lat, s=2, color="0.75", zorder=1, label="database photos")
    colours = plt.get_cmap("tab10")
    labelled = len(route.paths) <= MAX_LEGEND  # past that a legend would cover the map: the title counts them
    for s, line in enumerate(route.paths):
        ax.plot(line[:, 1], line[:, 0], color=colours(s % 10), lw=2.5, zorder=2,
                label=f"segment {s + 1}" if labelled else None)
    for i, pt in ((i, pt) for i, pt in enumerate(route.points) if not pt.error):  # numbered as printed
        ax.plot([pt.single.lon, pt.lon], [pt.single.lat, pt.lat], color="0.4", lw=0.6, zorder=3)
        ax.scatter([pt.single.lon], [pt.single.lat], marker="x", s=18, color="0.3", zorder=3)
        ax.scatter([pt.lon], [pt.lat], s=40, color=colours(pt.segment % 10), edgecolors="k", zorder=4)
        ax.annotate(str(i + 1), (pt.lon, pt.lat), xytext=(4, 4), textcoords="offset points", fontsize=8, zorder=5)
    ax.set_xlim(box[0], box[2])
    ax.set_ylim(box[1], box[3])
    ax.set_aspect(1 / np.cos(np.radians(lat.mean())))
    ax.ticklabel_format(useOffset=False)
    ax.locator_params(axis="x", nbins=5)
    segments = "" if labelled else f", {len(route.paths)} segments (colours repeat)"
    ax.set_title(f"Route of {len(pts)} photos ({route.distance} steps, ordered by {route.order}{segments}); "
                 "x: single-photo answers", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=7)

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")

    atomic_write(path, write)
    plt.close(fig)
    return Path(path)


def _xy_box(g, box) -> tuple[float, float, float, float]:
    x, y = g.projection.to_xy(np.array([box[1], box[3]]), np.array([box[0], box[2]]))
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def write_route(route: Route, geojson: str | Path, db_lat=None, db_lon=None) -> tuple[Path, Path]:
    """GEOJSON and a PNG beside it (same name, .png); returns both paths."""
    geojson = Path(geojson)
    atomic_write_json(geojson, route.geojson())
    return geojson, route_png(route, geojson.with_suffix(".png"), db_lat, db_lon)
