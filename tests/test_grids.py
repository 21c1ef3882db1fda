import numpy as np
import pytest
import shapely
from scipy.spatial.distance import pdist
from shapely.geometry import Polygon

from retrieval import GeolocError
from retrieval.config import load_config
from retrieval.data.grids import Grid, build_grid, square_grid, voronoi_grid

# An L-shaped piece of the City of London (lon, lat): non-convex, so clipping matters.
L_SHAPE = Polygon([(-0.114, 51.511), (-0.100, 51.511), (-0.100, 51.516), (-0.107, 51.516),
                   (-0.107, 51.523), (-0.114, 51.523)])


def random_inside(grid: Grid, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = grid.boundary.bounds
    x, y = rng.uniform(x0, x1, 4 * n), rng.uniform(y0, y1, 4 * n)
    keep = shapely.contains_xy(grid.boundary, x, y)
    return x[keep][:n], y[keep][:n]


def check_partition(grid: Grid):
    """Cells lie inside the boundary, do not overlap and cover it; every point gets the cell that holds it."""
    areas = np.array([c.area for c in grid.cells])
    assert (areas > 0).all()
    assert all(c.difference(grid.boundary).area < 1e-6 for c in grid.cells)
    union = shapely.union_all(grid.cells)
    assert union.area == pytest.approx(grid.boundary.area, rel=1e-9)
    assert areas.sum() == pytest.approx(union.area, rel=1e-9)  # no overlaps
    x, y = random_inside(grid, 2000)
    cells = grid.assign_xy(x, y)
    assert cells.shape == x.shape and cells.min() >= 0
    assert all(grid.cells[c].covers(shapely.Point(px, py)) for c, px, py in zip(cells, x, y))


def test_square_grid_partitions_the_boundary():
    grid = square_grid(L_SHAPE, 120.0)
    check_partition(grid)
    # A square not clipped by the boundary is 120 m on a side.
    assert max(c.area for c in grid.cells) == pytest.approx(120.0**2, rel=1e-9)


def test_square_border_points_get_exactly_one_cell():
    grid = square_grid(L_SHAPE, 120.0)
    ox, oy = grid.origin
    ids = {tuple(ij): c for c, ij in enumerate(grid.lattice)}
    # On the edge between columns 2 and 3, on the corner of four squares, and on a row edge:
    # half-open cells give the point to the square east/north of the line.
    x = np.array([ox + 3 * 120.0, ox + 3 * 120.0, ox + 2.5 * 120.0])
    y = np.array([oy + 1.5 * 120.0, oy + 2 * 120.0, oy + 1 * 120.0])
    cells = grid.assign_xy(x, y)
    assert list(cells) == [ids[(3, 1)], ids[(3, 2)], ids[(2, 1)]]
    # The point is genuinely on the border: two polygons cover it.
    assert sum(c.covers(shapely.Point(x[0], y[0])) for c in grid.cells) == 2


def test_voronoi_centres_respect_spacing_and_border():
    grid = voronoi_grid(L_SHAPE, 150.0, border_m=40.0, seed=3)
    check_partition(grid)
    assert len(grid) >= 10
    assert pdist(grid.centres).min() >= 150.0
    edge = grid.boundary.boundary
    assert min(edge.distance(shapely.Point(c)) for c in grid.centres) >= 40.0
    # Each cell holds its own centre, and assignment is the nearest centre (brute force).
    assert list(grid.assign_xy(grid.centres[:, 0], grid.centres[:, 1])) == list(range(len(grid)))
    x, y = random_inside(grid, 1000, seed=1)
    brute = np.argmin(np.hypot(x[:, None] - grid.centres[:, 0], y[:, None] - grid.centres[:, 1]), axis=1)
    assert (grid.assign_xy(x, y) == brute).all()


def test_voronoi_border_point_goes_to_lower_cell():
    grid = voronoi_grid(L_SHAPE, 150.0, border_m=40.0, seed=3)
    # The midpoint of two neighbouring centres is equidistant from both.
    for a in range(len(grid)):
        d = np.hypot(*(grid.centres - grid.centres[a]).T)
        d[a] = np.inf
        b = int(np.argmin(d))
        mid = (grid.centres[a] + grid.centres[b]) / 2
        if np.min(np.hypot(*(grid.centres - mid).T)) >= d[b] / 2 - 1e-6:  # no third centre closer
            break
    cell = grid.assign_xy([mid[0]], [mid[1]])
    assert list(cell) == [min(a, b)]
    assert grid.cells[a].distance(shapely.Point(mid)) < 1e-6 and grid.cells[b].distance(shapely.Point(mid)) < 1e-6


@pytest.mark.parametrize("kind", ["square", "voronoi"])
def test_points_outside_go_to_nearest_cell_and_geojson_round_trips(tmp_path, kind):
    grid = build_grid(kind, L_SHAPE, 150.0, 30.0, seed=0)
    x0, y0, x1, y1 = grid.boundary.bounds
    # Beyond the boundary: in the notch of the L and outside its bounding box.
    x = np.array([x1 - 50.0, x0 - 80.0, x1 + 300.0])
    y = np.array([y1 - 50.0, (y0 + y1) / 2, y0 - 10.0])
    assert not shapely.intersects_xy(grid.boundary, x, y).any()
    pts = shapely.points(x, y)
    brute = [int(np.argmin([c.distance(p) for c in grid.cells])) for p in pts]
    assert list(grid.assign_xy(x, y)) == brute

    counts = list(range(len(grid)))
    path = grid.save(tmp_path / "grid.geojson", {"n_train": counts})
    loaded, props = Grid.load(path)
    assert loaded.kind == kind and len(loaded) == len(grid)
    assert [p["n_train"] for p in props] == counts
    lat = np.random.default_rng(0).uniform(51.5105, 51.5235, 500)
    lon = np.random.default_rng(1).uniform(-0.1145, -0.0995, 500)
    assert (loaded.assign(lat, lon) == grid.assign(lat, lon)).all()
    assert all(abs(a.area - b.area) < 1.0 for a, b in zip(loaded.cells, grid.cells))


def test_grid_errors():
    with pytest.raises(GeolocError, match="border_spacing_m"):
        voronoi_grid(L_SHAPE, 100.0, border_m=2000.0)
    # the grid kind and cell size are checked once, when the config loads (the grid module owns the kinds)
    with pytest.raises(GeolocError, match="cells.grid='hexagon': choose one of square, voronoi"):
        load_config(None, ["cells.grid=hexagon"])
    with pytest.raises(GeolocError, match=r"cells.cell_size_m=0.0: must be > 0"):
        load_config(None, ["cells.cell_size_m=0"])
