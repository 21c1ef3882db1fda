"""The street graph: load it, snap photos onto its edges, and walking distances between photos.

Two photos 20 m apart on parallel streets joined only far away are not the same place; the
geodesic distance along the street graph says so where the straight line does not. Distances here
are undirected (one-way streets do not matter for how far apart two photos are) and in metres.
"""
from __future__ import annotations

import collections
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import scipy.sparse as sp
import shapely
from pyproj import CRS
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree
from tqdm import tqdm

from retrieval import GeolocError
from retrieval.data.osm_xml import clipped_message, is_street, sort_merged_attributes, write_without_dangling
from retrieval.geo import LocalProjection, haversine_m, utm_crs

# OSMnx network types, for downloaded graphs (a local OSM file keeps every street whatever the type)
GRAPH_SUFFIXES = (".osm", ".osm.bz2", ".xml", ".graphml")


@dataclass
class StreetGraph:
    """An undirected street graph in a UTM projection, as flat arrays for fast snapping and search."""

    graph: nx.MultiGraph  # projected, undirected; node ids are OSM ids
    projection: LocalProjection  # lat/lon <-> the graph's x/y metres
    nodes: np.ndarray  # (N,) OSM node id of each node index
    edge_u: np.ndarray  # (E,) node index where the edge geometry starts
    edge_v: np.ndarray  # (E,) node index where it ends
    edge_key: list  # (E,) (u, v, key) of each edge in `graph`
    # (E,) polyline length in the projection: the metric of snapping offsets and of the euclidean
    # ablation (OSMnx's 'length' is on a sphere, up to 0.3% off the ellipsoid at mid latitudes)
    length_m: np.ndarray
    geometry: np.ndarray  # (E,) shapely LineStrings in x/y metres, oriented from edge_u to edge_v

    @classmethod
    def from_networkx(cls, G: nx.MultiDiGraph | nx.MultiGraph, crs: CRS | None = None) -> "StreetGraph":
        """Project an OSMnx graph to UTM (the zone of its centre, as LocalProjection picks) and make it undirected."""
        import osmnx as ox

        if len(G) == 0 or G.number_of_edges() == 0:
            raise GeolocError("street graph: no streets (the graph has no edges)")
        latlon = G if CRS.from_user_input(G.graph["crs"]).is_geographic else ox.project_graph(G, to_latlong=True)
        lon, lat = np.array([[d["x"], d["y"]] for _, d in latlon.nodes(data=True)]).T
        lat0 = float((lat.min() + lat.max()) / 2)
        lon0 = float((lon.min() + lon.max()) / 2)
        projection = LocalProjection(lat0, lon0, crs or utm_crs(lat0, lon0))
        Gp = ox.project_graph(latlon, to_crs=projection.crs)
        if not isinstance(Gp, nx.MultiDiGraph):
            Gp = nx.MultiDiGraph(Gp)
        Gu = ox.convert.to_undirected(Gp)

        nodes = np.array(list(Gu.nodes), dtype=np.int64)
        pos = {n: i for i, n in enumerate(nodes.tolist())}
        keys, us, vs, geoms = [], [], [], []
        for u, v, k, d in Gu.edges(keys=True, data=True):
            keys.append((u, v, k))
            # to_undirected gives every edge a geometry and records the end it starts from in 'from'/'to'
            us.append(pos[d["from"]])
            vs.append(pos[d["to"]])
            geoms.append(d["geometry"])
        geometry = np.array(geoms, dtype=object)
        return cls(graph=Gu, projection=projection, nodes=nodes, edge_u=np.array(us, dtype=np.int64),
                   edge_v=np.array(vs, dtype=np.int64), edge_key=keys, length_m=shapely.length(geometry),
                   geometry=geometry)

    @property
    def crs(self) -> CRS:
        return self.projection.crs


