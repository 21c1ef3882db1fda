"""Ray caster: one perspective street-level view of a World.

Walls are vertical, so every ray's horizontal path through the plan decides what it can hit. Each
image casts 2 x width horizontal rays through a uniform grid, collects the ordered wall, tree and
vehicle crossings, then every pixel walks its ray's list with its own slope (this also gives pitch and
roll for free). numba compiles the loops; everything is seeded, so the same inputs give the same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numba import njit

from retrieval.synth.scene import (
    B_AB, B_AG, B_AR, B_B, B_FLOOR, B_G, B_GROUND, B_HEIGHT, B_MINH, B_R, B_SEED, B_SHOP, B_SPACING,
    B_STYLE, B_TB, B_TG, B_TR, B_WINH, B_WINW, CLASSICAL, CURTAIN, FOOTPRINT, GRASS, HOUSE, INDUSTRIAL,
    MARKING, OPEN, PAVEMENT, PAVING, PUNCHED, ROAD, T_CB, T_CG, T_CR, T_LAMP, T_R, T_RZ, T_TRUNK, T_X, T_Y, T_Z, W_BLD, W_LEN, W_NX,
    W_NY, W_U0, W_X0, W_X1, W_Y0, W_Y1, WATER, World,
)

MAX_WALL_HITS = 40
MAX_TREE_HITS = 16
MAX_VEHICLES = 20  # vehicles and street furniture (the occluders and furniture knobs add both)

# Look parameters (one float64 vector per image).
(L_SUN_AZ, L_SUN_EL, L_SUN_R, L_SUN_G, L_SUN_B, L_AMB_R, L_AMB_G, L_AMB_B, L_ZEN_R, L_ZEN_G, L_ZEN_B,
 L_HOR_R, L_HOR_G, L_HOR_B, L_HAZE_D, L_CLOUDS, L_LIT, L_EXPOSURE, L_WB_R, L_WB_B, L_NOISE, L_SEED,
 L_MAXDIST, L_VIGNETTE, L_FACADE, L_WINDOWS) = range(26)
# L_FACADE: how far each building's colour shifts in this image; L_WINDOWS: how far its window bays, panes
# and shopfront change (0: not at all; synth.randomize)
N_LOOK = 26
# Vehicle columns.
V_X, V_Y, V_AX, V_AY, V_HL, V_HW, V_H, V_R, V_G, V_B, V_KIND = range(11)
CAR, VAN, BUS = range(3)
POST, BIN, BOLLARD, CABINET, SHELTER = range(3, 8)  # street furniture: boxes on the pavement, as vehicles are
# What a pixel shows.
K_SKY, K_GROUND, K_WALL, K_ROOF, K_TREE, K_TRUNK, K_VEHICLE, K_VTOP = range(8)
KERB = 100  # a ground material only the shader uses


@dataclass
class Camera:
    x: float  # scene metres
    y: float
    heading: float  # degrees clockwise from north
    pitch: float = 0.0  # degrees, up positive
    roll: float = 0.0
    eye: float = 2.5
    fov: float = 90.0  # horizontal, degrees
    width: int = 224
    height: int = 224


@dataclass
class Look:
    """Light and sensor for one image."""

    params: np.ndarray
    vehicles: np.ndarray = field(default_factory=lambda: np.zeros((0, 11)))
    jpeg_quality: int = 90
    blur: float = 0.0  # Gaussian sigma in pixels at 224 px wide (scaled with the width)


CONDITIONS = ("day", "dusk")


def sample_look(rng: np.random.Generator, condition: str = "day") -> Look:
    """Time of day, weather, haze and sensor settings. 'day': sun 20-65 degrees up, mostly clear;
    'dusk': low warm sun or overcast, lit windows, denser haze (a condition shift for testing)."""
    p = np.zeros(N_LOOK)
    p[L_SUN_AZ] = rng.uniform(0, 2 * math.pi)
    overcast = rng.random() < (0.25 if condition == "day" else 0.4)
    if condition == "day":
        el = rng.uniform(20, 65)
        warmth = rng.uniform(0.0, 0.15)
        p[L_LIT] = 0.02
        p[L_HAZE_D] = rng.uniform(350, 900)
    elif condition == "dusk":
        el = rng.uniform(3, 14)
        warmth = rng.uniform(0.35, 0.6)
        p[L_LIT] = rng.uniform(0.25, 0.5)
        p[L_HAZE_D] = rng.uniform(180, 450)
    else:
        raise ValueError(f"unknown condition {condition!r} (choose {', '.join(CONDITIONS)})")
    p[L_SUN_EL] = math.radians(el)
    sun = np.array([1.0, 1.0 - 0.25 * warmth, 1.0 - 0.55 * warmth]) * rng.uniform(0.65, 0.8)
    zen = np.array([0.28, 0.46, 0.80]) * rng.uniform(0.85, 1.1)
    hor = np.array([0.70, 0.80, 0.90]) * rng.uniform(0.9, 1.05)
    if condition == "dusk":
        zen = np.array([0.20, 0.26, 0.45]) * rng.uniform(0.8, 1.1)
        hor = np.array([0.95, 0.70, 0.48]) * rng.uniform(0.85, 1.05)
    amb = 0.22 * zen + 0.28 * hor
    if overcast:
        grey = rng.uniform(0.62, 0.8)
        zen = hor = np.array([grey, grey, grey * 1.03]) * (0.75 if condition == "dusk" else 1.0)
        sun *= 0.12
        amb = np.array([0.60, 0.61, 0.64]) * (0.6 if condition == "dusk" else 1.0)
        p[L_CLOUDS] = 0.0
    else:
        p[L_CLOUDS] = rng.uniform(0.0, 0.6)
    if condition == "dusk" and not overcast:
        sun *= 0.75
        amb *= 0.7
    p[L_SUN_R:L_SUN_B + 1] = sun
    p[L_AMB_R:L_AMB_B + 1] = amb
    p[L_ZEN_R:L_ZEN_B + 1] = zen
    p[L_HOR_R:L_HOR_B + 1] = hor
    p[L_EXPOSURE] = rng.uniform(0.9, 1.12)
    p[L_WB_R], p[L_WB_B] = rng.uniform(0.93, 1.07, 2)
    p[L_NOISE] = rng.uniform(0.005, 0.025)
    p[L_SEED] = rng.integers(1 << 30)
    p[L_MAXDIST] = 450.0
    p[L_VIGNETTE] = rng.uniform(0.0, 0.25)
    return Look(params=p, jpeg_quality=int(rng.integers(72, 95)))


# --- the scene as the kernels read it ----------------------------------------------------------------

class Scene(NamedTuple):
    """One World's arrays as the numba kernels read them. numba passes a namedtuple as a struct; the
    kernel and its once-per-image steps take it whole, the helpers of its inner loops take its arrays."""

    walls: np.ndarray  # (n, 9) wall segments, W_* columns
    buildings: np.ndarray  # (m, 19) B_* columns
    wall_start: np.ndarray  # the wall grid: cell c holds wall_items[wall_start[c]:wall_start[c + 1]]
    wall_items: np.ndarray
    cell_hmax: np.ndarray  # tallest wall top in each cell: shadow rays skip lower cells
    hmax: float  # the tallest building (0 if none is taller)
    trees: np.ndarray  # (t, 10) trees and street lamps, T_* columns
    tree_start: np.ndarray  # the tree grid (same cells)
    tree_items: np.ndarray
    cell: float  # side of a grid cell in metres; the wall, tree and mark grids share their cells
    nx: int
    ny: int
    ground: np.ndarray  # uint8 material raster
    road_soft: np.ndarray  # uint8 blurred road mask
    ground_res: float  # metres per raster pixel
    marks: np.ndarray  # (d, 4) lane-marking dashes
    mark_start: np.ndarray  # the mark grid (same cells)
    mark_items: np.ndarray


def scene_of(world: World) -> Scene:
    """The kernels' view of a World (the same arrays, not copies)."""
    g, tg, mg = world.wall_grid, world.tree_grid, world.mark_grid
    hmax = max(0.0, float(world.buildings[:, B_HEIGHT].max())) if len(world.buildings) else 0.0
    return Scene(walls=world.walls, buildings=world.buildings, wall_start=g.start, wall_items=g.items,
                 cell_hmax=world.cell_hmax, hmax=hmax, trees=world.trees, tree_start=tg.start,
                 tree_items=tg.items, cell=float(g.cell), nx=int(g.nx), ny=int(g.ny), ground=world.ground,
                 road_soft=world.road_soft, ground_res=float(world.ground_res), marks=world.marks,
                 mark_start=mg.start, mark_items=mg.items)


