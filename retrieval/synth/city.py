"""The procedural demo city: a valid OSM XML file of a ~1.5 x 1.5 km town that needs no download.

Four districts of distinct style around a main avenue, split by a river crossed by four bridges:
an organic old town (narrow crooked streets, low plastered houses, a church), a downtown grid of
towers, a rotated grid of brick terraces with street trees, and a coarse grid of warehouses. A
diagonal avenue cuts across all of them. The renderer and the camera sampler read it exactly like a
real extract.
"""
from __future__ import annotations

import bz2
import math
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from shapely import affinity
from shapely.geometry import LineString, Point, box
from shapely.ops import split, unary_union
from shapely.strtree import STRtree

from retrieval.files import atomic_write
from retrieval.synth.osm import DEMO_GENERATOR

CENTRE = (44.0, -30.0)  # mid-Atlantic: plainly not a real place
M_PER_DEG = 111_320.0
RIVER_WIDTH_M = 42.0

DISTRICTS = {
    # name: grid spacing, rotation (deg), street highway/width, crooked (m), lot width, lot depth,
    #       levels (lo, hi), building types, materials, palette (hex)
    "old town": dict(spacing=72, angle=8, highway="residential", width=6.5, crooked=9.0, lot=(7, 13),
                     depth=(10, 16), levels=(2, 5), types=["residential", "apartments", "house", "retail"],
                     materials=["plaster"], palette=["#e8d8b0", "#d9a85f", "#e6b8a8", "#f0ead8", "#c9704e",
                                                     "#b8c8a0", "#d8c090"]),
    "downtown": dict(spacing=118, angle=0, highway="secondary", width=12.0, crooked=0.0, lot=(24, 42),
                     depth=(24, 40), levels=(7, 28), types=["office", "commercial", "office", "hotel"],
                     materials=["glass", "glass", "concrete", "stone"],
                     palette=["#9aa4ad", "#7b8790", "#c8c4b8", "#5a6670", "#d8d0c0"]),
    "brick terraces": dict(spacing=88, angle=25, highway="residential", width=8.0, crooked=0.0, lot=(6, 9),
                           depth=(9, 12), levels=(2, 4), types=["terrace", "residential", "house"],
                           materials=["brick"], palette=["#8c4a36", "#a0583e", "#7a3e30", "#b8a070",
                                                         "#965a44"]),
    "warehouses": dict(spacing=165, angle=-12, highway="unclassified", width=9.0, crooked=0.0, lot=(30, 60),
                       depth=(25, 45), levels=(1, 3), types=["industrial", "warehouse"],
                       materials=["metal", "concrete", "brick"],
                       palette=["#8d99a3", "#b0b0aa", "#6c7a86", "#a0644a", "#c0b8a0"]),
}


def _river(size: float):
    h = size / 2
    x = np.linspace(-h - 50, h + 50, 200)
    y = -0.12 * size + 0.05 * size * np.sin(2 * np.pi * x / (0.62 * size)) + 0.02 * size * np.sin(
        2 * np.pi * x / (0.23 * size) + 1.0)
    return LineString(np.column_stack([x, y]))


def _grid_lines(poly, spacing, angle, crooked, rng):
    """Two families of parallel lines over poly's bounds, rotated, optionally made crooked."""
    cx, cy = poly.centroid.x, poly.centroid.y
    r = math.hypot(poly.bounds[2] - poly.bounds[0], poly.bounds[3] - poly.bounds[1]) / 2 + spacing
    lines = []
    for family in (0, 1):
        offsets = np.arange(-r, r, spacing) + rng.uniform(0, spacing)
        for o in offsets:
            t = np.linspace(-r, r, max(int(2 * r / 12), 2))
            wobble = np.zeros_like(t)
            if crooked:
                for k in range(3):
                    wobble += crooked / (k + 1) * np.sin(2 * np.pi * t / rng.uniform(60, 200) + rng.uniform(0, 6.3))
            pts = np.column_stack([t, o + wobble]) if family == 0 else np.column_stack([o + wobble, t])
            line = affinity.rotate(LineString(pts + [cx, cy]), angle, origin=(cx, cy))
            lines.append(line)
    return lines


def _parts(geom):
    return [g for g in getattr(geom, "geoms", [geom]) if not g.is_empty]


