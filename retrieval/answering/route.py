"""Route decoding: photos taken in order (a walk, a drive, a burst) located together along the streets.

Map matching's hidden Markov model, decoded by Viterbi. Each photo's states are its candidates, its k
nearest database photos; a candidate's potential is its similarity / temperature. Consecutive photos are
joined by a step whose length is the walking distance along the street graph between their candidates
(`route.distance: euclidean`, the straight line, is the ablation), scored by a Laplace spread around the
expected step: pace x time gap when both photos have capture times, else `route.step_m`. A step that
is more than `break_cost` spreads off is never taken: the route breaks there (a gap, a jump, a photo
from elsewhere) and a new segment starts, at that same cost, from any candidate. Each photo's
confidence is the posterior mass (forward-backward over the same chain, breaks included) of its
candidates within `confidence_radius_m` of its answer.

Why not a package: map matchers on the registry (leuvenmapmatching, mappymatch) snap GPS fixes to
streets, and HMM libraries (hmmlearn, pomegranate) have one fixed state space; here every photo has
its own candidates and the transitions are walking distances. The chain is a few lines of numpy, checked
against brute-force enumeration in tests/test_route.py; the distances reuse retrieval.data.streets.
"""
from __future__ import annotations

import csv
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from PIL import Image
from scipy.sparse.csgraph import dijkstra
from scipy.special import logsumexp
from shapely.ops import substring

from retrieval import GeolocError
from retrieval.data.manifests import parse_date
from retrieval.data.photo_import import read_exif_date
from retrieval.data.streets import Snap, StreetGraph, photo_graph, snap_photos
from retrieval.geo import haversine_m

# `p` below is the config's route section (retrieval.config.RouteConfig), read by attribute: the config
# imports this module's choices, so this module does not import the config.
NAT = np.datetime64("NaT", "s")


# --- the chain: pure functions of arrays --------------------------------------------------------------