class Pose(NamedTuple):
    """The camera as the kernel reads it: scene metres and radians."""

    x: float
    y: float
    eye: float
    yaw: float
    pitch: float
    roll: float
    fov: float


class Frame(NamedTuple):
    """Buffers for one image size, reused between images: fresh megabytes per image would cost more in
    page faults than some of the shading."""

    img: np.ndarray  # (H, W, 3) linear colour 0..1
    depth: np.ndarray  # (H, W) metres along the ray; inf = sky
    pix: np.ndarray  # (5, H, W): tan(azimuth) from the heading, unit horizontal direction x, y, slope, length
    ray: np.ndarray  # (H, W) the horizontal ray each pixel walks
    hs: np.ndarray  # (2W, MAX_WALL_HITS) each ray's wall crossings: ray length,
    hw: np.ndarray  # wall,
    hf: np.ndarray  # 1 if seen from outside


class Sun(NamedTuple):
    x: float  # horizontal unit direction towards the sun
    y: float
    up: float  # sin(elevation)
    h: float  # cos(elevation)
    tan_el: float


class Rays(NamedTuple):
    """What each horizontal ray of one image crosses, in order (built by _cast_rays)."""

    dx: np.ndarray  # unit direction
    dy: np.ndarray
    n_walls: np.ndarray  # wall crossings: Frame.hs/hw/hf[k, :n_walls[k]]
    wall_s: np.ndarray
    wall_id: np.ndarray
    wall_front: np.ndarray
    n_trees: np.ndarray  # tree candidates sorted by where the ray enters their crown's footprint
    tree_s: np.ndarray
    tree_id: np.ndarray
    veh_in: np.ndarray  # (NR, MAX_VEHICLES) ray length into each vehicle's box (1e30: missed),
    veh_out: np.ndarray  # out of it,
    veh_u: np.ndarray  # where along the face it enters,
    veh_face: np.ndarray  # which face: 0..3 for +a, -a, +b, -b
    skyline: np.ndarray  # elevation (as a slope) of the far skyline


# --- numba kernels ---------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _hash(a, b, c):
    h = (np.int64(a) * 374761393 + np.int64(b) * 668265263 + np.int64(c) * 1274126177) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1103515245) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h / 4294967296.0


@njit(cache=True, inline="always")
def _noise(x, y, seed):
    """Value noise in [0, 1)."""
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a = _hash(ix, iy, seed)
    b = _hash(ix + 1, iy, seed)
    c = _hash(ix, iy + 1, seed)
    d = _hash(ix + 1, iy + 1, seed)
    return (a + (b - a) * sx) * (1 - sy) + (c + (d - c) * sx) * sy


@njit(cache=True, inline="always")
def _frac(x):
    return x - math.floor(x)


@njit(cache=True)
def _sky(dx, dy, dz, look, sun, out, disk=1.0):
    """Sky colour seen along unit direction (dx, dy, dz): gradient, sun glow, clouds. disk=0 leaves out
    the sun's disc (reflections in glass would otherwise show it as a blinding blob)."""
    norm = math.sqrt(dx * dx + dy * dy + dz * dz)
    dx, dy, dz = dx / norm, dy / norm, dz / norm
    up = max(dz, 0.0)
    g = 1.0 - (1.0 - up) * (1.0 - up) * (1.0 - up)
    cosang = dx * sun[0] + dy * sun[1] + dz * sun[2]
    glow = 0.0
    if cosang > 0.8:  # below, the glow is under half a percent
        glow = cosang ** 24 * 0.45 * disk
        if cosang > 0.99:
            glow += cosang ** 600 * 2.0 * disk
    for c in range(3):
        out[c] = look[L_HOR_R + c] * (1 - g) + look[L_ZEN_R + c] * g + glow * look[L_SUN_R + c]
    cover = look[L_CLOUDS]
    if cover > 0 and dz > 0.02 and disk == 1.0:  # reflections show the sky's gradient, not its clouds
        px, py = dx / dz * 2.0, dy / dz * 2.0
        seed = np.int64(look[L_SEED])
        n = 0.55 * _noise(px, py, seed) + 0.3 * _noise(px * 2.3, py * 2.3, seed + 1) \
            + 0.15 * _noise(px * 5.1, py * 5.1, seed + 2)
        a = min(max((n - (1.0 - cover)) * 3.0, 0.0), 1.0) * min(dz * 4.0, 1.0)
        shade = 0.92 + 0.1 * _noise(px * 3.0, py * 3.0, seed + 3)
        for c in range(3):
            out[c] = out[c] * (1 - a) + a * shade * (0.55 * look[L_SUN_R + c] + 0.45 * look[L_HOR_R + c])


@njit(cache=True, inline="always")
def _sky_gradient(up, look, out):
    up = min(up, 1.0)
    g = 1.0 - (1.0 - up) * (1.0 - up) * (1.0 - up)
    for c in range(3):
        out[c] = look[L_HOR_R + c] * (1 - g) + look[L_ZEN_R + c] * g


# --- grid walk and ray casting ------------------------------------------------------------------------
# The loops per pixel and per grid cell call few functions and hand them plain arrays, not the
# namedtuples: a call passes each array as several words, and an array taken out of a tuple or handed
# to an inlined function has its reference counted. In the pixel loop either costs more than the work
# (the first-hit search as three helpers made the renderer about 40% slower), so it stays inline; the whole
# kernel cut into helpers of at most 80 lines renders the same bytes at half the speed
# (benchmarks/render_split, RESULTS.md).

@njit(cache=True, inline="always")
def _walk_start(ox, oy, dx, dy, cell):
    """Start a walk through the grid cells along the ray (ox, oy) + s (dx, dy). The walk is a tuple
    (i, j, step_i, step_j, s across a cell in x, in y, s at the next x border, at the next y border)."""
    i = int(math.floor(ox / cell))
    j = int(math.floor(oy / cell))
    step_i = 1 if dx > 0 else -1
    step_j = 1 if dy > 0 else -1
    big = 1e30
    tdx = abs(cell / dx) if dx != 0 else big
    tdy = abs(cell / dy) if dy != 0 else big
    tmx = (((i + 1) * cell - ox) / dx if dx > 0 else (i * cell - ox) / dx) if dx != 0 else big
    tmy = (((j + 1) * cell - oy) / dy if dy > 0 else (j * cell - oy) / dy) if dy != 0 else big
    return i, j, step_i, step_j, tdx, tdy, tmx, tmy


@njit(cache=True, inline="always")
def _walk_cell(walk, nx, ny):
    """The walk's cell index (-1 once it has left the grid) and the ray length where it leaves the cell."""
    i, j = walk[0], walk[1]
    c = j * nx + i if 0 <= i < nx and 0 <= j < ny else -1
    return c, min(walk[6], walk[7])


@njit(cache=True, inline="always")
def _walk_next(walk):
    i, j, step_i, step_j, tdx, tdy, tmx, tmy = walk
    if tmx < tmy:
        return i + step_i, j, step_i, step_j, tdx, tdy, tmx + tdx, tmy
    return i, j + step_j, step_i, step_j, tdx, tdy, tmx, tmy + tdy