def _districts(size_m: float):
    """The square town, the river across it and the four districts it and the High Street leave."""
    h = size_m / 2
    square = box(-h, -h, h, h)
    river_line = _river(size_m)
    river = river_line.buffer(RIVER_WIDTH_M / 2, cap_style="flat").intersection(square)
    north, south = sorted(_parts(split(square, river_line)), key=lambda p: -p.centroid.y)[:2]
    main_x = 0.04 * size_m
    cut = LineString([(main_x, -h - 10), (main_x, h + 10)])
    west_n, east_n = sorted(_parts(split(north, cut)), key=lambda p: p.centroid.x)
    west_s, east_s = sorted(_parts(split(south, cut)), key=lambda p: p.centroid.x)
    districts = {"old town": west_n, "downtown": east_n, "brick terraces": west_s, "warehouses": east_s}
    return square, river_line, river, cut, districts


def _street_lines(size_m: float, square, river_line, cut, districts, rng) -> list[tuple]:
    """Every street as drawn, before noding: (line, tags, rank, may cross the river); where pieces
    coincide the higher rank's tags win."""
    h = size_m / 2
    streets: list[tuple] = []

    def street(line, highway, width, name, rank, bridge_ok=False):
        streets.append((line, {"highway": highway, "width": f"{width:g}", "name": name}, rank, bridge_ok))

    for name, poly in districts.items():
        d = DISTRICTS[name]
        area = poly.buffer(3.0).intersection(square.buffer(-10.5))  # ends just past the ring road
        for k, line in enumerate(_grid_lines(poly, d["spacing"], d["angle"], d["crooked"], rng)):
            piece = line.intersection(area)
            for part in _parts(piece):
                if part.geom_type == "LineString" and part.length > 15:
                    hw = d["highway"]
                    if name == "old town" and rng.random() < 0.2:
                        hw = "pedestrian"
                    if name == "downtown" and k % 3 == 1:
                        hw = "tertiary"
                    street(part, hw, d["width"], f"{name.title()} {k + 1}", 1)
    street(cut.intersection(square.buffer(-12)), "primary", 16.0, "High Street", 5, bridge_ok=True)
    street(LineString([(-h + 30, -h + 60), (h - 60, h - 30)]), "primary", 14.0, "Diagonal Avenue", 4, bridge_ok=True)
    ring = square.buffer(-12).exterior
    street(LineString(ring.coords), "secondary", 10.0, "Ring Road", 3)
    for side in (-1, 1):
        bank = river_line.offset_curve(side * (RIVER_WIDTH_M / 2 + 7.0)).intersection(square.buffer(-12))
        for part in _parts(bank):
            street(part, "tertiary", 9.0, "North Embankment" if side > 0 else "South Embankment", 3)
    for bx in (-0.3 * size_m, 0.32 * size_m):
        y0 = float(river_line.interpolate(river_line.project(Point(bx, -0.12 * size_m))).y)
        street(LineString([(bx, y0 - 40), (bx, y0 + 40)]), "secondary", 10.0, f"Bridge Street {int(bx)}", 4,
               bridge_ok=True)
    return streets


def _street_network(streets: list[tuple], river) -> list[tuple]:
    """The streets cut at the river (except the bridges) and at every crossing: (line, tags) pieces,
    without stubs poking past a border street, of the largest connected network."""
    import networkx as nx

    water_cut = river.buffer(2.0)
    clipped = []
    for line, tags, rank, bridge_ok in streets:
        line = line if bridge_ok else line.difference(water_cut)
        for part in _parts(line):
            if part.geom_type == "LineString" and part.length > 2:
                clipped.append((part, tags, rank))
    noded = [g for g in _parts(unary_union([c[0] for c in clipped])) if g.length > 0.5]
    tree = STRtree([c[0] for c in clipped])
    pieces = []
    for g in noded:
        mid = g.interpolate(0.5, normalized=True)
        cands = tree.query(mid, predicate="dwithin", distance=0.05)
        if not len(cands):
            continue
        _, tags, _ = max((clipped[c] for c in cands), key=lambda c: c[2])
        tags = dict(tags)
        if g.intersects(river.buffer(-1.0)):
            tags.update(bridge="yes", layer="1")
        pieces.append((g, tags))
    key = lambda p: (round(p[0], 2), round(p[1], 2))  # noqa: E731
    for _ in range(2):
        deg: dict = {}
        for g, _ in pieces:
            for end in (g.coords[0], g.coords[-1]):
                deg[key(end)] = deg.get(key(end), 0) + 1
        pieces = [(g, t) for g, t in pieces
                  if not (g.length < 12 and min(deg[key(g.coords[0])], deg[key(g.coords[-1])]) == 1)]
    G = nx.Graph()
    for i, (g, _) in enumerate(pieces):
        G.add_edge(key(g.coords[0]), key(g.coords[-1]), i=i)
    main = max(nx.connected_components(G), key=len)
    return [p for p in pieces if key(p[0].coords[0]) in main]