def viterbi(emit: np.ndarray, follow: np.ndarray, break_cost: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The best path through a chain with breaks: emit (T, K) log-potentials (-inf: no candidate), follow
    (T-1, K, K) log-potentials of stepping from candidate i of photo t to candidate j of photo t+1 (-inf:
    impossible); a break between t and t+1 joins any i to any j at -break_cost instead.

    Returns the chosen candidate per photo (T,), where the route breaks (T-1,) and the path's score."""
    T, K = emit.shape
    delta = emit[0].astype(np.float64)
    back = np.zeros((max(T - 1, 0), K), dtype=np.int64)
    broke = np.zeros((max(T - 1, 0), K), dtype=bool)
    cols = np.arange(K)
    for t in range(T - 1):
        scores = delta[:, None] + np.maximum(follow[t], -break_cost)
        back[t] = scores.argmax(axis=0)
        broke[t] = follow[t][back[t], cols] < -break_cost  # a tie follows the street: no break
        delta = scores[back[t], cols] + emit[t + 1]
    path = np.zeros(T, dtype=np.int64)
    path[-1] = int(delta.argmax())
    breaks = np.zeros(max(T - 1, 0), dtype=bool)
    for t in range(T - 2, -1, -1):
        breaks[t] = broke[t, path[t + 1]]
        path[t] = back[t, path[t + 1]]
    return path, breaks, float(delta.max())


def posteriors(emit: np.ndarray, follow: np.ndarray, break_cost: float) -> np.ndarray:
    """(T, K) marginal probability of each candidate under the chain viterbi() maximises (a break and a
    step between the same two candidates are two ways, summed), by forward-backward in log space."""
    T, K = emit.shape
    with np.errstate(invalid="ignore"):  # -inf + -inf where a photo has fewer than K candidates
        pair = np.logaddexp(follow, -break_cost)
        alpha = np.zeros((T, K))
        beta = np.zeros((T, K))
        alpha[0] = emit[0]
        for t in range(T - 1):
            alpha[t + 1] = emit[t + 1] + logsumexp(alpha[t][:, None] + pair[t], axis=0)
        for t in range(T - 2, -1, -1):
            beta[t] = logsumexp(pair[t] + (emit[t + 1] + beta[t + 1])[None, :], axis=1)
        gamma = alpha + beta
        gamma = gamma - logsumexp(gamma, axis=1, keepdims=True)
    return np.nan_to_num(np.exp(gamma))


def expected_steps(seconds: np.ndarray, p) -> tuple[np.ndarray, np.ndarray]:
    """Each step's expected length and spread (T-1,), metres: pace x time gap where both photos have a
    capture time (seconds, NaN where unknown), else route.step_m; the spread grows with the step."""
    gap = np.diff(np.asarray(seconds, dtype=np.float64))
    step = np.where(np.isfinite(gap) & (gap >= 0), p.pace_mps * np.abs(gap), p.step_m)
    return step, np.maximum(p.step_tol_m, p.step_tol * step)


def follow_scores(dist: np.ndarray, step: np.ndarray, spread: np.ndarray, break_cost: float) -> np.ndarray:
    """(T-1, K, K) log-potentials of the steps: -|distance - expected| / spread, -inf past the break."""
    s, b = step[:, None, None], spread[:, None, None]
    score = -np.abs(dist - s) / b
    return np.where(score >= -break_cost, score, -np.inf)


def straight_distances(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(T-1, K, K) straight-line metres between each candidate of photo t and each of photo t+1."""
    return haversine_m(lat[:-1, :, None], lon[:-1, :, None], lat[1:, None, :], lon[1:, None, :])


def within(lat: np.ndarray, lon: np.ndarray, path: np.ndarray, radius_m: float) -> np.ndarray:
    """(T, K) True for the candidates within radius_m (straight line) of each photo's chosen one."""
    rows = np.arange(len(path))
    d = haversine_m(lat[rows, path][:, None], lon[rows, path][:, None], lat, lon)
    return np.nan_to_num(d, nan=np.inf) <= radius_m


# --- walking distances between candidates ----------------------------------------------------------

class StreetWalks:
    """The database photos snapped once onto the street graph; walking distances between the candidates
    of consecutive photos (many-to-many, Dijkstra limited to the plausible step) and the street path
    joining two answers. Candidates farther than max_snap_m from every street move in straight lines."""

    def __init__(self, graph: StreetGraph, lat: np.ndarray, lon: np.ndarray, max_snap_m: float):
        with warnings.catch_warnings():  # snap_photos words its warning for mining: counted in `note` instead
            warnings.simplefilter("ignore")
            self.snap = snap_photos(graph, lat, lon, max_snap_m)
        self.graph, self.lat, self.lon = graph, np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        xy = np.array([[graph.graph.nodes[n]["x"], graph.graph.nodes[n]["y"]] for n in graph.nodes.tolist()])
        self.node_xy = xy.reshape(-1, 2)
        order = np.argsort(graph.length_m, kind="stable")[::-1]  # the shortest edge between two nodes wins
        self.edge_of = {(int(min(u, v)), int(max(u, v))): int(e)
                        for e, u, v in zip(order, graph.edge_u[order], graph.edge_v[order])}
        self.note = (f"{self.snap.excluded} of {len(lat)} database photos lie more than {max_snap_m:g} m from any "
                     "street: steps to or from them are measured in straight lines") if self.snap.excluded else ""

    def _spliced(self, ids: np.ndarray):
        """The street graph with the photos `ids` (unique database ids) spliced in; node of each (-1: off)."""
        sub = Snap(edge=self.snap.edge[ids], offset_m=self.snap.offset_m[ids], distance_m=self.snap.distance_m[ids],
                   max_snap_m=self.snap.max_snap_m)
        adjacency, kept = photo_graph(self.graph, sub)
        node = np.full(len(ids), -1, dtype=np.int64)
        node[kept] = len(self.graph.nodes) + np.arange(len(kept))
        return adjacency, node

    def distances(self, ids: np.ndarray, limits: np.ndarray) -> np.ndarray:
        """(T-1, K, K) walking metres between the candidates (database ids, -1: none) of consecutive
        photos; inf where none, or farther than that step's limit."""
        T, K = ids.shape
        out = np.full((max(T - 1, 0), K, K), np.inf)
        uniq = np.unique(ids[ids >= 0])
        adjacency, node_of = self._spliced(uniq)
        node = np.where(ids >= 0, node_of[np.searchsorted(uniq, np.maximum(ids, 0))], -1)
        for t in range(T - 1):
            a, b = node[t], node[t + 1]
            src = np.unique(a[a >= 0])
            if len(src) and (b >= 0).any():
                d = dijkstra(adjacency, directed=False, indices=src, limit=limits[t])
                i, j = np.flatnonzero(a >= 0), np.flatnonzero(b >= 0)
                out[t][np.ix_(i, j)] = d[np.searchsorted(src, a[i])][:, b[j]]
            va, vb = ids[t] >= 0, ids[t + 1] >= 0
            off = ((va & (a < 0))[:, None] & vb[None, :]) | (va[:, None] & (vb & (b < 0))[None, :])
            if off.any():
                i, j = np.nonzero(off)
                out[t][i, j] = haversine_m(self.lat[ids[t, i]], self.lon[ids[t, i]],
                                           self.lat[ids[t + 1, j]], self.lon[ids[t + 1, j]])
        return out

    def path(self, ids: list[int], steps_m: np.ndarray) -> list[np.ndarray]:
        """The street path joining each consecutive pair of database photos `ids`, steps_m apart on foot
        (Decoded.steps_m, which bounds each search): (n, 2) lat, lon each; a straight line where either is
        off the streets or no path joins them."""
        uniq = np.unique(ids)
        adjacency, node_of = self._spliced(uniq)
        node = node_of[np.searchsorted(uniq, ids)]
        out = []
        for (a, b), (na, nb), limit in zip(zip(ids, ids[1:]), zip(node, node[1:]), steps_m):
            chain = self._chain(adjacency, na, nb, limit + 1.0) if na >= 0 and nb >= 0 else None
            xy = self._chain_xy(chain, uniq, node_of) if chain is not None else None
            if xy is None:
                out.append(np.array([[self.lat[a], self.lon[a]], [self.lat[b], self.lon[b]]]))
            else:
                out.append(np.column_stack(self.graph.projection.to_latlon(xy[:, 0], xy[:, 1])))
        return out

    @staticmethod
    def _chain(adjacency, a: int, b: int, limit: float) -> list[int] | None:
        _, pred = dijkstra(adjacency, directed=False, indices=a, return_predecessors=True, limit=limit)
        if a != b and pred[b] < 0:
            return None
        chain = [b]
        while chain[-1] != a:
            chain.append(int(pred[chain[-1]]))
        return chain[::-1]

    def _chain_xy(self, chain: list[int], uniq: np.ndarray, node_of: np.ndarray) -> np.ndarray:
        """x, y of a node chain of the spliced graph, along each street's own geometry."""
        n_nodes, g = len(self.graph.nodes), self.graph
        photo = {int(n): int(uniq[i]) for i, n in enumerate(node_of) if n >= 0}

        def place(n: int, e: int) -> float:  # metres along edge e of node n (a photo on it, or one of its ends)
            if n >= n_nodes:
                return float(np.clip(self.snap.offset_m[photo[n]], 0, g.length_m[e]))
            return 0.0 if g.edge_u[e] == n else float(g.length_m[e])

        first = chain[0]
        pieces = [self.node_xy[first][None] if first < n_nodes else shapely.get_coordinates(
            shapely.line_interpolate_point(g.geometry[self.snap.edge[photo[first]]], self.snap.offset_m[photo[first]]))]
        for m, n in zip(chain, chain[1:]):
            if m < n_nodes and n < n_nodes:
                e = self.edge_of[(min(m, n), max(m, n))]
            else:
                e = int(self.snap.edge[photo[m if m >= n_nodes else n]])
            pieces.append(shapely.get_coordinates(substring(g.geometry[e], place(m, e), place(n, e))))
        return np.concatenate(pieces)


# --- decoding a route --------------------------------------------------------------------------------

@dataclass
class Decoded:
    choice: np.ndarray  # (T,) the candidate chosen for each photo (a column of ids)
    breaks: np.ndarray  # (T-1,) True where the route breaks between photo t and t+1
    confidence: np.ndarray  # (T,) posterior mass within confidence_radius_m of the answer
    score: float
    steps_m: np.ndarray  # (T-1,) length of each step taken (geodesic: walking), inf where it was not plausible

    @property
    def segment(self) -> np.ndarray:
        """(T,) segment number of each photo: photos joined by the route share one."""
        return np.concatenate([[0], np.cumsum(self.breaks)]).astype(np.int64)

    @property
    def alone(self) -> np.ndarray:
        """(T,) True for a photo alone in its segment: it keeps its single-photo answer (the vote, chosen on
        validation, beats the chain's best candidate when there is nothing to join)."""
        return np.bincount(self.segment)[self.segment] == 1

    def positions(self, lat, lon, single_lat, single_lon) -> tuple[np.ndarray, np.ndarray]:
        """(T,) lat, lon of each photo on the route: its chosen candidate, or its single answer if alone."""
        rows = np.arange(len(self.choice))
        return (np.where(self.alone, single_lat, lat[rows, self.choice]),
                np.where(self.alone, single_lon, lon[rows, self.choice]))


def decode(ids: np.ndarray, sims: np.ndarray, lat: np.ndarray, lon: np.ndarray, seconds: np.ndarray,
           p, walks: StreetWalks | None = None, cuts: np.ndarray | None = None) -> Decoded:
    """Decode one ordered series of photos from their candidates: ids (T, K) database ids (-1: none) with
    their similarities and positions, capture times in seconds (NaN: unknown). walks gives the walking
    distances (route.distance geodesic); cuts (T-1,) forces breaks (e.g. between two routes of a manifest)."""
    if len(ids) == 0 or (ids < 0).all(axis=1).any():
        raise GeolocError("route: every photo needs at least one candidate (is the index empty?)")
    emit = np.where(ids >= 0, sims / p.temperature, -np.inf)
    step, spread = expected_steps(seconds, p)
    if p.distance == "geodesic":
        if walks is None:
            raise GeolocError("route.distance=geodesic needs a street graph (or set route.distance=euclidean)")
        dist = walks.distances(ids, step + p.break_cost * spread)
    else:
        dist = straight_distances(lat, lon)
    follow = follow_scores(dist, step, spread, p.break_cost)  # NaN (no candidate) and inf give -inf
    if cuts is not None:
        follow[np.asarray(cuts, dtype=bool)] = -np.inf
    choice, breaks, score = viterbi(emit, follow, p.break_cost)
    near = within(lat, lon, choice, p.confidence_radius_m)
    confidence = (posteriors(emit, follow, p.break_cost) * near).sum(axis=1)
    taken = (np.arange(len(choice) - 1), choice[:-1], choice[1:])
    return Decoded(choice=choice, breaks=breaks, confidence=np.clip(confidence, 0.0, 1.0), score=score,
                   steps_m=np.where(np.isfinite(follow[taken]), dist[taken], np.inf))


# --- which photos, in which order ----------------------------------------------------------------------

@dataclass
class RoutePhotos:
    """A route's photos in the order they were taken, with what is known of their times."""
    sources: list[tuple[str, object]]  # (name, item) as retrieval.answering.locator reads them
    times: np.ndarray  # (T,) datetime64[s], NaT where unknown
    groups: np.ndarray  # (T,) route number: the route always breaks between two groups
    order: str  # how they were ordered, for the user
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> np.ndarray:
        known = ~np.isnat(self.times)
        out = np.full(len(self.times), np.nan)
        if known.any():
            out[known] = (self.times[known] - self.times[known].min()).astype(np.float64)
        return out


def capture_time(item) -> np.datetime64:
    """A file's EXIF DateTimeOriginal (else DateTime); NaT for anything else or an unreadable file."""
    if not isinstance(item, Path):
        return NAT
    try:
        with Image.open(item) as im:
            return read_exif_date(im.getexif())
    except Exception:  # an unreadable photo is reported when it is located, not here
        return NAT


def name_key(name: str) -> list:
    """Natural order: img2 before img10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def order_photos(sources: list[tuple[str, object]], times=None, order=None, groups=None) -> RoutePhotos:
    """Drop repeated files (noted), read capture times (EXIF) unless given, and order the photos: by capture
    time when every photo has one, else by a manifest's order column, else by file name (natural order)."""
    seen, keep, notes = {}, [], []
    for i, (name, item) in enumerate(sources):
        key = str(Path(item).resolve()) if isinstance(item, Path) else None
        if key is not None and key in seen:
            notes.append(f"{name}: listed twice (as photo {seen[key] + 1} too): located once")
            continue
        if key is not None:
            seen[key] = i
        keep.append(i)
    sources = [sources[i] for i in keep]
    t = (np.array([capture_time(item) for _, item in sources], dtype="datetime64[s]") if times is None
         else np.asarray(times, dtype="datetime64[s]")[keep])
    g = np.zeros(len(sources), dtype=np.int64) if groups is None else np.asarray(groups)[keep]
    names = [name for name, _ in sources]
    if len(t) and not np.isnat(t).any():
        rank, how = np.argsort(t, kind="stable"), "capture time"
    elif order is not None:
        rank, how = np.argsort(np.asarray(order, dtype=np.float64)[keep], kind="stable"), "the manifest's order column"
    elif not any(isinstance(item, Path) for _, item in sources):
        rank, how = np.arange(len(sources)), "as given"
    else:
        rank, how = np.array(sorted(range(len(names)), key=lambda i: name_key(names[i])), dtype=np.int64), "file name"
        if len(t) > 1:
            notes.append(f"{int(np.isnat(t).sum())} of {len(t)} photos have no capture time: ordered by file name, "
                         "steps without times expected at route.step_m")
    perm = rank[np.argsort(g[rank], kind="stable")]  # a manifest's routes one after the other
    return RoutePhotos(sources=[sources[i] for i in perm], times=t[perm], groups=g[perm], order=how, notes=notes)


def read_route_list(path: Path) -> tuple[list[tuple[str, object]], np.ndarray, np.ndarray | None, np.ndarray]:
    """A CSV of a route's photos: a `path` column (relative to the CSV), optional `date` (capture time),
    `order` (a number) and `route` (several routes, decoded one after the other, never joined).
    Returns the sources, times, order (or None) and route number of each row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise GeolocError(f"{path}: not a readable UTF-8 CSV ({exc})".splitlines()[0]) from None
    if not rows or "path" not in rows[0]:
        raise GeolocError(f"{path}: expected a CSV with a 'path' column (and optional date, order, route)")
    sources, times, order, routes = [], [], [], []
    for n, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        p = Path(raw) if Path(raw).is_absolute() else path.parent / raw
        sources.append((str(p), p if raw and p.is_file() else GeolocError(f"{path}: row {n}: no such image {raw!r}")))
        try:
            times.append(parse_date(row["date"]) if (row.get("date") or "").strip() else NAT)
            order.append(float(row["order"]) if "order" in row else np.nan)
        except ValueError as exc:
            raise GeolocError(f"{path}: row {n}: {exc}".splitlines()[0]) from None
        routes.append((row.get("route") or "").strip())
    number = {r: i for i, r in enumerate(dict.fromkeys(routes))}  # in order of first appearance
    groups = np.array([number[r] for r in routes], dtype=np.int64)
    has_order = "order" in rows[0] and not np.isnan(order).any()
    return sources, np.array(times, dtype="datetime64[s]"), np.array(order) if has_order else None, groups


# --- the answer ---------------------------------------------------------------------------------------

@dataclass
class RoutePoint:
    source: str
    single: object  # its retrieval.answering.locator.Answer: what `locate` answers for this photo alone
    lat: float = math.nan  # on the route
    lon: float = math.nan
    confidence: float = 0.0
    segment: int = -1  # photos of one segment are joined by the route; -1: not on it (error)
    time: str = ""  # capture time, "" when unknown
    error: str | None = None

    @property
    def moved_m(self) -> float:
        """How far the route moved the photo from its single-photo answer."""
        if self.error:
            return math.nan
        return float(haversine_m(self.single.lat, self.single.lon, self.lat, self.lon))

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.source, "error": self.error}
        s = self.single
        return {"path": self.source, "lat": self.lat, "lon": self.lon, "confidence": round(self.confidence, 4),
                "segment": self.segment, "time": self.time,
                "single": {"lat": s.lat, "lon": s.lon, "confidence": s.confidence, "vote": s.vote},
                "moved_m": round(self.moved_m, 1)}


@dataclass
class Route:
    points: list[RoutePoint]  # in route order, unreadable photos included (with their error)
    paths: list[np.ndarray]  # per segment, the street path joining its photos: (n, 2) lat, lon
    order: str  # how the photos were ordered
    distance: str  # route.distance
    notes: list[str] = field(default_factory=list)  # what the user should know: skipped, repeated, breaks
    graph: StreetGraph | None = field(default=None, repr=False)  # the streets walked, for drawing

    def to_dict(self) -> dict:
        return {"order": self.order, "distance": self.distance, "segments": len(self.paths), "notes": self.notes,
                "photos": [pt.to_dict() for pt in self.points]}

    def geojson(self) -> dict:
        """The photos on the route (Points, with their single-photo answers) and each segment's street
        path (LineStrings), lon/lat."""
        feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [round(pt.lon, 7), round(pt.lat, 7)]},
                  "properties": {"kind": "photo", "number": i + 1, **pt.to_dict()}}
                 for i, pt in enumerate(self.points) if not pt.error]
        feats += [{"type": "Feature", "properties": {"kind": "street path", "segment": s},
                   "geometry": {"type": "LineString", "coordinates": np.round(line[:, ::-1], 7).tolist()}}
                  for s, line in enumerate(self.paths)]
        return {"type": "FeatureCollection", "order": self.order, "distance": self.distance, "notes": self.notes,
                "skipped": [pt.to_dict() for pt in self.points if pt.error], "features": feats}


def route_of(photos: RoutePhotos, answers: list, ids: np.ndarray, sims: np.ndarray, lat: np.ndarray,
             lon: np.ndarray, p, walks: StreetWalks | None = None) -> Route:
    """The Route of ordered photos: answers (one retrieval.answering.locator.Answer each, in order) and the candidates of
    the readable ones (rows of ids, sims, lat, lon, in order). A photo alone in its segment keeps its
    single-photo answer (Decoded.alone)."""
    good = [i for i, a in enumerate(answers) if not a.error]
    if not good:
        raise GeolocError(f"none of the route's {len(answers)} photo(s) could be read ({answers[0].error})")
    g = photos.groups[good]
    cuts = g[1:] != g[:-1]
    dec = decode(ids, sims, lat, lon, photos.seconds[good], p, walks, cuts)
    points = [RoutePoint(name, a, time="" if np.isnat(t) else str(t), error=a.error)
              for (name, _), a, t in zip(photos.sources, answers, photos.times)]
    rows = np.arange(len(good))
    at_lat, at_lon = dec.positions(lat, lon, np.array([answers[i].lat for i in good]),
                                   np.array([answers[i].lon for i in good]))
    for row, i in enumerate(good):
        pt = points[i]
        pt.lat, pt.lon, pt.segment = float(at_lat[row]), float(at_lon[row]), int(dec.segment[row])
        pt.confidence = answers[i].confidence if dec.alone[row] else float(dec.confidence[row])
    paths = []
    for s in range(int(dec.segment[-1]) + 1):
        members = rows[dec.segment == s]
        if len(members) == 1 or walks is None:
            line = np.array([[points[good[r]].lat, points[good[r]].lon] for r in members])
        else:
            line = np.concatenate(walks.path([int(ids[r, dec.choice[r]]) for r in members], dec.steps_m[members[:-1]]))
        paths.append(line if len(line) > 1 else np.repeat(line, 2, axis=0))  # a LineString needs two points
    single = (np.array([answers[i].lat for i in good]), np.array([answers[i].lon for i in good]))
    jumps = kept_jumps(*single, dec.breaks | cuts, *expected_steps(photos.seconds[good], p), p.break_cost)
    notes = _notes(points, dec, good, cuts, walks) + [
        f"{points[good[t]].source} and {points[good[t + 1]].source} stay on one route although their own answers, "
        f"each agreeing with its neighbours', lie {d:.0f} m apart, farther than one step goes ({reach:.0f} m): their "
        "candidates near each other scored almost as well. If they were taken in two places, give the photos a "
        "`route` column (two routes), or train the model longer" for t, d, reach in jumps]
    return Route(points, paths, photos.order, p.distance, photos.notes + notes,
                 walks.graph if walks is not None else None)


def kept_jumps(single_lat, single_lon, broken, step, spread, break_cost: float) -> list[tuple[int, float, float]]:
    """(t, metres, reach) for each step t the route kept although the photos' own answers jump there: the
    answers of t and t+1 are farther apart (in a straight line) than a step can go, while those of t-1 and
    t, and of t+1 and t+2, are not (two places, each seen by at least two photos, not one wrong answer)."""
    if len(single_lat) < 4:
        return []
    gap = haversine_m(single_lat[:-1], single_lon[:-1], single_lat[1:], single_lon[1:])
    reach = step + break_cost * spread
    far = gap > reach
    return [(t, float(gap[t]), float(reach[t])) for t in range(1, len(gap) - 1)
            if far[t] and not broken[t] and not far[t - 1] and not far[t + 1]]


def _notes(points: list[RoutePoint], dec: Decoded, good: list[int], cuts: np.ndarray,
           walks: StreetWalks | None) -> list[str]:
    """What the user should know about a decoded route, one line each."""
    notes = [f"skipped: {pt.error}; the route goes on without it" for pt in points if pt.error]
    if len(good) == 1:
        notes.append("only one photo could be located: nothing to join, its answer is the single-photo one")
    for t in np.flatnonzero(dec.breaks & ~cuts):  # not where one of a manifest's routes ends
        notes.append(f"the route breaks between {points[good[t]].source} and {points[good[t + 1]].source}: "
                     "no plausible step joins them (a gap, a jump, or a photo from elsewhere)")
    if walks is not None and walks.note:
        notes.append(walks.note)
    return notes