@njit(cache=True, inline="always")
def _crossing(walls, w, ox, oy, dx, dy):
    """Where the ray (ox, oy) + s (dx, dy) meets the line of wall w: (s, v), v the fraction along the
    wall (0..1 on it); s = -1 if they are parallel."""
    ex = walls[w, W_X1] - walls[w, W_X0]
    ey = walls[w, W_Y1] - walls[w, W_Y0]
    den = dx * ey - dy * ex
    if abs(den) < 1e-12:
        return -1.0, -1.0
    wx = walls[w, W_X0] - ox
    wy = walls[w, W_Y0] - oy
    return (wx * ey - wy * ex) / den, (wx * dy - wy * dx) / den


@njit(cache=True, inline="always")
def _add_wall_crossings(walls, items, lo, hi, ox, oy, dx, dy, s_in, s_out, nh, hs, hw, hfront):
    """Insert the walls items[lo:hi] (one grid cell's) that the ray crosses between s_in and s_out into
    its ordered crossings (hs, hw, hfront: ray length, wall, 1 if seen from outside); returns their count."""
    first_new = nh
    for q in range(lo, hi):
        w = items[q]
        s, v = _crossing(walls, w, ox, oy, dx, dy)
        if s < s_in or s >= s_out or s < 0.05:
            continue  # each crossing is taken in the cell that contains it, so once, in order
        if v < 0.0 or v > 1.0 or nh >= MAX_WALL_HITS:
            continue
        k = nh
        while k > first_new and hs[k - 1] > s:
            hs[k] = hs[k - 1]
            hw[k] = hw[k - 1]
            hfront[k] = hfront[k - 1]
            k -= 1
        hs[k] = s
        hw[k] = w
        hfront[k] = 1 if dx * walls[w, W_NX] + dy * walls[w, W_NY] < 0 else 0
        nh += 1
    return nh


@njit(cache=True, inline="always")
def _hides_the_rest(walls, bld, first, nh, hs, hw, hfront, tmax, eye):
    """Does one of crossings first..nh-1 cover the ray's topmost pixel, so that nothing behind it shows?"""
    for k in range(first, nh):
        b = int(walls[hw[k], W_BLD])
        if hfront[k] == 1 and bld[b, B_MINH] <= 0.0 and (bld[b, B_HEIGHT] - eye) >= tmax * hs[k]:
            return True
    return False


@njit(cache=True, inline="always")
def _add_tree_candidates(trees, items, lo, hi, ox, oy, dx, dy, nt, ts, tidx):
    """Add the trees items[lo:hi] (one grid cell's) whose crown's footprint the ray passes through,
    ordered by where it enters (ts, tidx); returns their count."""
    for q in range(lo, hi):
        t = items[q]
        cx = trees[t, T_X] - ox
        cy = trees[t, T_Y] - oy
        s0 = cx * dx + cy * dy
        p = abs(cx * dy - cy * dx)
        r = trees[t, T_R]
        if p >= r or s0 + r < 0.05 or nt >= MAX_TREE_HITS:
            continue
        seen = False
        for k in range(nt):
            if tidx[k] == t:
                seen = True
        if seen:
            continue
        e = s0 - math.sqrt(r * r - p * p)
        k = nt
        while k > 0 and ts[k - 1] > e:
            ts[k] = ts[k - 1]
            tidx[k] = tidx[k - 1]
            k -= 1
        ts[k] = e
        tidx[k] = t
        nt += 1
    return nt


@njit(cache=True)
def _trace_ray(scene, ox, oy, dx, dy, smax, tmax, eye, hs, hw, hfront, ts, tidx):
    """Walk the grid cells along one horizontal ray; fill the ordered wall crossings (hs, hw, hfront)
    and tree candidates (ts, tidx). Stops once a wall hides everything this ray's pixels look at."""
    walls, bld, trees = scene.walls, scene.buildings, scene.trees
    wall_start, wall_items, tree_start, tree_items = scene.wall_start, scene.wall_items, scene.tree_start, \
        scene.tree_items
    nx, ny = scene.nx, scene.ny
    nh = 0
    nt = 0
    walk = _walk_start(ox, oy, dx, dy, scene.cell)
    s_in = 0.0
    done = False
    while not done and s_in < smax:
        c, s_out = _walk_cell(walk, nx, ny)
        if c < 0:
            break
        first_new = nh
        nh = _add_wall_crossings(walls, wall_items, wall_start[c], wall_start[c + 1], ox, oy, dx, dy, s_in,
                                 s_out, nh, hs, hw, hfront)
        done = _hides_the_rest(walls, bld, first_new, nh, hs, hw, hfront, tmax, eye) or nh >= MAX_WALL_HITS
        nt = _add_tree_candidates(trees, tree_items, tree_start[c], tree_start[c + 1], ox, oy, dx, dy, nt,
                                  ts, tidx)
        s_in = s_out
        walk = _walk_next(walk)
    return nh, nt


@njit(cache=True)
def _in_shadow(px, py, z0, sun, walls, bld, wall_start, wall_items, cell_hmax, grid, hmax):
    """Does a wall stand between the point (px, py, z0) and the sun? A 2D grid walk towards the sun,
    skipping cells whose walls are all lower than the sun ray there. grid: (cell, nx, ny)."""
    sx, sy, tan_el = sun.x, sun.y, sun.tan_el
    if tan_el <= 0:
        return True
    qmax = min((hmax - z0) / tan_el, 100.0)  # longer shadows are rare and far away
    if qmax <= 0:
        return False
    cell, nx, ny = grid
    walk = _walk_start(px, py, sx, sy, cell)
    q_in = 0.0
    while q_in < qmax:
        c, q_out = _walk_cell(walk, nx, ny)
        if c < 0:
            break
        if cell_hmax[c] > z0 + q_in * tan_el:
            for q in range(wall_start[c], wall_start[c + 1]):
                w = wall_items[q]
                s, v = _crossing(walls, w, px, py, sx, sy)
                if s < 0.03 or s < q_in - 1e-9 or s > q_out + 1e-9 or v < 0.0 or v > 1.0:
                    continue
                b = int(walls[w, W_BLD])
                zq = z0 + s * tan_el
                if bld[b, B_MINH] <= zq <= bld[b, B_HEIGHT]:
                    return True
        q_in = q_out
        walk = _walk_next(walk)
    return False


@njit(cache=True, inline="always")
def _slab(p, d, half, t0, t1, f, face_up, face_down):
    """Clip a ray's span (t0, t1) inside a box to the slab |p + t d| <= half of one of its axes; f is the
    face it enters by (face_up when d > 0, else face_down). Returns (t0, t1, f, missed)."""
    if abs(d) > 1e-12:
        a1, a2 = (-half - p) / d, (half - p) / d
        if min(a1, a2) > t0:
            t0 = min(a1, a2)
            f = face_up if d > 0 else face_down
        return t0, min(t1, max(a1, a2)), f, False
    return t0, t1, f, abs(p) > half


@njit(cache=True)
def _vehicle_spans(vehicles, nv, ox, oy, dx, dy, k, vin, vout, vu, vface):
    """Where horizontal ray k enters and leaves each vehicle's box (slab test in the vehicle's axes)."""
    for v in range(nv):
        ax, ay = vehicles[v, V_AX], vehicles[v, V_AY]
        lx = (ox - vehicles[v, V_X]) * ax + (oy - vehicles[v, V_Y]) * ay
        ly = -(ox - vehicles[v, V_X]) * ay + (oy - vehicles[v, V_Y]) * ax
        ddx = dx * ax + dy * ay
        ddy = -dx * ay + dy * ax
        t0, t1, f, missed = _slab(lx, ddx, vehicles[v, V_HL], -1e30, 1e30, -1, 1, 0)
        if missed:
            continue
        t0, t1, f, missed = _slab(ly, ddy, vehicles[v, V_HW], t0, t1, f, 3, 2)
        if missed:
            continue
        if t0 < t1 and t0 > 0.05:
            vin[k, v], vout[k, v], vface[k, v] = t0, t1, f
            vu[k, v] = (ly + t0 * ddy) if f < 2 else (lx + t0 * ddx)