def _lots(block, name: str, d: dict, rng) -> list[tuple]:
    """Frontage lots along one block's edge, each a building: (polygon, tags)."""
    depth = rng.uniform(*d["depth"])
    inner = block.buffer(-depth)
    band = block.difference(inner) if not inner.is_empty else block
    lot = rng.uniform(*d["lot"])
    cx, cy = block.centroid.x, block.centroid.y
    r = math.hypot(block.bounds[2] - block.bounds[0], block.bounds[3] - block.bounds[1]) / 2 + lot
    cells = [affinity.rotate(box(cx + x, cy + y, cx + x + lot * rng.uniform(0.8, 1.25), cy + y + lot),
                             d["angle"], origin=(cx, cy))
             for x in np.arange(-r, r, lot) for y in np.arange(-r, r, lot)]
    buildings = []
    for cell in cells:
        piece = band.intersection(cell)
        for part in _parts(piece):
            if part.geom_type != "Polygon" or part.area < 25 or rng.random() < 0.05:
                continue
            part = part.simplify(0.3)
            kind = str(rng.choice(d["types"]))
            levels = int(rng.integers(d["levels"][0], d["levels"][1] + 1))
            tags = {"building": kind, "building:levels": str(levels),
                    "building:material": str(rng.choice(d["materials"])),
                    "building:colour": _jitter(str(rng.choice(d["palette"])), rng)}
            if name == "downtown" and levels > 20:
                tags["height"] = f"{levels * 3.8 + 4:.1f}"
            if name in ("old town", "downtown") and rng.random() < 0.3:
                tags["shop"] = str(rng.choice(["bakery", "clothes", "cafe", "books", "supermarket"]))
            buildings.append((part, tags))
    return buildings


def _blocks(pieces, square, river, districts, rng) -> tuple[list, list]:
    """What the streets, pavements and river leave: a few parks per district, the rest lined with
    buildings. Returns (buildings, parks), each a list of (polygon, tags)."""
    carriage = unary_union([g.buffer(float(t["width"]) / 2 + 3.0, cap_style="flat") for g, t in pieces]
                           + [g.buffer(float(t["width"]) / 2 + 3.0) for g, t in pieces])
    blocks = [b for b in _parts(square.buffer(-4).difference(carriage).difference(river.buffer(9.0)))
              if b.geom_type == "Polygon" and b.area > 300]
    buildings, parks = [], []
    parks_wanted = {"old town": 2, "downtown": 1, "brick terraces": 2, "warehouses": 0}
    for bi in rng.permutation(len(blocks)):
        block = blocks[bi]
        name = max(districts, key=lambda n: districts[n].intersection(block).area)
        if parks_wanted[name] and block.area > 2500:
            parks_wanted[name] -= 1
            parks.append((block, {"leisure": "park", "name": f"{name.title()} Park"}))
            continue
        buildings += _lots(block, name, DISTRICTS[name], rng)
    # Landmarks: a church in the old town's largest block, a tall tower downtown.
    for name, kind, levels in (("old town", "church", 7), ("downtown", "office", 45)):
        cands = [i for i, (p, t) in enumerate(buildings) if districts[name].contains(p.centroid)]
        if cands:
            i = max(cands, key=lambda i: buildings[i][0].area)
            buildings[i][1].update(building=kind, **{"building:levels": str(levels)})
            if kind == "church":
                buildings[i][1].update({"building:material": "stone", "building:colour": "#cfc6b0"})
    return buildings, parks


def _street_trees(pieces, rng) -> list[tuple[float, float]]:
    """Trees along the avenues, embankments and the wider terrace streets (the renderer scatters more
    in parks)."""
    trees = []
    for g, t in pieces:
        if t["name"] in ("Diagonal Avenue", "North Embankment", "South Embankment", "High Street") \
                or (t["highway"] == "residential" and t["width"] == "8"):
            off = float(t["width"]) / 2 + 1.5
            for side in (-1, 1):
                edge = g.offset_curve(side * off)
                for a in np.arange(rng.uniform(0, 12), edge.length, 12.0 if "Avenue" in t["name"] else 16.0):
                    p = edge.interpolate(a)
                    trees.append((p.x, p.y))
    return trees


