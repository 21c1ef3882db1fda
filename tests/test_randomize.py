"""Domain randomisation knobs: each changes what it says, nothing else, and a render without knobs is the
render it was before them."""
import dataclasses
import json

import numpy as np
import pytest

from retrieval import GeolocError
from retrieval.synth.cameras import render_dataset, sample_views
from retrieval.synth.city import write_demo_city
from retrieval.synth.osm import load_city
from retrieval.synth.randomize import KNOBS, parse_knobs, randomize_camera, randomize_look
from retrieval.synth.render import L_FACADE, L_NOISE, L_WINDOWS, Camera, Renderer, sample_look
from retrieval.synth.scene import world_from_city
from retrieval.synth.sheet import contact_sheet
from tests.test_synth import _box_world


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    path = write_demo_city(tmp_path_factory.mktemp("city") / "city.osm", seed=2, size_m=450)
    return path, world_from_city(load_city(path))


def test_parse_knobs():
    assert parse_knobs("") == parse_knobs("none") == ()
    assert parse_knobs("all") == KNOBS
    assert parse_knobs("camera, sky") == ("sky", "camera")
    with pytest.raises(GeolocError, match="unknown knob 'fog'"):
        parse_knobs("sky,fog")


def test_knobs_keep_positions_and_change_only_their_own_draws(city):
    _, world = city
    plain = sample_views(world, "train", 30, None, seed=0, size=32, headings=2)
    for knob in KNOBS:
        views = sample_views(world, "train", 30, None, seed=0, size=32, headings=2, knobs=(knob,))
        # The cameras stand where they stood and face the same way: knobs draw from a stream of their own.
        assert [(v.camera.x, v.camera.y, v.camera.heading) for v in views] == \
            [(v.camera.x, v.camera.y, v.camera.heading) for v in plain]
        cams_same = all(a.camera == b.camera for a, b in zip(views, plain))
        looks_same = all(np.array_equal(a.look.params, b.look.params) and a.look.blur == b.look.blur
                         and a.look.jpeg_quality == b.look.jpeg_quality for a, b in zip(views, plain))
        cars = sum(len(v.look.vehicles) for v in views), sum(len(v.look.vehicles) for v in plain)
        assert cams_same == (knob != "camera"), knob
        assert looks_same == (knob not in ("sky", "facades", "windows", "optics")), knob
        assert (cars[0] > cars[1]) == (knob in ("occluders", "furniture")), (knob, cars)


def test_furniture_stands_on_the_kerbs_clear_of_buildings(city):
    from shapely.geometry import Point

    from retrieval.synth.render import BIN, BOLLARD, CABINET, POST, SHELTER, V_KIND, V_X, V_Y

    _, world = city
    plain = sample_views(world, "train", 30, None, seed=0, size=32)
    views = sample_views(world, "train", 30, None, seed=0, size=32, knobs=("furniture",))
    added = np.concatenate([v.look.vehicles[len(p.look.vehicles):] for v, p in zip(views, plain)])
    assert len(added) >= 30 and set(added[:, V_KIND].astype(int)) == {POST, BIN, BOLLARD, CABINET, SHELTER}
    assert not any(len(world.footprints.query(Point(x, y), predicate="intersects")) for x, y in added[:, [V_X, V_Y]])
    cams = np.array([[v.camera.x, v.camera.y] for v in views])
    assert np.hypot(*(added[:, None, [V_X, V_Y]] - cams[None]).transpose(2, 0, 1)).min() > 1.0


def test_camera_and_look_knobs_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    cams = [randomize_camera(Camera(x=0, y=0, heading=0), rng, ("camera",)) for _ in range(300)]
    eye, pitch, roll, fov = (np.array([getattr(c, f) for c in cams]) for f in ("eye", "pitch", "roll", "fov"))
    assert 0.55 * 2.5 <= eye.min() and eye.max() <= 1.3 * 2.5 and eye.std() > 0.3
    assert np.abs(pitch).max() <= 12 and pitch.std() > 3 and np.abs(roll).max() <= 8 and roll.std() > 2
    assert 0.65 * 90 <= fov.min() and fov.max() <= 1.15 * 90
    looks = [randomize_look(sample_look(rng), rng, ("optics", "facades")) for _ in range(300)]
    assert min(x.jpeg_quality for x in looks) < 40 and max(x.blur for x in looks) > 1.0
    assert all(0.15 <= x.params[L_FACADE] <= 0.45 for x in looks)
    assert sample_look(rng).params[L_FACADE] == 0.0 and sample_look(rng).blur == 0.0