@njit(cache=True)
def _pixel_rays(pose, pix):
    """Each pixel's direction: tan(azimuth) from the heading, unit horizontal direction, slope (dz per
    horizontal metre) and 3D length per horizontal metre, into pix[0..4]. Returns the azimuths' range."""
    H, W = pix.shape[1], pix.shape[2]
    yaw, pitch, roll = pose.yaw, pose.pitch, pose.roll
    # Camera basis: x east, y north, z up.
    fx, fy, fz = math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch)
    rx0, ry0 = math.cos(yaw), -math.sin(yaw)
    ux0, uy0, uz0 = -math.sin(yaw) * math.sin(pitch), -math.cos(yaw) * math.sin(pitch), math.cos(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rx, ry, rz = cr * rx0 + sr * ux0, cr * ry0 + sr * uy0, sr * uz0
    ux, uy, uz = -sr * rx0 + cr * ux0, -sr * ry0 + cr * uy0, cr * uz0
    tanh = math.tan(pose.fov * 0.5)
    # Rays are spaced evenly in tan(azimuth) relative to the heading: no trigonometry per pixel.
    fhx, fhy = math.sin(yaw), math.cos(yaw)
    taz, pdxs, pdys, slope, hlen = pix[0], pix[1], pix[2], pix[3], pix[4]
    amin, amax = 1e9, -1e9
    for i in range(H):
        py = (1 - (i + 0.5) / H * 2) * tanh * H / W
        for j in range(W):
            px = ((j + 0.5) / W * 2 - 1) * tanh
            dx = fx + px * rx + py * ux
            dy = fy + px * ry + py * uy
            dz = fz + px * rz + py * uz
            hl = math.sqrt(dx * dx + dy * dy)
            a = (dx * rx0 + dy * ry0) / max(dx * fhx + dy * fhy, 1e-6)
            taz[i, j] = a
            pdxs[i, j] = dx / hl
            pdys[i, j] = dy / hl
            t = dz / hl
            slope[i, j] = t
            hlen[i, j] = math.sqrt(1 + t * t)
            amin = min(amin, a)
            amax = max(amax, a)
    return amin, amax


@njit(cache=True)
def _cast_rays(pose, look, vehicles, scene, frame, amin, da):
    """Bin the pixels into 2W horizontal rays evenly spaced in tan(azimuth) (frame.ray) and cast each:
    its walls, trees and vehicles in order, and the far skyline above it."""
    pix, ray = frame.pix, frame.ray
    H, W = ray.shape[0], ray.shape[1]
    NR = 2 * W
    tmax = np.full(NR, -1e9)  # each ray's steepest pixel
    for i in range(H):
        for j in range(W):
            k = min(int((pix[0, i, j] - amin) / da), NR - 1)
            ray[i, j] = k
            tmax[k] = max(tmax[k], pix[3, i, j])
    hs, hw, hf = frame.hs, frame.hw, frame.hf
    rdx, rdy, skyline = np.empty(NR), np.empty(NR), np.empty(NR)
    n_walls, n_trees = np.zeros(NR, np.int64), np.zeros(NR, np.int64)
    tree_s, tree_id = np.empty((NR, MAX_TREE_HITS)), np.empty((NR, MAX_TREE_HITS), np.int64)
    veh_in, veh_out = np.full((NR, MAX_VEHICLES), 1e30), np.empty((NR, MAX_VEHICLES))
    veh_u, veh_face = np.empty((NR, MAX_VEHICLES)), np.empty((NR, MAX_VEHICLES), np.int64)
    nv = min(vehicles.shape[0], MAX_VEHICLES)
    ox, oy, eye = pose.x, pose.y, pose.eye
    fhx, fhy = math.sin(pose.yaw), math.cos(pose.yaw)
    rx0, ry0 = math.cos(pose.yaw), -math.sin(pose.yaw)
    smax = look[L_MAXDIST]
    for k in range(NR):
        a = amin + (k + 0.5) * da
        dx, dy = fhx + a * rx0, fhy + a * ry0
        norm = math.sqrt(dx * dx + dy * dy)
        dx, dy = dx / norm, dy / norm
        rdx[k], rdy[k] = dx, dy
        lim = smax
        if tmax[k] < 0:
            lim = min(smax, eye / -tmax[k] + 1.0)
        n_walls[k], n_trees[k] = _trace_ray(scene, ox, oy, dx, dy, lim, tmax[k], eye, hs[k], hw[k], hf[k],
                                            tree_s[k], tree_id[k])
        _vehicle_spans(vehicles, nv, ox, oy, dx, dy, k, veh_in, veh_out, veh_u, veh_face)
        # A far skyline on the horizon, the same from everywhere (like distant hills or towers).
        azd = ((pose.yaw + math.atan(amin + (k + 0.5) * da)) % (2 * math.pi)) * 40.0
        skyline[k] = 0.012 + 0.03 * _noise(azd * 0.15, 0.5, 99) * (_hash(math.floor(azd), 1, 98) > 0.35) \
            + 0.02 * _noise(azd * 0.03, 0.5, 97)
    return Rays(dx=rdx, dy=rdy, n_walls=n_walls, wall_s=hs, wall_id=hw, wall_front=hf, n_trees=n_trees,
                tree_s=tree_s, tree_id=tree_id, veh_in=veh_in, veh_out=veh_out, veh_u=veh_u, veh_face=veh_face,
                skyline=skyline)


# --- shading ------------------------------------------------------------------------------------------

@njit(cache=True)
def _shop_front(bld, b, u, z, br, bg, bb, pane_m, accent, look, sky):
    """A shop's ground floor below its fascia line: fascia with lettering, plinth, lit shop windows of
    pane_m metres; accent: the fascia's and frames' colour."""
    ground = bld[b, B_GROUND]
    bseed = np.int64(bld[b, B_SEED])
    ar, ag, ab = accent
    if z > ground - 0.85:
        letter = _hash(math.floor(u * 2.5), math.floor(z * 4.0), bseed) > 0.55 and z < ground - 0.2 \
            and _frac(u / 9.0) < 0.6
        r, g, bl = ar, ag, ab
        if letter:
            r, g, bl = 0.95 - r * 0.5, 0.95 - g * 0.5, 0.92 - bl * 0.5
    elif z < 0.3:
        r, g, bl = br * 0.55, bg * 0.55, bb * 0.55
    else:
        pane = _frac(u / pane_m)
        if pane < 0.07 or z > ground - 1.05:
            r, g, bl = ar * 0.6, ag * 0.6, ab * 0.6
        else:
            inside = 0.08 + 0.12 * _hash(math.floor(u / pane_m), 7, bseed)
            lit = 0.25 * look[L_LIT] * 2
            r = inside + lit + 0.28 * sky[0] * (1.0 - z / ground)
            g = inside + lit * 0.85 + 0.28 * sky[1] * (1.0 - z / ground)
            bl = inside + lit * 0.6 + 0.28 * sky[2] * (1.0 - z / ground)
    return r, g, bl


@njit(cache=True)
def _facade_pattern(bld, b, style, u, z, uf, zf, fh, spacing, ww, wh, br, bg, bb):
    """The facade's pattern at (uf, zf), the position within its window bay (0..1 across, 0..1 up a floor
    of fh metres; bays spacing metres wide, windows ww x wh of a bay): wall colour, or glass = 1.0 where a
    window pane is."""
    r, g, bl = br, bg, bb
    glass = 0.0
    if style == CURTAIN:
        if uf < 0.07 or zf < 0.1:
            r, g, bl = br * 0.9, bg * 0.9, bb * 0.9
        else:
            glass = 1.0
    elif style == INDUSTRIAL:
        if abs(uf - 0.5) < ww * 0.5 and abs(zf - 0.72) < wh * 0.5 and z > 2.0:
            glass = 1.0
        elif _frac(u / 0.7) < 0.12:
            r, g, bl = br * 0.82, bg * 0.82, bb * 0.82
    else:
        inw = abs(uf - 0.5) < ww * 0.5 and abs(zf - 0.55) < wh * 0.5
        if style == HOUSE and z < bld[b, B_GROUND] and _frac(u / 11.0) < 0.09 and z < 2.2:
            r, g, bl = bld[b, B_AR] * 0.8, bld[b, B_AG] * 0.8, bld[b, B_AB] * 0.8  # front doors
        elif inw:
            edge = min(ww * 0.5 - abs(uf - 0.5), (wh * 0.5 - abs(zf - 0.55)) * fh / spacing) * spacing
            if edge < 0.09:
                r, g, bl = 0.85, 0.84, 0.8
                if style == CLASSICAL:
                    r, g, bl = br * 0.8, bg * 0.8, bb * 0.8
            else:
                glass = 1.0
        elif zf < 0.06 and style == CLASSICAL:
            r, g, bl = br * 1.15, bg * 1.15, bb * 1.12
        elif style == CLASSICAL and zf > 0.55 + wh * 0.5 and zf < 0.62 + wh * 0.5 \
                and abs(uf - 0.5) < ww * 0.65:
            r, g, bl = br * 1.2, bg * 1.2, bb * 1.15  # window pediments
    return r, g, bl, glass


@njit(cache=True)
def _window_variant(bld, b, look):
    """The building's windows as this image shows them: style, bay spacing, window width and height (share
    of a bay), floor height, shop pane width, glass tint and accent colour. The windows knob (L_WINDOWS)
    redraws them per image around the building's own, as the facades knob does its colour."""
    style = int(bld[b, B_STYLE])
    ww, wh, spacing, floor_h, pane = bld[b, B_WINW], bld[b, B_WINH], bld[b, B_SPACING], bld[b, B_FLOOR], 2.7
    tint = (bld[b, B_TR], bld[b, B_TG], bld[b, B_TB])
    accent = (bld[b, B_AR], bld[b, B_AG], bld[b, B_AB])
    w = look[L_WINDOWS]
    if w > 0:
        bseed, iseed = np.int64(bld[b, B_SEED]), np.int64(look[L_SEED])
        ww = min(0.9, ww * (1.0 + w * (_hash(bseed, 5, iseed) - 0.5)))
        wh = min(0.9, wh * (1.0 + w * (_hash(bseed, 6, iseed) - 0.5)))
        spacing *= 1.0 + 0.6 * w * (_hash(bseed, 7, iseed) - 0.5)
        floor_h *= 1.0 + 0.3 * w * (_hash(bseed, 8, iseed) - 0.5)
        pane *= 1.0 + 1.2 * w * (_hash(bseed, 9, iseed) - 0.5)
        g = 1.0 + w * (_hash(bseed, 10, iseed) - 0.5)
        tint = (tint[0] * g, tint[1] * g, tint[2] * (1.0 + w * (_hash(bseed, 11, iseed) - 0.5)))
        a = _hash(bseed, 12, iseed)
        accent = (accent[0] * (0.5 + a), accent[1] * (1.5 - a), accent[2] * (0.6 + 0.8 * _hash(bseed, 13, iseed)))
        if style != CURTAIN and style != INDUSTRIAL and _hash(bseed, 14, iseed) < 0.35 * w:
            style = (PUNCHED, CLASSICAL, HOUSE)[int(3.0 * _hash(bseed, 15, iseed)) % 3]
    return style, ww, wh, spacing, floor_h, pane, tint, accent


@njit(cache=True)
def _shade_wall(bld, b, u, z, fp, look, sky):
    """Facade colour at (u metres along the building's perimeter, z metres up), before lighting, and
    1.0 if sunlight applies (0.0 for a lit window, which glows by itself). fp: a pixel's footprint in
    metres; sky: what glass reflects."""
    style, ww, wh, spacing, floor_h, pane, tint, accent = _window_variant(bld, b, look)
    height = bld[b, B_HEIGHT]
    bseed = np.int64(bld[b, B_SEED])
    br, bg, bb = bld[b, B_R], bld[b, B_G], bld[b, B_B]
    contrast = 0.16
    shift = look[L_FACADE]
    if shift > 0:  # the same building in another colour and state of wear in each image
        iseed = np.int64(look[L_SEED])
        br *= 1.0 + shift * (2.0 * _hash(bseed, 1, iseed) - 1.0)
        bg *= 1.0 + shift * (2.0 * _hash(bseed, 2, iseed) - 1.0)
        bb *= 1.0 + shift * (2.0 * _hash(bseed, 3, iseed) - 1.0)
        contrast *= 0.5 + 2.0 * _hash(bseed, 4, iseed)
    weather = 0.88 + contrast * _noise(u * 0.35, z * 0.35, bseed) - 0.08 * max(0.0, 1.0 - z / 3.0)
    br, bg, bb = br * weather, bg * weather, bb * weather
    ground = bld[b, B_GROUND]
    if bld[b, B_SHOP] > 0 and z < ground and height > ground + 1.0:
        r, g, bl = _shop_front(bld, b, u, z, br, bg, bb, pane, accent, look, sky)
        return r, g, bl, 1.0
    if z > height - 0.45 and style != CURTAIN:
        return br * 1.12, bg * 1.12, bb * 1.1, 1.0
    zz = z - ground if z >= ground else z
    fh = floor_h if z >= ground else ground
    fl = math.floor(zz / fh)
    zf = zz / fh - fl
    col = math.floor(u / spacing)
    uf = u / spacing - col
    r, g, bl, glass = _facade_pattern(bld, b, style, u, z, uf, zf, fh, spacing, ww, wh, br, bg, bb)
    tr, tg, tb = tint
    refl = 0.3 if style == CURTAIN else 0.18
    if glass > 0:
        h = _hash(col, fl, bseed)
        lit = _hash(col, fl, bseed + 5) < look[L_LIT]
        dark = 0.35 + 0.5 * h if style != CURTAIN else 0.8 + 0.25 * h
        vert = 0.75 + 0.5 * zf if style == CURTAIN else 1.0
        r = tr * dark + refl * sky[0] * vert
        g = tg * dark + refl * sky[1] * vert
        bl = tb * dark + refl * sky[2] * vert
        if lit:
            return 1.0, 0.82, 0.55, 0.0
    # Blend to the average facade colour as windows shrink below a pixel (anti-aliasing).
    period = min(spacing, fh)
    a = min(max((fp / period - 0.3) * 1.6, 0.0), 1.0)
    if a > 0:
        wf = ww * wh
        ar = br * (1 - wf) + (tr * 0.6 + refl * sky[0]) * wf
        ag = bg * (1 - wf) + (tg * 0.6 + refl * sky[1]) * wf
        ab = bb * (1 - wf) + (tb * 0.6 + refl * sky[2]) * wf
        r, g, bl = r * (1 - a) + ar * a, g * (1 - a) + ag * a, bl * (1 - a) + ab * a
    return r, g, bl, 1.0


@njit(cache=True)
def _on_mark(x, y, half_width, marks, mark_start, mark_items, grid):
    """Is (x, y) within half_width of a lane-marking dash? grid: (cell, nx, ny) of the mark grid."""
    cell, nx, ny = grid
    i, j = int(x / cell), int(y / cell)
    if not (0 <= i < nx and 0 <= j < ny):
        return False
    c = j * nx + i
    for q in range(mark_start[c], mark_start[c + 1]):
        m = mark_items[q]
        ex, ey = marks[m, 2] - marks[m, 0], marks[m, 3] - marks[m, 1]
        ll = ex * ex + ey * ey
        a = ((x - marks[m, 0]) * ex + (y - marks[m, 1]) * ey) / ll
        if 0.0 <= a <= 1.0:
            px, py = marks[m, 0] + a * ex - x, marks[m, 1] + a * ey - y
            if px * px + py * py < half_width * half_width:
                return True
    return False


@njit(cache=True, inline="always")
def _ground_material(ground, road_soft, gres, x, y):
    """The ground material at (x, y) from the raster, but kerbs follow the bilinear 50% contour of the
    blurred road mask, not the raster's steps. Also whether a lane marking may be there (then the
    material is ROAD, and the caller tests the exact dashes)."""
    gi, gj = int(y / gres), int(x / gres)
    m = FOOTPRINT
    stencil = False
    if 0 <= gi < ground.shape[0] - 1 and 0 <= gj < ground.shape[1] - 1:
        m = ground[gi, gj]
        fy_, fx_ = y / gres - 0.5 - gi, x / gres - 0.5 - gj
        if fy_ < 0:
            fy_ += 1
            gi -= 1
        if fx_ < 0:
            fx_ += 1
            gj -= 1
        if gi >= 0 and gj >= 0:
            rs = (road_soft[gi, gj] * (1 - fx_) + road_soft[gi, gj + 1] * fx_) * (1 - fy_) \
                + (road_soft[gi + 1, gj] * (1 - fx_) + road_soft[gi + 1, gj + 1] * fx_) * fy_
            if rs > 140:
                stencil = m == MARKING
                m = ROAD
            elif rs > 100:
                m = KERB
            elif m == ROAD or m == MARKING:
                m = PAVEMENT
    return m, stencil


@njit(cache=True)
def _shade_ground(m, x, y, fp):
    if m == ROAD:
        n = 0.85 + 0.15 * _noise(x * 0.8, y * 0.8, 11) + 0.05 * _hash(math.floor(x * 8), math.floor(y * 8), 3)
        return 0.30 * n, 0.30 * n, 0.32 * n
    if m == MARKING:
        return 0.82, 0.82, 0.78
    if m == KERB:
        return 0.55, 0.55, 0.53
    if m == GRASS:
        n = 0.7 + 0.45 * _noise(x * 0.6, y * 0.6, 12) + 0.15 * _hash(math.floor(x * 6), math.floor(y * 6), 4)
        return 0.22 * n, 0.38 * n, 0.13 * n
    if m == PAVING:
        n = 0.9 + 0.1 * _noise(x, y, 13)
        joint = 1.0
        if fp < 0.15 and (_frac(x * 3.3) < 0.08 or _frac(y * 1.65) < 0.08):
            joint = 0.85
        return 0.62 * n * joint, 0.56 * n * joint, 0.48 * n * joint
    if m == OPEN:
        # Unmapped ground between streets: worn gravel with patches of dry grass.
        n = _noise(x * 0.15, y * 0.15, 15) * 0.7 + _noise(x * 0.9, y * 0.9, 16) * 0.3
        k = 0.85 + 0.2 * _hash(math.floor(x * 5), math.floor(y * 5), 5)
        a = min(max((n - 0.45) * 4.0, 0.0), 1.0)
        return (0.46 * (1 - a) + 0.30 * a) * k, (0.43 * (1 - a) + 0.36 * a) * k, (0.37 * (1 - a) + 0.18 * a) * k
    # Pavement slabs (also what shows of footprints through gaps).
    n = 0.9 + 0.12 * _noise(x * 0.5, y * 0.5, 14)
    joint = 1.0
    if fp < 0.25 and (_frac(x / 1.2) < 0.05 or _frac(y / 1.2) < 0.05):
        joint = 0.88
    return 0.58 * n * joint, 0.57 * n * joint, 0.55 * n * joint


@njit(cache=True)
def _shade_tree(trees, t, x, y, z, sun, look):
    """A crown at (x, y, z), lit; a street lamp's (lit at dusk) or a tree's."""
    if trees[t, T_LAMP] > 0:
        if z < trees[t, T_Z] - 0.03 and look[L_LIT] > 0.1:
            return 1.0, 0.86, 0.6  # lit at dusk
        return 0.22 * look[L_AMB_R] * 2.5, 0.23 * look[L_AMB_G] * 2.5, 0.25 * look[L_AMB_B] * 2.5
    cx, cy, cz = trees[t, T_X], trees[t, T_Y], trees[t, T_Z]
    nxv, nyv, nzv = (x - cx) / trees[t, T_R], (y - cy) / trees[t, T_R], (z - cz) / trees[t, T_RZ]
    nn = math.sqrt(nxv * nxv + nyv * nyv + nzv * nzv) + 1e-9
    diff = max(0.0, (nxv * sun.x * sun.h + nyv * sun.y * sun.h + nzv * sun.up) / nn)
    # Clumps of leaves: a product of two noises over the crown, plus fine flicker.
    leaf = 0.45 + 1.1 * _noise(x * 1.8, z * 1.8, t) * _noise(y * 1.8, z * 1.8 + 17, t) \
        + 0.25 * _hash(math.floor(x * 9), math.floor(y * 9) + 31 * math.floor(z * 9), t)
    r = trees[t, T_CR] * leaf * (look[L_AMB_R] * 1.3 + look[L_SUN_R] * diff * 1.2)
    g = trees[t, T_CG] * leaf * (look[L_AMB_G] * 1.3 + look[L_SUN_G] * diff * 1.2)
    bl = trees[t, T_CB] * leaf * (look[L_AMB_B] * 1.3 + look[L_SUN_B] * diff * 1.2)
    return r, g, bl


@njit(cache=True)
def _furniture_colour(kind, vr, vg, vb, z, hv, dzn, look, sky):
    """Street furniture's colour z metres up its hv: a post's sign, a bin's lid, a bollard's band, a
    cabinet's plinth, a shelter's glass."""
    if kind == POST:
        return (vr, vg, vb) if z > hv - 0.75 else (0.32, 0.33, 0.35)
    if kind == SHELTER and 0.35 < z < hv - 0.3:
        _sky_gradient(abs(dzn) + 0.2, look, sky)
        return 0.1 + 0.35 * sky[0], 0.11 + 0.35 * sky[1], 0.12 + 0.35 * sky[2]
    if kind == BOLLARD and hv - 0.25 < z < hv - 0.12:
        return 0.85, 0.85, 0.8
    if z > hv - 0.12 or z < 0.1:
        return vr * 0.6, vg * 0.6, vb * 0.6
    return vr, vg, vb


@njit(cache=True)
def _shade_vehicle(vehicles, v, kind, f, u, z, dzn, sun, look, sky):
    """Vehicle v's roof (kind K_VTOP) or its side f (0..3: +a, -a, +b, -b) at u metres along it, z up."""
    vr, vg, vb = vehicles[v, V_R], vehicles[v, V_G], vehicles[v, V_B]
    hv = vehicles[v, V_H]
    vk = int(vehicles[v, V_KIND])
    if kind == K_VTOP:
        if vk == CAR:
            return 0.12, 0.14, 0.17
        return vr * 1.1, vg * 1.1, vb * 1.1
    hl = vehicles[v, V_HL] if f >= 2 else vehicles[v, V_HW]
    r, g, bl = vr, vg, vb
    if vk >= POST:
        r, g, bl = _furniture_colour(vk, vr, vg, vb, z, hv, dzn, look, sky)
    else:
        if vk == BUS:
            band = (1.4 < z < 2.1) or (2.7 < z < 3.6)
        elif vk == VAN:
            band = hv - 0.85 < z < hv - 0.25 and (f < 2 or u > hl - 2.0 or u < -hl + 2.0)
        else:
            band = hv - 0.55 < z < hv - 0.08 and abs(u) < hl - 0.35
        if band:
            _sky_gradient(abs(dzn) + 0.2, look, sky)
            r, g, bl = 0.05 + 0.3 * sky[0], 0.06 + 0.3 * sky[1], 0.07 + 0.3 * sky[2]
        elif z < 0.7 and f >= 2 and (abs(u - (hl - 0.9)) < 0.36 or abs(u + hl - 0.9) < 0.36):
            r, g, bl = 0.04, 0.04, 0.045
        elif z < 0.28:
            r, g, bl = 0.08, 0.08, 0.08
        elif f < 2 and z < 0.9 and abs(abs(u) - hl + 0.35) < 0.2:
            # Lamps: white at the front (+a face), red at the back.
            r, g, bl = (0.95, 0.92, 0.8) if f == 0 else (0.7, 0.05, 0.04)
    nxv = 0.0
    nyv = 0.0
    if f == 0:
        nxv, nyv = vehicles[v, V_AX], vehicles[v, V_AY]
    elif f == 1:
        nxv, nyv = -vehicles[v, V_AX], -vehicles[v, V_AY]
    elif f == 2:
        nxv, nyv = -vehicles[v, V_AY], vehicles[v, V_AX]
    else:
        nxv, nyv = vehicles[v, V_AY], -vehicles[v, V_AX]
    diff = max(0.0, nxv * sun.x + nyv * sun.y) * sun.h
    r *= (look[L_AMB_R] + look[L_SUN_R] * diff) * 1.2
    g *= (look[L_AMB_G] + look[L_SUN_G] * diff) * 1.2
    bl *= (look[L_AMB_B] + look[L_SUN_B] * diff) * 1.2
    return r, g, bl


@njit(cache=True)
def render_kernel(pose, look, vehicles, scene, frame):
    """Fill frame.img (H, W, 3, linear 0..1) and frame.depth (H, W, metres along the ray; inf = sky):
    the view from `pose` of `scene` in the light of `look` (L_* entries), with `vehicles` (V_* columns)."""
    img, depth, pix, ray = frame.img, frame.depth, frame.pix, frame.ray
    H, W = img.shape[0], img.shape[1]
    ox, oy, eye = pose.x, pose.y, pose.eye
    seed = np.int64(look[L_SEED])
    pa = 2 * math.tan(pose.fov * 0.5) / W  # radians per pixel at the centre
    amin, amax = _pixel_rays(pose, pix)
    da = (amax - amin) / (2 * W) + 1e-12
    rays = _cast_rays(pose, look, vehicles, scene, frame, amin, da)
    sa, se = look[L_SUN_AZ], look[L_SUN_EL]
    sun = Sun(math.sin(sa), math.cos(sa), math.sin(se), math.cos(se), math.tan(se))
    sunv = np.array([sun.x * sun.h, sun.y * sun.h, sun.up])
    sky = np.empty(3)
    walls, bld, trees, grid = scene.walls, scene.buildings, scene.trees, (scene.cell, scene.nx, scene.ny)
    wall_start, wall_items, cell_hmax, hmax = scene.wall_start, scene.wall_items, scene.cell_hmax, scene.hmax
    ground, road_soft, gres = scene.ground, scene.road_soft, scene.ground_res
    marks, mark_start, mark_items = scene.marks, scene.mark_start, scene.mark_items
    rdx, rdy, n_walls, n_trees, skyline = rays.dx, rays.dy, rays.n_walls, rays.n_trees, rays.skyline
    wall_s, wall_id, wall_front, tree_s, tree_id = rays.wall_s, rays.wall_id, rays.wall_front, rays.tree_s, \
        rays.tree_id
    veh_in, veh_out, veh_u, veh_face = rays.veh_in, rays.veh_out, rays.veh_u, rays.veh_face
    for i in range(H):
        # Shadow rays are the dearest part of shading: an odd column takes its left neighbour's answer
        # when both see the same surface (shadow edges may shift by one pixel sideways).
        prev_surface = -2
        prev_shadow = False
        for j in range(W):
            k = ray[i, j]
            t = pix[3, i, j]
            dx, dy = rdx[k], rdy[k]
            best = 1e30
            kind = K_SKY
            hit = -1
            hz = 0.0
            if t < 0:
                best = eye / -t
                kind = K_GROUND
            for q in range(n_walls[k]):
                s = wall_s[k, q]
                if s >= best:
                    break
                w = wall_id[k, q]
                b = int(walls[w, W_BLD])
                z = eye + t * s
                if z <= bld[b, B_HEIGHT] and z >= bld[b, B_MINH]:
                    best, hit, hz = s, w, z
                    kind = K_WALL if wall_front[k, q] == 1 else K_ROOF
                    break
            for q in range(n_trees[k]):
                if tree_s[k, q] >= best:
                    break
                tr_ = tree_id[k, q]
                cx, cy = trees[tr_, T_X] - ox, trees[tr_, T_Y] - oy
                s0 = cx * dx + cy * dy
                p2 = (cx * dy - cy * dx) ** 2
                r, rz_, cz = trees[tr_, T_R], trees[tr_, T_RZ], trees[tr_, T_Z]
                qa = 1 / (r * r) + t * t / (rz_ * rz_)
                qb = -2 * s0 / (r * r) + 2 * t * (eye - cz) / (rz_ * rz_)
                qc = (s0 * s0 + p2) / (r * r) + (eye - cz) ** 2 / (rz_ * rz_) - 1
                disc = qb * qb - 4 * qa * qc
                if disc >= 0:
                    s = (-qb - math.sqrt(disc)) / (2 * qa)
                    if 0.05 < s < best:
                        zc = eye + t * s
                        # Ragged outline: rays that only graze the crown may pass between leaves.
                        graze = disc / (4 * qa)
                        hx, hy = ox + dx * s, oy + dy * s
                        hole = graze < 0.2 and trees[tr_, T_LAMP] == 0.0 and \
                            _noise(hx * 3.0, zc * 3.0, tr_) * _noise(hy * 3.0, zc * 3.0 + 17, tr_) < 0.15
                        if not hole:
                            best, hit, hz, kind = s, tr_, zc, K_TREE
                rt = trees[tr_, T_TRUNK]
                if p2 < rt * rt:
                    s = s0 - math.sqrt(rt * rt - p2)
                    zt = eye + t * s
                    if 0.05 < s < best and 0 <= zt <= cz - rz_ * 0.5:
                        best, hit, hz, kind = s, tr_, zt, K_TRUNK
            for v in range(min(vehicles.shape[0], MAX_VEHICLES)):
                s = veh_in[k, v]
                if s >= best:
                    continue
                z = eye + t * s
                hv = vehicles[v, V_H]
                if 0.0 <= z <= hv:
                    best, hit, hz, kind = s, v, z, K_VEHICLE
                elif z > hv and t < 0:
                    st = (hv - eye) / t
                    if st <= veh_out[k, v] and st < best:
                        best, hit, hz, kind = st, v, hv, K_VTOP
            if kind == K_WALL or kind == K_ROOF or kind == K_GROUND:
                # The grid walk used the nearest of the sampled azimuths; redo the winning intersection
                # with this pixel's exact direction so depth and texture coordinates are exact.
                pdx, pdy = pix[1, i, j], pix[2, i, j]
                if kind != K_GROUND:
                    s, _ = _crossing(walls, hit, ox, oy, pdx, pdy)
                    if s > 0.05 and abs(s - best) < 0.05 * best + 0.5:
                        best = s
                        hz = eye + t * s
                dx, dy = pdx, pdy
            hl = pix[4, i, j]
            dist = best * hl
            # 3D unit view direction of this pixel.
            dzn = t / hl
            dxn, dyn = dx / hl, dy / hl
            fp = dist * pa
            if kind == K_SKY:
                _sky(dxn, dyn, dzn, look, sunv, sky)
                r, g, bl = sky[0], sky[1], sky[2]
                sil = skyline[k]
                if dzn < sil:
                    a = 0.55 + 0.15 * (dzn / sil)
                    r = r * a + (1 - a) * look[L_ZEN_R] * 0.5
                    g = g * a + (1 - a) * look[L_ZEN_G] * 0.5
                    bl = bl * a + (1 - a) * look[L_ZEN_B] * 0.55
                depth[i, j] = np.inf
                img[i, j, 0], img[i, j, 1], img[i, j, 2] = r, g, bl
                prev_surface = -2
                continue
            x, y = ox + dx * best, oy + dy * best
            surface = hit if kind == K_WALL else (-1 if kind == K_GROUND else -2)
            reuse = (j & 1) == 1 and surface == prev_surface and surface != -2
            if kind == K_ROOF:
                # A wall seen from behind: the ray passed over a low building and comes down on its roof.
                r, g, bl = 0.3 * look[L_AMB_R] * 2, 0.29 * look[L_AMB_G] * 2, 0.28 * look[L_AMB_B] * 2
            elif kind == K_WALL:
                ex = walls[hit, W_X1] - walls[hit, W_X0]
                ey = walls[hit, W_Y1] - walls[hit, W_Y0]
                along = ((x - walls[hit, W_X0]) * ex + (y - walls[hit, W_Y0]) * ey) / walls[hit, W_LEN]
                u = walls[hit, W_U0] + along
                # What glass reflects: the sky's gradient at the mirrored elevation (no sun, no clouds).
                _sky_gradient(abs(dzn) + 0.15, look, sky)
                r, g, bl, lit_by_sun = _shade_wall(bld, int(walls[hit, W_BLD]), u, hz, fp, look, sky)
                if lit_by_sun > 0:  # (lit windows glow by themselves)
                    nxw, nyw = walls[hit, W_NX], walls[hit, W_NY]
                    diff = max(0.0, nxw * sun.x + nyw * sun.y) * sun.h
                    if diff > 0:
                        if not reuse:
                            prev_shadow = _in_shadow(x + nxw * 0.05, y + nyw * 0.05, hz, sun, walls, bld,
                                                     wall_start, wall_items, cell_hmax, grid, hmax)
                        if prev_shadow:
                            diff = 0.0
                    ao = 0.72 + 0.28 * min(1.0, hz / 1.8)  # darker at the foot of the wall
                    r *= (look[L_AMB_R] + look[L_SUN_R] * diff) * ao
                    g *= (look[L_AMB_G] + look[L_SUN_G] * diff) * ao
                    bl *= (look[L_AMB_B] + look[L_SUN_B] * diff) * ao
            elif kind == K_GROUND:
                m, stencil = _ground_material(ground, road_soft, gres, x, y)
                if stencil and _on_mark(x, y, max(0.08, fp * 0.5), marks, mark_start, mark_items, grid):
                    m = MARKING
                if m == WATER:
                    surface = -2
                    _sky(dxn, dyn, -dzn, look, sunv, sky, 0.3)
                    wv = 0.85 + 0.2 * _noise(x * 1.5, y * 0.4, seed)
                    r, g, bl = sky[0] * 0.55 * wv + 0.03, sky[1] * 0.6 * wv + 0.06, sky[2] * 0.6 * wv + 0.07
                else:
                    r, g, bl = _shade_ground(m, x, y, fp)
                    sun_k = sun.up
                    if not reuse:
                        prev_shadow = best < 120.0 and _in_shadow(x, y, 0.0, sun, walls, bld, wall_start,
                                                                  wall_items, cell_hmax, grid, hmax)
                    if prev_shadow:
                        sun_k = 0.0
                    r *= look[L_AMB_R] + look[L_SUN_R] * sun_k
                    g *= look[L_AMB_G] + look[L_SUN_G] * sun_k
                    bl *= look[L_AMB_B] + look[L_SUN_B] * sun_k
            elif kind == K_TREE:
                r, g, bl = _shade_tree(trees, hit, x, y, hz, sun, look)
            elif kind == K_TRUNK:
                r, g, bl = (0.14, 0.15, 0.16) if trees[hit, T_LAMP] > 0 else (0.2, 0.16, 0.12)
            else:
                r, g, bl = _shade_vehicle(vehicles, hit, kind, veh_face[k, hit], veh_u[k, hit], hz, dzn, sun,
                                          look, sky)
            # Haze: fade towards the horizon colour with distance.
            xh = dist / look[L_HAZE_D]
            hz_a = 1.0 - 1.0 / (1.0 + xh + 0.5 * xh * xh)  # 1 - exp(-x), to second order: cheaper
            r = r * (1 - hz_a) + look[L_HOR_R] * hz_a
            g = g * (1 - hz_a) + look[L_HOR_G] * hz_a
            bl = bl * (1 - hz_a) + look[L_HOR_B] * hz_a
            depth[i, j] = dist
            img[i, j, 0], img[i, j, 1], img[i, j, 2] = r, g, bl
            prev_surface = surface


GAMMA_LUT = np.round(np.linspace(0, 1, 4096) ** (1 / 1.15) * 255).astype(np.uint8)  # a mild tone curve


@njit(cache=True)
def finish_kernel(img, look, lut, out):
    """Exposure, white balance, vignetting, sensor noise; to 8 bits through the tone curve."""
    H, W = img.shape[0], img.shape[1]
    seed = np.int64(look[L_SEED])
    sigma = look[L_NOISE]
    top = lut.shape[0] - 1
    g0 = look[L_EXPOSURE] * look[L_WB_R] * top
    g1 = look[L_EXPOSURE] * top
    g2 = look[L_EXPOSURE] * look[L_WB_B] * top
    for i in range(H):
        yy = (i + 0.5) / H * 2 - 1
        for j in range(W):
            xx = (j + 0.5) / W * 2 - 1
            v = 1.0 - look[L_VIGNETTE] * (xx * xx + yy * yy) * 0.5
            n = (_hash(i, j, seed) + _hash(j, i, seed + 1) - 1.0) * sigma * 2.45 * top
            out[i, j, 0] = lut[min(max(int(img[i, j, 0] * g0 * v + n + 0.5), 0), top)]
            out[i, j, 1] = lut[min(max(int(img[i, j, 1] * g1 * v + n + 0.5), 0), top)]
            out[i, j, 2] = lut[min(max(int(img[i, j, 2] * g2 * v + n + 0.5), 0), top)]


class Renderer:
    """Holds one World's arrays and renders views of it."""

    def __init__(self, world: World):
        self.world = world
        self.scene = scene_of(world)
        self._frames: dict = {}

    def _frame(self, H: int, W: int) -> Frame:
        if (H, W) not in self._frames:
            self._frames[(H, W)] = Frame(
                img=np.empty((H, W, 3)), depth=np.empty((H, W), np.float32), pix=np.empty((5, H, W)),
                ray=np.empty((H, W), np.int64), hs=np.empty((2 * W, MAX_WALL_HITS)),
                hw=np.empty((2 * W, MAX_WALL_HITS), np.int64), hf=np.empty((2 * W, MAX_WALL_HITS), np.int64))
        return self._frames[(H, W)]

    def render(self, cam: Camera, look: Look, with_depth: bool = False):
        """uint8 (H, W, 3) image; with_depth also returns float32 depth in metres (inf for sky)."""
        frame = self._frame(cam.height, cam.width)
        pose = Pose(float(cam.x), float(cam.y), float(cam.eye), math.radians(cam.heading),
                    math.radians(cam.pitch), math.radians(cam.roll), math.radians(cam.fov))
        veh = np.ascontiguousarray(look.vehicles, dtype=np.float64).reshape(-1, 11)
        render_kernel(pose, look.params, veh, self.scene, frame)
        img = frame.img
        if look.blur > 0:  # the lens and motion, before the sensor's noise
            from scipy.ndimage import gaussian_filter

            sigma = look.blur * cam.width / 224.0
            img = gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")
        out = np.empty((cam.height, cam.width, 3), np.uint8)
        finish_kernel(img, look.params, GAMMA_LUT, out)
        return (out, frame.depth.copy()) if with_depth else out