def _min_csr(rows, cols, weights, n: int) -> sp.csr_matrix:
    """Sparse (n, n) matrix keeping the smallest weight of duplicate (row, col) pairs (scipy would sum them).

    Zero weights stay as explicit entries: csgraph reads them as zero-length edges (coincident photos)."""
    rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
    order = np.lexsort((weights, cols, rows))
    rows, cols, weights = rows[order], cols[order], weights[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return sp.csr_matrix((weights[first], (rows[first], cols[first])), shape=(n, n))


def download_graph(source: str, network_type: str):
    import osmnx as ox

    kind, _, what = source.partition(":")
    try:
        if kind == "bbox":
            try:
                bbox = tuple(float(v) for v in what.split(","))
            except ValueError:
                bbox = ()
            if len(bbox) != 4:
                raise GeolocError(f"{source!r}: expected bbox:lon_min,lat_min,lon_max,lat_max")
            return ox.graph_from_bbox(bbox, network_type=network_type)
        return ox.graph_from_place(what, network_type=network_type)
    except GeolocError:
        raise
    except Exception as exc:  # requests/OSMnx raise many types offline or for unknown places
        msg = str(exc).split(" (Caused by")[0].splitlines()[0] if str(exc) else ""
        raise GeolocError(f"cannot download the street graph for {source!r} (no internet, or OpenStreetMap "
                          f"does not know it): {type(exc).__name__}: {msg}"[:300]) from exc


def load_graph(source: str | Path, network_type: str = "walk") -> StreetGraph:
    """The street graph from a local .osm/.osm.bz2/.xml/.graphml file, or downloaded (needs internet) for
    'bbox:lon_min,lat_min,lon_max,lat_max' or 'place:NAME'.

    From a local OSM file the streets are the ways the renderer takes for streets (retrieval.synth.osm.
    is_street: not proposed, abandoned, platforms or areas), whatever the network_type, which applies to
    downloads.
    """
    import osmnx as ox

    text = str(source)
    if text.startswith(("bbox:", "place:")):
        return StreetGraph.from_networkx(download_graph(text, network_type))
    path = Path(source)
    if not path.name.lower().endswith(GRAPH_SUFFIXES):
        raise GeolocError(f"{path}: street graph must be {', '.join(GRAPH_SUFFIXES)}, 'bbox:...' or 'place:...'")
    if not path.is_file():
        raise GeolocError(f"{path}: street graph file not found")
    try:
        if path.suffix.lower() == ".graphml":
            G = ox.load_graphml(path)
        else:
            G = graph_from_xml(path)
    except GeolocError:
        raise
    except Exception as exc:  # XML/bz2/graphml parsers raise many types for a damaged file
        raise GeolocError(f"{path}: cannot read street graph ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if path.suffix.lower() != ".graphml":
        G = streets_only(G, path)
    return StreetGraph.from_networkx(G)


def graph_from_xml(path: Path) -> nx.MultiDiGraph:
    """OSMnx's graph of an OSM XML file; an extract clipped at a bounding box (ways that run on to nodes
    outside it) is read without the missing nodes, with a warning that counts them."""
    import osmnx as ox

    try:
        # retain_all: an extract's streets may be split into pieces at its border
        return ox.graph_from_xml(path, retain_all=True, simplify=False)
    except ValueError as exc:  # "Some edges missing nodes, possibly due to input data clipping issue"
        if "missing nodes" not in str(exc):
            raise
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "unclipped.osm"
        counts = write_without_dangling(path, clean)
        G = ox.graph_from_xml(clean, retain_all=True, simplify=False)
    warnings.warn(clipped_message(path, {**counts, "members": 0}), stacklevel=3)
    return G


def streets_only(G: nx.MultiDiGraph, path: Path) -> nx.MultiDiGraph:
    """graph_from_xml turns every OSM way into edges, buildings and coastlines included: keep the streets
    (by the renderer's rule, retrieval.data.osm_xml.is_street)."""
    import osmnx as ox

    G.remove_edges_from([(u, v, k) for u, v, k, d in G.edges(keys=True, data=True) if not is_street(d)])
    G.remove_nodes_from(list(nx.isolates(G)))
    if G.number_of_edges() == 0:
        raise GeolocError(f"{path}: no highway ways (is it an OpenStreetMap extract?)")
    G = ox.simplify_graph(G)
    sort_merged_attributes(G)  # merged ways' tag lists in one order whatever PYTHONHASHSEED
    return G


@dataclass
class Snap:
    """Where each photo lies on the street graph; excluded photos have edge -1 and NaN offset."""

    edge: np.ndarray  # (n,) edge index, -1 when farther than max_snap_m from every street
    offset_m: np.ndarray  # (n,) metres along the edge from its edge_u end
    distance_m: np.ndarray  # (n,) straight-line distance from the photo to the edge
    max_snap_m: float

    @property
    def kept(self) -> np.ndarray:
        return self.edge >= 0

    @property
    def excluded(self) -> int:
        return int((~self.kept).sum())


def snap_photos(graph: StreetGraph, lat, lon, max_snap_m: float = 30.0, describe=None) -> Snap:
    """Snap each photo to the nearest point of the nearest edge polyline (not the straight chord).

    Photos farther than max_snap_m from any street are excluded, with one warning that counts them
    (describe(i), e.g. Manifest.describe, names photo i there: its manifest and row)."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    x, y = graph.projection.to_xy(lat, lon)
    points = shapely.points(np.atleast_1d(x), np.atleast_1d(y))
    tree = shapely.STRtree(graph.geometry)
    (photo, edge), dist = tree.query_nearest(points, max_distance=max_snap_m, return_distance=True,
                                             all_matches=False)
    n = len(points)
    out_edge = np.full(n, -1, dtype=np.int64)
    out_edge[photo] = edge
    distance = np.full(n, np.nan)
    distance[photo] = dist
    offset = np.full(n, np.nan)
    frac = shapely.line_locate_point(graph.geometry[edge], points[photo], normalized=True)
    # edges of zero length (two OSM nodes at one spot) give NaN fractions
    offset[photo] = np.nan_to_num(frac) * graph.length_m[edge]
    snap = Snap(edge=out_edge, offset_m=offset, distance_m=distance, max_snap_m=max_snap_m)
    if snap.excluded:
        far = np.flatnonzero(~snap.kept)
        shown = ", ".join(f"#{i}" for i in far[:5]) + (", ..." if len(far) > 5 else "")
        lat1, lon1 = np.broadcast_to(lat, (n,))[far[0]], np.broadcast_to(lon, (n,))[far[0]]
        first = f"{describe(int(far[0]))}, " if describe is not None else ""
        warnings.warn(f"{snap.excluded} of {n} photos are more than {max_snap_m:g} m from any street "
                      f"and are excluded from mining (photos {shown}; #{far[0]} is {first}at lat {lat1:.6f}, "
                      f"lon {lon1:.6f}; `geoloc data check` names the manifest rows of photos far from the rest)")
    return snap


def photo_graph(graph: StreetGraph, snap: Snap) -> tuple[sp.csr_matrix, np.ndarray]:
    """The street graph with every kept photo inserted as a node that splits its edge.

    Returns the (N + m, N + m) adjacency and the original index of each of the m photo nodes (node N + j).
    A shortest path between photo nodes is then exactly the geodesic distance: along the edge when that
    is shortest, else offset + graph path + offset through the best pair of edge ends."""
    n_nodes = len(graph.nodes)
    photos = np.flatnonzero(snap.kept)
    photos = photos[np.lexsort((snap.offset_m[photos], snap.edge[photos]))]
    edge = snap.edge[photos]
    offset = np.clip(snap.offset_m[photos], 0.0, graph.length_m[edge])
    node = n_nodes + np.arange(len(photos))

    # each edge with photos becomes the chain u - p1 - ... - pk - v
    first = np.ones(len(photos), dtype=bool)
    first[1:] = edge[1:] != edge[:-1]
    last = np.ones(len(photos), dtype=bool)
    last[:-1] = first[1:]
    prev_node = np.where(first, graph.edge_u[edge], np.roll(node, 1))
    prev_offset = np.where(first, 0.0, np.roll(offset, 1))
    bare = np.setdiff1d(np.arange(len(graph.length_m)), edge)
    bare = bare[graph.edge_u[bare] != graph.edge_v[bare]]
    rows = np.concatenate([prev_node, node[last], graph.edge_u[bare]])
    cols = np.concatenate([node, graph.edge_v[edge[last]], graph.edge_v[bare]])
    weights = np.concatenate([offset - prev_offset, graph.length_m[edge[last]] - offset[last],
                              graph.length_m[bare]])
    return _min_csr(rows, cols, weights, n_nodes + len(photos)), photos


def geodesic_neighbours(graph: StreetGraph, snap: Snap, radius_m: float, progress: bool = True,
                        chunk_bytes: int = 64 << 20) -> sp.csr_matrix:
    """Geodesic distances (metres) between all photo pairs within radius_m of each other along the streets.

    Returns an (n, n) symmetric CSR matrix. An entry is stored, explicitly even when it is 0 (a photo
    and itself, coincident photos), exactly when the pair is within radius_m: read membership from the
    sparsity structure, never from `!= 0`. Rows of excluded photos are empty.
    """
    adjacency, photos = photo_graph(graph, snap)
    n_nodes, m = len(graph.nodes), len(photos)
    n = len(snap.edge)
    chunk = max(1, chunk_bytes // (8 * adjacency.shape[0]))
    rows, cols, vals = [], [], []
    with tqdm(total=m, desc="geodesic neighbours", unit="photo", disable=not progress or m == 0) as bar:
        for start in range(0, m, chunk):
            sources = np.arange(start, min(start + chunk, m))
            dist = dijkstra(adjacency, directed=False, indices=n_nodes + sources, limit=radius_m)[:, n_nodes:]
            r, c = np.nonzero(dist <= radius_m)
            rows.append(photos[sources[r]])
            cols.append(photos[c])
            vals.append(dist[r, c])
            bar.update(len(sources))
    return _csr(rows, cols, vals, n)


def euclidean_neighbours(lat, lon, radius_m: float, keep=None,
                         projection: LocalProjection | None = None) -> sp.csr_matrix:
    """Straight-line distances within radius_m, same layout as geodesic_neighbours (the ablation).

    keep: photos to include (e.g. Snap.kept, so both variants mine the same photos); others get empty rows."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    n = len(lat)
    kept = np.arange(n) if keep is None else np.flatnonzero(keep)
    if len(kept) == 0:
        return sp.csr_matrix((n, n))
    projection = projection or LocalProjection.for_points(lat[kept], lon[kept])
    xy = np.column_stack(projection.to_xy(lat[kept], lon[kept]))
    pairs = cKDTree(xy).query_pairs(radius_m, output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.hypot(*(xy[i] - xy[j]).T)
    return _csr([kept[i], kept[j], kept], [kept[j], kept[i], kept], [d, d, np.zeros(len(kept))], n)


def _csr(rows, cols, vals, n: int) -> sp.csr_matrix:
    rows, cols, vals = (np.concatenate(a) if a else np.zeros(0) for a in (rows, cols, vals))
    out = sp.csr_matrix((vals.astype(np.float64), (rows.astype(np.int64), cols.astype(np.int64))), shape=(n, n))
    out.sort_indices()
    return out


def photo_distances(lat, lon, radius_m: float, positives: str = "geodesic", streets: str | Path = "",
                    max_snap_m: float = 30.0, network_type: str = "walk", progress: bool = True,
                    describe=None) -> sp.csr_matrix:
    """Distances within radius_m between training photos, by `positives` (geodesic | euclidean).

    Both variants keep only the photos within max_snap_m of a street when a street graph is given, so
    the ablation compares the distance, not the photo set."""
    if not streets:
        if positives == "geodesic":
            raise GeolocError("geodesic positives need a street graph, and none was given or found beside "
                              "the data (streets.graphml): pass --streets (an .osm/.osm.bz2/.graphml file, "
                              "bbox:W,S,E,N or place:NAME, downloaded) or train on straight-line distances "
                              "with --positives euclidean")
        return euclidean_neighbours(lat, lon, radius_m)
    graph = load_graph(streets, network_type)
    snap = snap_photos(graph, lat, lon, max_snap_m, describe)
    if not snap.kept.any():
        lat0, lon0 = float(np.median(lat)), float(np.median(lon))
        xy = np.array([[d["x"], d["y"]] for _, d in graph.graph.nodes(data=True)])
        glat, glon = (float(v) for v in graph.projection.to_latlon(*np.median(xy, axis=0)))
        raise GeolocError(f"none of the {len(snap.edge)} photos is within {max_snap_m:g} m of a street of {streets}: "
                          f"the photos lie around lat {lat0:.5f}, lon {lon0:.5f}, the streets around lat {glat:.5f}, "
                          f"lon {glon:.5f}, {haversine_m(lat0, lon0, glat, glon) / 1000:.0f} km away "
                          "(lat and lon swapped, or another city's streets?)")
    if positives == "geodesic":
        return geodesic_neighbours(graph, snap, radius_m, progress=progress)
    return euclidean_neighbours(lat, lon, radius_m, keep=snap.kept, projection=graph.projection)


# --- synthetic photos and the slow reference, shared by tests and benchmarks -----------------------

def photos_along_streets(g: StreetGraph, n: int, rng: np.random.Generator, jitter_m: float = 5.0):
    """lat, lon of n photos placed uniformly along the streets (by length), jittered by jitter_m."""
    edge = rng.choice(len(g.length_m), n, p=g.length_m / g.length_m.sum())
    pts = shapely.line_interpolate_point(g.geometry[edge], rng.random(n), normalized=True)
    xy = shapely.get_coordinates(pts) + rng.normal(0, jitter_m, (n, 2))
    return g.projection.to_latlon(xy[:, 0], xy[:, 1])


def spliced_networkx_graph(g: StreetGraph, snap: "Snap") -> nx.Graph:
    """The street graph in networkx with every kept photo as a node splitting its edge, built from the
    MultiGraph's own data: the independent input for checking geodesic_neighbours with networkx."""
    on_edge = collections.defaultdict(list)
    for i in np.flatnonzero(snap.kept):
        on_edge[g.edge_key[snap.edge[i]]].append((float(snap.offset_m[i]), ("photo", int(i))))
    H = nx.Graph()
    for u, v, k, d in g.graph.edges(keys=True, data=True):
        chain = [(0.0, d["from"]), *sorted(on_edge[(u, v, k)]), (d["geometry"].length, d["to"])]
        for (o1, a), (o2, b) in zip(chain, chain[1:]):
            if a != b and (not H.has_edge(a, b) or H[a][b]["w"] > o2 - o1):
                H.add_edge(a, b, w=o2 - o1)
    return H


def lonlat_lines(path: str | Path) -> list[np.ndarray]:
    """Each street edge of a .graphml/.osm file as an (N, 2) array of lon, lat (ways that are not highways,
    such as the buildings an OSM graph also holds, are left out): what maps draw."""
    g = load_graph(path)
    keep = [i for i, (u, v, k) in enumerate(g.edge_key) if g.graph.edges[u, v, k].get("highway") is not None]
    coords = [shapely.get_coordinates(g.geometry[i]) for i in keep]
    if not coords:
        return []
    lat, lon = g.projection.to_latlon(*np.concatenate(coords).T)
    ends = np.cumsum([len(c) for c in coords])[:-1]
    return [np.column_stack([a, b]) for a, b in zip(np.split(lon, ends), np.split(lat, ends))]


def street_source(cfg) -> str:
    """embedding.streets, else the street graph the renderer saved beside the data ("" if neither; a data
    set of several cities has one per city instead: retrieval.data.cities)."""
    if cfg.embedding.streets:
        return cfg.embedding.streets
    data = Path(cfg.data.train)
    folder = data if data.is_dir() else data.parent
    graph = folder / "streets.graphml"
    return str(graph) if graph.is_file() else ""
