"""Turn map geometry into the flat arrays the ray caster reads: wall segments with per-building facade
styles, trees, a ground-material raster and uniform-grid spatial indexes. All coordinates are metres
from the scene's south-west corner."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from PIL import Image, ImageDraw, ImageFilter
from shapely import affinity
from shapely.geometry.polygon import orient
from shapely.strtree import STRtree

from retrieval import GeolocError
from retrieval.synth.osm import City, parse_length_m, stable_hash

GROUND_RES_M = 0.5
GRID_CELL_M = 10.0
MAX_SCENE_SIDE_M = 12_000.0

# Ground materials in the raster.
PAVEMENT, ROAD, MARKING, GRASS, WATER, FOOTPRINT, PAVING, OPEN = range(8)  # MARKING: stencil round dashes
SIDEWALK_M = 3.0

# Building columns (one row per building).
B_HEIGHT, B_MINH, B_R, B_G, B_B, B_STYLE, B_FLOOR, B_SPACING, B_WINW, B_WINH, B_GROUND, B_AR, B_AG, B_AB, \
    B_TR, B_TG, B_TB, B_SEED, B_SHOP = range(19)
# Facade styles.
PUNCHED, CURTAIN, CLASSICAL, INDUSTRIAL, HOUSE = range(5)
# Wall columns.
W_X0, W_Y0, W_X1, W_Y1, W_NX, W_NY, W_U0, W_LEN, W_BLD = range(9)
# Tree columns.
T_X, T_Y, T_R, T_Z, T_RZ, T_TRUNK, T_CR, T_CG, T_CB, T_LAMP = range(10)  # T_LAMP: 1 for a street lamp

ROAD_WIDTH_M = {"motorway": 14.0, "trunk": 12.0, "primary": 11.0, "secondary": 10.0, "tertiary": 9.0,
                "motorway_link": 7.0, "trunk_link": 7.0, "primary_link": 7.0, "secondary_link": 7.0,
                "tertiary_link": 7.0, "unclassified": 7.0, "residential": 7.0, "living_street": 5.0,
                "service": 4.5, "pedestrian": 6.0, "footway": 2.5, "cycleway": 2.0, "path": 2.0,
                "steps": 2.0, "track": 3.0, "bridleway": 2.0}
PAVED_AS_STREET = {"pedestrian", "footway", "path", "steps", "bridleway"}
CAMERA_HIGHWAYS = {"motorway", "trunk", "primary", "secondary", "tertiary", "motorway_link", "trunk_link",
                   "primary_link", "secondary_link", "tertiary_link", "unclassified", "residential",
                   "living_street", "service", "pedestrian"}

PALETTES = {
    "brick": [(0.55, 0.27, 0.20), (0.62, 0.36, 0.26), (0.46, 0.23, 0.19), (0.70, 0.60, 0.44), (0.58, 0.42, 0.32)],
    "plaster": [(0.88, 0.82, 0.68), (0.86, 0.69, 0.44), (0.90, 0.89, 0.85), (0.87, 0.72, 0.67),
                (0.70, 0.75, 0.78), (0.78, 0.47, 0.32), (0.80, 0.84, 0.70)],
    "stone": [(0.82, 0.80, 0.72), (0.66, 0.65, 0.61), (0.78, 0.69, 0.53), (0.74, 0.72, 0.66)],
    "concrete": [(0.62, 0.62, 0.60), (0.52, 0.54, 0.56), (0.72, 0.70, 0.66)],
    "glass": [(0.22, 0.24, 0.27), (0.55, 0.57, 0.60), (0.15, 0.15, 0.16)],
    "metal": [(0.56, 0.61, 0.66), (0.70, 0.70, 0.68), (0.40, 0.46, 0.52), (0.60, 0.36, 0.26)],
}
GLASS_TINTS = [(0.18, 0.26, 0.33), (0.22, 0.30, 0.30), (0.30, 0.34, 0.40), (0.14, 0.18, 0.24), (0.35, 0.42, 0.45)]
ACCENTS = [(0.55, 0.10, 0.10), (0.10, 0.25, 0.45), (0.12, 0.35, 0.20), (0.85, 0.65, 0.15), (0.15, 0.15, 0.15),
           (0.80, 0.40, 0.10), (0.45, 0.15, 0.40), (0.90, 0.90, 0.88)]
MATERIAL_ALIASES = {"brick": "brick", "plaster": "plaster", "render": "plaster", "stucco": "plaster",
                    "stone": "stone", "sandstone": "stone", "limestone": "stone", "marble": "stone",
                    "concrete": "concrete", "glass": "glass", "metal": "metal", "steel": "metal",
                    "wood": "brick", "timber_framing": "plaster", "cement_block": "concrete"}


@dataclass
class Grid:
    """Items (walls or trees) bucketed in square cells: cell c holds items[start[c]:start[c+1]]."""

    x0: float
    y0: float
    cell: float
    nx: int
    ny: int
    start: np.ndarray
    items: np.ndarray


@dataclass
class World:
    origin: tuple[float, float]  # projected coordinates of the scene's (0, 0)
    size: tuple[float, float]
    walls: np.ndarray
    buildings: np.ndarray
    trees: np.ndarray
    wall_grid: Grid
    cell_hmax: np.ndarray  # tallest wall top in each grid cell: lets shadow rays skip low cells
    tree_grid: Grid
    ground: np.ndarray  # uint8 materials, row 0 at y = 0 (south)
    road_soft: np.ndarray  # uint8 blurred road mask: its bilinear 50% contour is a smooth kerb line
    marks: np.ndarray  # (n, 4) lane-marking dashes x0, y0, x1, y1: tested exactly, so they stay crisp
    mark_grid: Grid
    ground_res: float
    footprints: object  # shapely STRtree over building polygons (scene coordinates)
    footprint_polys: list
    streets: list  # (LineString in scene coordinates, highway, width_m)


def _colour(text) -> tuple[float, float, float] | None:
    if not isinstance(text, str):
        return None
    from matplotlib.colors import to_rgb

    t = text.strip().lower().replace(" ", "")
    if re_hex(t):
        t = "#" + t.lstrip("#")
    try:
        return to_rgb(t)
    except ValueError:
        return None


def re_hex(t: str) -> bool:
    s = t.lstrip("#")
    return len(s) in (3, 6) and all(c in "0123456789abcdef" for c in s)


def facade_style(tags: dict, osm_id: str, height: float) -> np.ndarray:
    """Facade parameters for one building: tagged colour and material where present, else a plausible
    style for its type and height; the rest is drawn from a generator seeded by the building id."""
    rng = np.random.default_rng(stable_hash("facade", osm_id))
    kind = str(tags.get("building", "yes"))
    material = MATERIAL_ALIASES.get(str(tags.get("building:material", "")).lower())
    if kind in ("church", "cathedral", "chapel", "civic", "government", "museum"):
        style = CLASSICAL
    elif kind in ("industrial", "warehouse", "hangar", "garage", "garages", "shed", "roof", "carport"):
        style = INDUSTRIAL
    elif kind in ("house", "detached", "semidetached_house", "bungalow", "terrace") and height < 14:
        style = HOUSE
    elif material == "glass" or (height > 30 and rng.random() < 0.6):
        style = CURTAIN
    else:
        style = int(rng.choice([PUNCHED, PUNCHED, PUNCHED, CLASSICAL, CURTAIN] if height > 16 else
                               [PUNCHED, PUNCHED, PUNCHED, HOUSE, CLASSICAL]))
    if material is None:
        material = {CURTAIN: "glass", CLASSICAL: "stone", INDUSTRIAL: "metal", HOUSE: "brick"}.get(style)
        if material is None:
            material = str(rng.choice(["brick", "plaster", "plaster", "stone", "concrete"]))
    palette = PALETTES[material]
    wall = np.array(palette[rng.integers(len(palette))]) * rng.uniform(0.9, 1.08)
    tagged = _colour(tags.get("building:colour"))
    if tagged is not None:
        wall = 0.8 * np.array(tagged) + 0.2 * wall  # tagged colours are often saturated web names
    accent = np.array(ACCENTS[rng.integers(len(ACCENTS))])
    tint = np.array(GLASS_TINTS[rng.integers(len(GLASS_TINTS))])
    office = kind in ("office", "commercial", "hotel", "retail") or style == CURTAIN
    floor = rng.uniform(3.6, 4.2) if office else rng.uniform(2.9, 3.4)
    if style == CLASSICAL:
        floor = rng.uniform(4.0, 5.0)
    spacing = {CURTAIN: rng.uniform(1.4, 1.9), INDUSTRIAL: rng.uniform(4.0, 7.0),
               HOUSE: rng.uniform(2.4, 3.2)}.get(style, rng.uniform(2.4, 3.8))
    win_w = {CURTAIN: 0.9, INDUSTRIAL: rng.uniform(0.5, 0.8)}.get(style, rng.uniform(0.35, 0.6))
    win_h = {CURTAIN: 0.8, INDUSTRIAL: rng.uniform(0.2, 0.35), CLASSICAL: rng.uniform(0.55, 0.7)}.get(
        style, rng.uniform(0.42, 0.6))
    shop = (kind in ("retail", "commercial", "mixed_use") or isinstance(tags.get("shop"), str)
            or (style in (PUNCHED, CLASSICAL) and height > 9 and rng.random() < 0.3))
    ground = rng.uniform(3.8, 4.6) if shop else floor
    row = np.zeros(19)
    row[B_HEIGHT] = height
    row[B_R:B_B + 1] = np.clip(wall, 0.03, 0.97)
    row[B_STYLE] = style
    row[B_FLOOR], row[B_SPACING], row[B_WINW], row[B_WINH], row[B_GROUND] = floor, spacing, win_w, win_h, ground
    row[B_AR:B_AB + 1] = accent
    row[B_TR:B_TB + 1] = tint
    row[B_SEED] = stable_hash("seed", osm_id) % 100_000
    row[B_SHOP] = float(shop)
    return row


def _build_grid(xmin, ymin, xmax, ymax, owner, size, nx, ny) -> Grid:
    """Bucket items by the cells their bounding boxes overlap (CSR layout)."""
    i0 = np.clip(np.floor(xmin / size).astype(np.int64), 0, nx - 1)
    i1 = np.clip(np.floor(xmax / size).astype(np.int64), 0, nx - 1)
    j0 = np.clip(np.floor(ymin / size).astype(np.int64), 0, ny - 1)
    j1 = np.clip(np.floor(ymax / size).astype(np.int64), 0, ny - 1)
    cells, items = [], []
    for k in range(len(i0)):
        ii, jj = np.meshgrid(np.arange(i0[k], i1[k] + 1), np.arange(j0[k], j1[k] + 1))
        cells.append((jj * nx + ii).ravel())
        items.append(np.full(ii.size, owner[k]))
    cells = np.concatenate(cells) if cells else np.zeros(0, np.int64)
    items = np.concatenate(items) if items else np.zeros(0, np.int64)
    order = np.argsort(cells, kind="stable")
    start = np.zeros(nx * ny + 1, np.int64)
    np.add.at(start, cells + 1, 1)
    return Grid(0.0, 0.0, size, nx, ny, np.cumsum(start), items[order].astype(np.int64))


def street_width(row) -> float:
    w = parse_length_m(row.get("width"))
    if w is not None and 1.0 <= w <= 60.0:
        return w
    hw = row.get("highway")
    lanes = row.get("lanes")
    try:
        n = float(str(lanes).split(";")[0]) if isinstance(lanes, str) else None
    except ValueError:
        n = None
    if n and 1 <= n <= 10 and hw not in PAVED_AS_STREET:
        return 3.2 * n + 1.0
    return ROAD_WIDTH_M.get(hw, 0.0)


def highway_kind(value) -> str:
    """OSMnx joins merged ways' tags into lists; the first value is representative."""
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value) if isinstance(value, str) else ""