def _sharpness(img):
    g = img.astype(float).mean(axis=2)
    return np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()


def test_blur_softens_and_facades_and_windows_change_only_walls():
    world = _box_world(15.0, 6.0, 9.0)
    cam = Camera(x=-world.origin[0], y=-world.origin[1], heading=10.0, width=48, height=48)
    rend = Renderer(world)
    look = sample_look(np.random.default_rng(1))
    look.params[2:5] = look.params[5:8] = 0.7  # an even light, so walls show their own colour
    look.params[L_NOISE] = 0.0  # sensor noise would hide the blur's effect on edges
    sharp, depth = rend.render(cam, look, with_depth=True)
    soft = rend.render(cam, dataclasses.replace(look, blur=6.0))  # 1.3 px at 48 px wide
    assert _sharpness(soft) < 0.7 * _sharpness(sharp)
    p = look.params.copy()
    p[L_FACADE] = 0.45
    recoloured = rend.render(cam, dataclasses.replace(look, params=p))
    sky = np.isinf(depth)
    assert sky.sum() > 100
    np.testing.assert_array_equal(recoloured[sky], sharp[sky])
    wall = np.isfinite(depth) & (depth < 20) & (np.arange(48)[:, None] < 24)
    assert np.abs(recoloured[wall].astype(int) - sharp[wall].astype(int)).mean() > 3
    p = look.params.copy()
    p[L_WINDOWS] = 1.0
    windows = rend.render(cam, dataclasses.replace(look, params=p))
    np.testing.assert_array_equal(windows[sky], sharp[sky])
    assert (np.abs(windows[wall].astype(int) - sharp[wall].astype(int)).max(axis=1) > 8).mean() > 0.05


def test_a_render_records_its_knobs_and_refuses_others_in_the_same_folder(city, tmp_path):
    path, _ = city
    out = tmp_path / "r"
    render_dataset(path, out, n_train=6, n_test=2, size=24, workers=1, knobs=("sky", "optics"), write_graph=False)
    assert json.loads((out / "dataset.json").read_text())["settings"]["randomize"] == ["sky", "optics"]
    with pytest.raises(GeolocError, match="other settings"):
        render_dataset(path, out, n_train=6, n_test=2, size=24, workers=1, write_graph=False)
    plain = tmp_path / "p"
    render_dataset(path, plain, n_train=6, n_test=2, size=24, workers=1, write_graph=False)
    assert "randomize" not in json.loads((plain / "dataset.json").read_text())["settings"]
    a = (out / "images" / "train_00000.jpg").read_bytes()
    assert a != (plain / "images" / "train_00000.jpg").read_bytes()


def test_sheet_of_a_manifest_beside_a_render(city, tmp_path):
    """Real photos come as a manifest; the sheet crops each to the square the models see."""
    from PIL import Image

    path, _ = city
    render_dataset(path, tmp_path / "r", n_train=4, n_test=0, size=24, workers=1, write_graph=False)
    wide = tmp_path / "wide.jpg"
    Image.new("RGB", (120, 60), (200, 30, 30)).save(wide)
    (tmp_path / "photos.csv").write_text(f"path,lat,lon\n{wide},51.5,-0.1\n", encoding="utf-8")
    sheet = Image.open(contact_sheet(tmp_path / "photos.csv", tmp_path / "photos.png", n=1, cols=1, thumb=40))
    assert sheet.size == (40, 40 + 28)
    assert sheet.getpixel((2, 2)) == sheet.getpixel((37, 37)) != (255, 255, 255)  # filled, not letterboxed
    assert Image.open(contact_sheet(tmp_path / "r", tmp_path / "r.png", n=4, cols=2, thumb=40)).size == (80, 2 * 68)