def build_plan(seed: int = 0, size_m: float = 1500.0) -> dict:
    """The city as shapely geometry in local metres: streets (line, tags), buildings (polygon, tags),
    parks, the river and trees."""
    rng = np.random.default_rng(seed)
    square, river_line, river, cut, districts = _districts(size_m)
    pieces = _street_network(_street_lines(size_m, square, river_line, cut, districts, rng), river)
    buildings, parks = _blocks(pieces, square, river, districts, rng)
    trees = _street_trees(pieces, rng)
    return {"size": size_m, "streets": pieces, "buildings": buildings, "parks": parks,
            "river": river, "river_line": river_line.intersection(square), "trees": trees,
            "districts": districts}


def _jitter(hex_colour: str, rng) -> str:
    c = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], float)
    c = np.clip(c * rng.uniform(0.9, 1.1) + rng.uniform(-8, 8, 3), 0, 255).astype(int)
    return "#" + "".join(f"{v:02x}" for v in c)


def write_demo_city(path: str | Path, seed: int = 0, size_m: float = 1500.0) -> Path:
    """Write the demo city as OSM XML (.osm, or .osm.bz2 if the name ends so). Same seed, same bytes."""
    plan = build_plan(seed, size_m)
    lat0, lon0 = CENTRE
    kx = 1.0 / (M_PER_DEG * math.cos(math.radians(lat0)))
    nodes: dict = {}
    node_lines: list[str] = []

    def node(x: float, y: float, tags: dict | None = None, shared: bool = True) -> int:
        k = (round(x, 2), round(y, 2))
        if shared and k in nodes and not tags:
            return nodes[k]
        nid = len(node_lines) + 1
        lat, lon = lat0 + y / M_PER_DEG, lon0 + x * kx
        attrs = f'<node id="{nid}" version="1" lat="{lat:.7f}" lon="{lon:.7f}"'
        if tags:
            node_lines.append(attrs + ">" + "".join(_tag(k_, v) for k_, v in tags.items()) + "</node>")
        else:
            node_lines.append(attrs + "/>")
            if shared:
                nodes[k] = nid
        return nid

    ways: list[str] = []
    relations: list[str] = []

    def way(coords, tags, closed=False) -> int:
        refs = [node(x, y) for x, y in coords]
        if closed:
            refs = refs[:-1] if refs[0] == refs[-1] else refs
            refs.append(refs[0])
        wid = len(ways) + 1
        ways.append(f'<way id="{wid}" version="1">' + "".join(f'<nd ref="{r}"/>' for r in refs)
                    + "".join(_tag(k, v) for k, v in tags.items()) + "</way>")
        return wid

    def area(poly, tags):
        if not poly.interiors:
            way(poly.exterior.coords, tags, closed=True)
            return
        outer = way(poly.exterior.coords, {}, closed=True)
        inner = [way(r.coords, {}, closed=True) for r in poly.interiors]
        rid = len(relations) + 1
        relations.append(f'<relation id="{rid}" version="1"><member type="way" ref="{outer}" role="outer"/>'
                         + "".join(f'<member type="way" ref="{i}" role="inner"/>' for i in inner)
                         + _tag("type", "multipolygon") + "".join(_tag(k, v) for k, v in tags.items())
                         + "</relation>")

    for g, tags in plan["streets"]:
        way(g.coords, tags)
    for poly, tags in plan["buildings"]:
        area(poly, tags)
    for poly, tags in plan["parks"]:
        area(poly, tags)
    for poly in _parts(plan["river"]):
        area(poly, {"natural": "water", "water": "river"})
    for x, y in plan["trees"]:
        node(x, y, {"natural": "tree"}, shared=False)

    h = size_m / 2 + 20
    bounds = (f'<bounds minlat="{lat0 - h / M_PER_DEG:.7f}" minlon="{lon0 - h * kx:.7f}" '
              f'maxlat="{lat0 + h / M_PER_DEG:.7f}" maxlon="{lon0 + h * kx:.7f}"/>')
    text = "\n".join(["<?xml version='1.0' encoding='UTF-8'?>",
                      f'<osm version="0.6" generator="{DEMO_GENERATOR}">', bounds, *node_lines, *ways,
                      *relations, "</osm>", ""])
    data = text.encode("utf-8")
    path = Path(path)
    if path.suffix == ".bz2":
        data = bz2.compress(data, 9)
    return atomic_write(path, lambda p: p.write_bytes(data))


def _tag(k: str, v: str) -> str:
    return f"<tag k={quoteattr(str(k))} v={quoteattr(str(v))}/>"