def _scene_box(buildings, streets) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax): the buildings and streets with a 60 m margin, checked for size."""
    if not buildings:
        raise GeolocError("scene: no buildings")
    if not streets:
        raise GeolocError("scene: no streets")
    bounds = np.array([p.bounds for p, _ in buildings] + [s[0].bounds for s in streets])
    xmin, ymin = bounds[:, 0].min() - 60, bounds[:, 1].min() - 60
    xmax, ymax = bounds[:, 2].max() + 60, bounds[:, 3].max() + 60
    if max(xmax - xmin, ymax - ymin) > MAX_SCENE_SIDE_M:
        raise GeolocError(f"scene: the extract spans {xmax - xmin:.0f} x {ymax - ymin:.0f} m; "
                          f"clip it to a city centre under {MAX_SCENE_SIDE_M / 1000:.0f} km across")
    return xmin, ymin, xmax, ymax


def _walls(buildings, local) -> tuple[np.ndarray, np.ndarray, list]:
    """Wall segments (W_* columns) of every ring of every footprint, the buildings' facade rows (B_*
    columns) and the footprints in scene coordinates."""
    walls, brows, polys = [], [], []
    for b, (poly, tags) in enumerate(buildings):
        poly = orient(local(poly), sign=1.0)  # CCW outside, CW holes: outward normal is (dy, -dx)
        polys.append(poly)
        row = facade_style(tags, tags["osm_id"], tags["height"])
        row[B_MINH] = tags.get("min_height", 0.0)
        brows.append(row)
        u = 0.0
        for ring in [poly.exterior, *poly.interiors]:
            c = np.asarray(ring.coords)
            d = np.diff(c, axis=0)
            length = np.hypot(d[:, 0], d[:, 1])
            ok = length > 0.05
            c0, c1, d, length = c[:-1][ok], c[1:][ok], d[ok], length[ok]
            u0 = u + np.concatenate([[0.0], np.cumsum(length)[:-1]])
            u += length.sum()
            walls.append(np.column_stack([c0, c1, d[:, 1] / length, -d[:, 0] / length, u0, length,
                                          np.full(len(c0), b)]))
    return np.concatenate(walls), np.array(brows), polys


def _wall_grid(walls, bld, nx, ny) -> tuple[Grid, np.ndarray]:
    """The walls bucketed in grid cells, and the tallest wall top in each cell."""
    wall_grid = _build_grid(np.minimum(walls[:, 0], walls[:, 2]), np.minimum(walls[:, 1], walls[:, 3]),
                            np.maximum(walls[:, 0], walls[:, 2]), np.maximum(walls[:, 1], walls[:, 3]),
                            np.arange(len(walls)), GRID_CELL_M, nx, ny)
    owner = np.repeat(np.arange(nx * ny), np.diff(wall_grid.start))
    cell_hmax = np.zeros(nx * ny)
    np.maximum.at(cell_hmax, owner, bld[walls[wall_grid.items, W_BLD].astype(np.int64), B_HEIGHT])
    return wall_grid, cell_hmax


def _lane_marks(streets_local) -> np.ndarray:
    """(n, 4) dashes of the centre lines of the wider roads: 3 m dash, 6 m gap."""
    dashes = []
    for line, hw, width in streets_local:
        if hw in PAVED_AS_STREET or width < 6.5:
            continue
        for a in np.arange(1.5, line.length - 3.0, 9.0):
            p0, p1 = line.interpolate(a), line.interpolate(a + 3.0)
            dashes.append((p0.x, p0.y, p1.x, p1.y))
    return np.array(dashes, dtype=np.float64).reshape(-1, 4)


def _paint_ground(w, h, green_local, water_local, streets_local, marks, polys) -> tuple[np.ndarray, np.ndarray]:
    """The ground raster, painted back to front: unmapped open ground, green, water, sidewalks, roads,
    lane-marking stencils, footprints; and the blurred road mask whose 50% contour is the kerb line."""
    gw, gh = int(math.ceil(w / GROUND_RES_M)), int(math.ceil(h / GROUND_RES_M))
    img = Image.new("L", (gw, gh), OPEN)
    draw = ImageDraw.Draw(img)

    def px(coords):
        c = np.asarray(coords) / GROUND_RES_M
        return [tuple(p) for p in c]

    def fill(geom, value):
        for g in getattr(geom, "geoms", [geom]):
            if g.geom_type == "Polygon" and not g.is_empty:
                draw.polygon(px(g.exterior.coords), fill=value)
                for hole in g.interiors:
                    draw.polygon(px(hole.coords), fill=OPEN)

    for g in green_local:
        fill(g, GRASS)
    for g in water_local:
        fill(g, WATER)
    for line, hw, width in streets_local:
        if hw not in PAVED_AS_STREET:
            draw.line(px(line.coords), fill=PAVEMENT, width=int(round((width + 2 * SIDEWALK_M) / GROUND_RES_M)),
                      joint="curve")
    for line, hw, width in streets_local:
        draw.line(px(line.coords), fill=PAVING if hw in PAVED_AS_STREET else ROAD,
                  width=max(1, int(round(width / GROUND_RES_M))), joint="curve")
    for x0, y0, x1, y1 in marks:  # a wide stencil, so the shader tests exact dashes only where needed
        draw.line(px([(x0, y0), (x1, y1)]), fill=MARKING, width=3)
    for p in polys:
        fill(p, FOOTPRINT)
    ground = np.asarray(img, dtype=np.uint8)
    road = Image.fromarray(((ground == ROAD) | (ground == MARKING)).astype(np.uint8) * 255)
    road_soft = np.asarray(road.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.uint8)
    return ground, road_soft


def _tree_positions(trees, origin, green_local, streets_local, park_tree_spacing_m) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) positions in scene coordinates of the mapped trees, a deterministic scatter in parks and
    street lamps (one per 30 m on both sidewalks of every road), and which of them are lamps."""
    tree_xy = [np.asarray(trees, float).reshape(-1, 2) - origin] if trees is not None else []
    for g in green_local:
        gx0, gy0, gx1, gy1 = g.bounds
        rng = np.random.default_rng(stable_hash("park", round(gx0), round(gy0)))
        n = int(g.area / park_tree_spacing_m ** 2)
        if n:
            cand = rng.uniform([gx0, gy0], [gx1, gy1], size=(min(n * 2, 4000), 2))
            inside = shapely.contains_xy(g, cand[:, 0], cand[:, 1])
            tree_xy.append(cand[inside][: n // 2 + 1])
    n_trees = sum(len(t) for t in tree_xy)
    for line, hw, width in streets_local:
        if hw in PAVED_AS_STREET or width < 6.0 or line.length < 15.0:
            continue
        for side in (-1, 1):
            edge = line.offset_curve(side * (width / 2 + 0.6))
            if edge.geom_type == "LineString" and not edge.is_empty:
                tree_xy.append(np.array([edge.interpolate(a).coords[0] for a in np.arange(7.0, edge.length, 30.0)])
                               .reshape(-1, 2))
    is_lamp = np.concatenate([np.zeros(n_trees, bool), np.ones(sum(len(t) for t in tree_xy) - n_trees, bool)])
    tree_xy = np.concatenate(tree_xy) if tree_xy else np.zeros((0, 2))
    return tree_xy, is_lamp


def _tree_rows(tree_xy, is_lamp) -> np.ndarray:
    """(n, 10) T_* rows: crown size and colour drawn from a generator seeded by the position."""
    tr = np.zeros((len(tree_xy), 10))
    for i, (x, y) in enumerate(tree_xy):
        if is_lamp[i]:
            tr[i] = [x, y, 0.3, 5.8, 0.12, 0.07, 0.22, 0.23, 0.25, 1.0]
            continue
        rng = np.random.default_rng(stable_hash("tree", round(x * 10), round(y * 10)))
        r = rng.uniform(2.0, 4.5)
        rz = r * rng.uniform(1.0, 1.5)
        green_tone = np.array([0.16, 0.30, 0.10]) * rng.uniform(0.75, 1.3) + rng.uniform(-0.03, 0.03, 3)
        tr[i] = [x, y, r, rng.uniform(2.8, 4.5) + rz, rz, rng.uniform(0.12, 0.25), *green_tone, 0.0]
    return tr


def build_world(buildings, streets, green=(), water=(), trees=None, park_tree_spacing_m: float = 9.0) -> World:
    """buildings: iterable of (polygon, tags dict with osm_id/height/min_height); streets: iterable of
    (LineString, highway, width_m, is_tunnel); green/water: polygons; trees: (n, 2) positions.
    Coordinates are projected metres."""
    buildings = list(buildings)
    streets = [s for s in streets if s[2] > 0]
    xmin, ymin, xmax, ymax = _scene_box(buildings, streets)

    def local(g):
        return affinity.translate(g, -xmin, -ymin)

    walls, bld, polys = _walls(buildings, local)
    w, h = xmax - xmin, ymax - ymin
    nx, ny = int(math.ceil(w / GRID_CELL_M)), int(math.ceil(h / GRID_CELL_M))
    wall_grid, cell_hmax = _wall_grid(walls, bld, nx, ny)

    green_local = [local(g) for g in green]
    streets_local = [(local(line), hw, width) for line, hw, width, tunnel in sorted(streets, key=lambda s: s[2])
                     if not tunnel]
    marks = _lane_marks(streets_local)
    mark_grid = _build_grid(np.minimum(marks[:, 0], marks[:, 2]), np.minimum(marks[:, 1], marks[:, 3]),
                            np.maximum(marks[:, 0], marks[:, 2]), np.maximum(marks[:, 1], marks[:, 3]),
                            np.arange(len(marks)), GRID_CELL_M, nx, ny)
    ground, road_soft = _paint_ground(w, h, green_local, [local(g) for g in water], streets_local, marks, polys)

    # Trees (mapped, in parks) and street lamps; none inside a building.
    tree_xy, is_lamp = _tree_positions(trees, [xmin, ymin], green_local, streets_local, park_tree_spacing_m)
    keep = (tree_xy[:, 0] > 0) & (tree_xy[:, 1] > 0) & (tree_xy[:, 0] < w) & (tree_xy[:, 1] < h)
    foot = STRtree(polys)
    if len(tree_xy):
        keep[foot.query(shapely.points(tree_xy), predicate="within")[0]] = False
    tr = _tree_rows(tree_xy[keep], is_lamp[keep])
    tree_grid = _build_grid(tr[:, T_X] - tr[:, T_R], tr[:, T_Y] - tr[:, T_R], tr[:, T_X] + tr[:, T_R],
                            tr[:, T_Y] + tr[:, T_R], np.arange(len(tr)), GRID_CELL_M, nx, ny)
    return World(origin=(float(xmin), float(ymin)), size=(float(w), float(h)), walls=walls, buildings=bld,
                 trees=tr, wall_grid=wall_grid, cell_hmax=cell_hmax, tree_grid=tree_grid, ground=ground,
                 road_soft=road_soft, marks=marks, mark_grid=mark_grid, ground_res=GROUND_RES_M,
                 footprints=foot, footprint_polys=polys, streets=streets_local)


def world_from_city(city: City) -> World:
    b = city.buildings
    cols = [c for c in b.columns if c != "geometry"]
    items = [(geom, {c: v for c, v in zip(cols, vals)}) for geom, *vals in
             zip(b.geometry, *[b[c] for c in cols])]
    streets = []
    for row in city.streets.to_dict("records"):
        hw = highway_kind(row.get("highway"))
        row = {**row, "highway": hw, "width": highway_kind(row.get("width")), "lanes": highway_kind(row.get("lanes"))}
        tunnel = highway_kind(row.get("tunnel")) not in ("", "no")
        streets.append((row["geometry"], hw, street_width(row), tunnel))
    return build_world(items, streets, city.green, city.water, city.trees)
