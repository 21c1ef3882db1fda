import json

import numpy as np
import pytest
from shapely.geometry import Point

from retrieval import GeolocError
from retrieval.geo import LocalProjection, bounding_polygon, haversine_m


@pytest.mark.parametrize("a,b,km", [
    ((51.5074, -0.1278), (48.8566, 2.3522), 343.56),     # London - Paris
    ((40.7128, -74.0060), (34.0522, -118.2437), 3935.7),  # New York - Los Angeles
    ((-33.8688, 151.2093), (-37.8136, 144.9631), 713.8),  # Sydney - Melbourne
])
def test_haversine_city_pairs(a, b, km):
    assert haversine_m(*a, *b) / 1000 == pytest.approx(km, rel=2e-3)


def test_haversine_hand_computed_and_vectorised():
    # One degree along a meridian is R * pi / 180.
    assert haversine_m(0, 0, 1, 0) == pytest.approx(6_371_008.8 * np.pi / 180, rel=1e-9)
    lat = np.array([0.0, 10.0, 51.5])
    d = haversine_m(lat, 0.0, lat, 0.0)
    assert d.shape == (3,) and np.all(d == 0)
    # On the equator one degree of longitude equals one degree of latitude.
    assert haversine_m(0, 0, 0, 1) == pytest.approx(haversine_m(0, 0, 1, 0))


def test_projection_round_trip_and_metric_scale():
    proj = LocalProjection(51.515, -0.10)
    assert proj.crs.to_epsg() == 32630  # UTM 30N covers London
    lat = np.array([51.5107, 51.5233, 51.515])
    lon = np.array([-0.1141, -0.0932, -0.10])
    x, y = proj.to_xy(lat, lon)
    lat2, lon2 = proj.to_latlon(x, y)
    np.testing.assert_allclose(lat2, lat, atol=1e-9)
    np.testing.assert_allclose(lon2, lon, atol=1e-9)
    planar = np.hypot(x[0] - x[1], y[0] - y[1])
    # UTM is on the ellipsoid and haversine on a sphere: they agree to the sphere's ~0.5%.
    assert planar == pytest.approx(haversine_m(lat[0], lon[0], lat[1], lon[1]), rel=5e-3)


def test_southern_hemisphere_zone():
    assert LocalProjection(-33.87, 151.21).crs.to_epsg() == 32756


def test_bounding_polygon_sources(tmp_path):
    gj = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}}]}
    (tmp_path / "b.geojson").write_text(json.dumps(gj))
    poly = bounding_polygon(tmp_path / "b.geojson")
    assert poly.area == pytest.approx(1.0)

    (tmp_path / "b.csv").write_text("lat,lng\n0,0\n0,2\n2,2\n2,0\n")
    assert bounding_polygon(tmp_path / "b.csv").area == pytest.approx(4.0)

    lat = np.array([0, 0, 1, 1, 0.5])
    lon = np.array([0, 1, 1, 0, 0.5])
    hull = bounding_polygon(lat=lat, lon=lon)
    assert hull.area == pytest.approx(1.0) and hull.contains(Point(0.5, 0.5))
    # An L-shaped cloud: the concave hull is tighter than the convex one.
    gx, gy = np.meshgrid(np.linspace(0, 2, 21), np.linspace(0, 2, 21))
    keep = (gx <= 1) | (gy <= 1)
    concave = bounding_polygon(lat=gy[keep], lon=gx[keep], concave_ratio=0.1)
    assert bounding_polygon(lat=gy[keep], lon=gx[keep]).area == pytest.approx(3.5)
    assert concave.area == pytest.approx(3.0, abs=0.05)


def test_bounding_polygon_errors(tmp_path):
    with pytest.raises(GeolocError, match="not found"):
        bounding_polygon(tmp_path / "nope.geojson")
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(GeolocError, match="columns lat and lng"):
        bounding_polygon(tmp_path / "bad.csv")
    (tmp_path / "nan.csv").write_text("lat,lng\n0,0\nabc,1\n1,1\n")
    with pytest.raises(GeolocError, match="row 3"):
        bounding_polygon(tmp_path / "nan.csv")
