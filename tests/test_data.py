import math

import numpy as np
import pytest
from PIL import Image
from pyproj import Transformer

from retrieval import GeolocError
from retrieval.data.manifests import load_rgb, read_manifest, write_manifest
from retrieval.data.photo_import import import_photos, parse_vpr_name, read_exif_gps
from retrieval.data.splits import load_splits, spatial_split
from retrieval.geo import LocalProjection, haversine_m
from tests.conftest import write_image


# --- importers -------------------------------------------------------------------------------------

def test_import_seed_names(tmp_path):
    write_image(tmp_path / "src" / "51.5138_-0.0984.jpg")
    write_image(tmp_path / "src" / "sub" / "-33.8688_151.2093.jpg")
    m = import_photos(tmp_path / "src", "seed")
    got = sorted(zip(m.lat.tolist(), m.lon.tolist()))
    assert got == [(-33.8688, 151.2093), (51.5138, -0.0984)]
    assert m.heading is None


def test_import_seed_bad_name(tmp_path):
    write_image(tmp_path / "src" / "51.5_-0.09.jpg")
    write_image(tmp_path / "src" / "holiday.jpg")
    with pytest.raises(GeolocError, match=r"holiday\.jpg: file name is not <lat>_<lon>\.jpg"):
        import_photos(tmp_path / "src", "seed")
    with pytest.warns(UserWarning, match="holiday.jpg"):
        m = import_photos(tmp_path / "src", "seed", skip_bad=True)
    assert len(m) == 1 and m.skipped == 1


def test_import_vpr_names(tmp_path):
    # Pittsburgh-style name with lat/lon and a heading field.
    name = "@0584342.29@4477271.08@17@T@40.44237@-79.99866@pano123@0@90.00@@@@@@.jpg"
    write_image(tmp_path / "src" / name)
    m = import_photos(tmp_path / "src", "vpr")
    assert (m.lat[0], m.lon[0], m.heading[0]) == (40.44237, -79.99866, 90.0)


def test_vpr_name_without_latlon_uses_utm():
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True)
    e, n = to_utm.transform(-0.0984, 51.5138)
    lat, lon, heading = parse_vpr_name(f"@{e:.2f}@{n:.2f}@30@U@@@@.jpg")
    assert haversine_m(lat, lon, 51.5138, -0.0984) < 0.05
    assert math.isnan(heading)
    # Southern hemisphere bands (C..M) use the southern UTM origin.
    to_utm_s = Transformer.from_crs("EPSG:4326", "EPSG:32756", always_xy=True)
    e, n = to_utm_s.transform(151.2093, -33.8688)
    lat, lon, _ = parse_vpr_name(f"@{e:.2f}@{n:.2f}@56@H@@@.jpg")
    assert haversine_m(lat, lon, -33.8688, 151.2093) < 0.05
    with pytest.raises(ValueError):
        parse_vpr_name("51.5_-0.09.jpg")


def test_import_exif_written_by_us(tmp_path):
    ex = Image.Exif()
    gps = ex.get_ifd(0x8825)
    gps.update({1: "S", 2: (33.0, 51.0, 54.0), 3: "W", 4: (151.0, 12.0, 36.0), 17: 270.5})
    write_image(tmp_path / "a.jpg", exif=ex)
    lat, lon, heading = read_exif_gps(tmp_path / "a.jpg")
    assert (lat, lon, heading) == pytest.approx((-33.865, -151.21, 270.5))
    write_image(tmp_path / "nogps.jpg")
    with pytest.raises(GeolocError, match="nogps.jpg: no GPS position in EXIF"):
        import_photos(tmp_path / "nogps.jpg", "exif")


def test_capture_dates_come_from_exif_and_survive_a_manifest_round_trip(tmp_path):
    for name, when in (("a.jpg", "2023:06:01 09:30:00"), ("b.jpg", None)):
        ex = Image.Exif()
        ex.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 6.0, 0.0)})
        if when:
            ex.get_ifd(0x8769)[0x9003] = when
        write_image(tmp_path / "src" / name, exif=ex)
    m = import_photos(tmp_path / "src", "exif")
    assert [str(t) for t in m.date] == ["2023-06-01T09:30:00", "NaT"]
    write_manifest(tmp_path / "m.csv", m)
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "path,lat,lon,date" and lines[1].endswith(",2023-06-01T09:30:00") and lines[2].endswith(",")
    back = read_manifest(tmp_path / "m.csv")
    assert back.date[0] == np.datetime64("2023-06-01T09:30:00") and np.isnat(back.date[1])


def test_parse_date_accepts_iso_and_exif_and_names_what_it_wants():
    from retrieval.data.manifests import parse_date

    want = np.datetime64("2024-05-01T14:03:07")
    assert parse_date("2024-05-01T14:03:07") == parse_date("2024:05:01 14:03:07") == want
    assert parse_date("2024-05-01T14:03:07+02:00") == parse_date("2024-05-01T14:03:07Z") == want
    assert parse_date("2024-05-01") == np.datetime64("2024-05-01T00:00:00")
    with pytest.raises(ValueError, match=r"'May 1st' is not a date \(write 2024-05-01"):
        parse_date("May 1st")


def test_bad_date_names_row_and_field(tmp_path):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text("path,lat,lon,date\na.jpg,51.5,-0.1,2024-13-01\n")
    with pytest.raises(GeolocError, match=r"m\.csv: row 2: date '2024-13-01' is not a date"):
        read_manifest(tmp_path / "m.csv")


def test_import_exif_real_berlin_photos(shared_data, tmp_path):
    m = import_photos(shared_data / "photos" / "berlin", "exif")
    assert len(m) == 3
    assert np.all(haversine_m(m.lat, m.lon, 52.5189, 13.4003) < 50)
    out = write_manifest(tmp_path / "out" / "berlin.csv", m)
    back = read_manifest(out, check_images=True)
    assert [p.name for p in back.paths] == ["01.jpg", "02.jpg", "03.jpg"]
    np.testing.assert_allclose(back.lat, m.lat, atol=1e-7)
    # Real JPEGs decode upright and as RGB through the dataset.
    im = load_rgb(back.paths[0])
    assert im.mode == "RGB" and min(im.size) > 100


def test_unknown_format(tmp_path):
    with pytest.raises(GeolocError, match="unknown import format"):
        import_photos(tmp_path, "gpx")


# --- manifests and bad input -----------------------------------------------------------------------

def test_manifest_round_trip(photo_dir, tmp_path):
    m = read_manifest(photo_dir / "photos.csv")
    assert len(m) == 12 and m.heading is not None and m.split is None
    out = write_manifest(tmp_path / "elsewhere" / "copy.csv", m)
    m2 = read_manifest(out)
    assert m2.paths == m.paths
    np.testing.assert_allclose(m2.lat, m.lat, atol=1e-7)
    np.testing.assert_allclose(m2.heading, m.heading)


@pytest.mark.parametrize("row,message", [
    ("images/missing.jpg,51.5,-0.1", r"row 3: image file not found: images/missing\.jpg"),
    ("images/01.jpg,fifty,-0.1", r"row 3: lat 'fifty' is not a number"),
    ("images/01.jpg,51.5,-190", r"row 3: lon -190 is out of range \[-180, 180\]"),
    ("images/00.jpg,51.5,-0.1", r"row 3: duplicate path images/00\.jpg \(first on row 2\)"),
    ("images/01.jpg,nan,-0.1", r"row 3: lat nan is out of range"),
    (",51.5,-0.1", r"row 3: empty path"),
])
def test_bad_rows_name_file_row_and_problem(photo_dir, row, message):
    path = photo_dir / "bad.csv"
    path.write_text(f"path,lat,lon\nimages/00.jpg,51.5,-0.1\n{row}\n")
    with pytest.raises(GeolocError, match=message) as exc:
        read_manifest(path)
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)


def test_missing_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,latitude,lon\n")
    with pytest.raises(GeolocError, match="missing column"):
        read_manifest(tmp_path / "m.csv")


def test_corrupt_and_truncated_images(photo_dir):
    (photo_dir / "images" / "junk.jpg").write_bytes(b"not a jpeg at all")
    full = (photo_dir / "images" / "00.jpg").read_bytes()
    big = write_image(photo_dir / "images" / "big.jpg", size=(256, 256), color=(1, 2, 3))
    (photo_dir / "images" / "cut.jpg").write_bytes(big.read_bytes()[: len(big.read_bytes()) // 2])
    assert full  # the good image stays readable
    path = photo_dir / "m.csv"
    path.write_text("path,lat,lon\nimages/00.jpg,51.5,-0.1\nimages/junk.jpg,51.5,-0.1\n"
                    "images/cut.jpg,51.5,-0.1\n")
    with pytest.raises(GeolocError, match=r"row 3: images/junk\.jpg: corrupt or truncated image"):
        read_manifest(path, check_images=True)
    with pytest.warns(UserWarning):
        m = read_manifest(path, check_images=True, skip_bad=True)
    assert len(m) == 1 and m.skipped == 2
    # Without the up-front check, decoding names the photo (as the image cache does) when it fails.
    m = read_manifest(path)
    with pytest.raises(GeolocError, match=r"row 3: .*junk\.jpg: cannot read image"):
        load_rgb(m.paths[1], where=m.describe(1))


def test_skip_bad_counts_rows(photo_dir):
    path = photo_dir / "m.csv"
    path.write_text("path,lat,lon\nimages/00.jpg,51.5,-0.1\nimages/zz.jpg,51.5,-0.1\nimages/01.jpg,x,1\n")
    with pytest.warns(UserWarning, match="skipped 2 bad row"):
        m = read_manifest(path, skip_bad=True)
    assert len(m) == 1 and m.skipped == 2


# --- images ----------------------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    ex = Image.Exif()
    ex[0x0112] = 6  # stored sideways, displayed rotated 90 degrees clockwise
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    im.save(tmp_path / "rot.jpg", exif=ex, quality=95)
    up = load_rgb(tmp_path / "rot.jpg")
    assert up.size == (20, 40)
    top, bottom = np.asarray(up)[5, 10], np.asarray(up)[35, 10]
    assert top[0] > 200 and bottom[0] < 50  # stored-left is displayed on top


def test_a_large_jpeg_decodes_smaller_for_a_small_cache(tmp_path):
    """min_side: the JPEG's DCT scaling, both sides kept at least min_side, upright, the same picture."""
    from retrieval.learning.transforms import to_cached

    ex = Image.Exif()
    ex[0x0112] = 6
    y, x = np.mgrid[0:800, 0:1600]
    a = np.stack([x * 255 // 1600, y * 255 // 800, (x // 100 + y // 100) % 2 * 255], -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "big.jpg", exif=ex, quality=95)
    small = load_rgb(tmp_path / "big.jpg", min_side=90)
    assert small.size == (100, 200)  # 1/8 of 800 x 1600 (upright): the shorter side still >= 90
    full = load_rgb(tmp_path / "big.jpg")
    assert full.size == (800, 1600)
    diff = (to_cached(small, 90).float() - to_cached(full, 90).float()).abs()
    assert to_cached(small, 90).shape == to_cached(full, 90).shape and diff.mean() < 3
    cmyk = write_image(tmp_path / "c.jpg", color=(200, 100, 50), mode="CMYK", size=(400, 400))
    assert load_rgb(cmyk, min_side=90).size == (100, 100) and load_rgb(cmyk, min_side=90).mode == "RGB"


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("P", ".png")])
def test_any_mode_becomes_rgb(tmp_path, mode, suffix):
    p = write_image(tmp_path / f"x{suffix}", color=(200, 100, 50), mode=mode)
    im = load_rgb(p)
    assert im.mode == "RGB" and im.size == (32, 32)


# --- spatial split ---------------------------------------------------------------------------------

def _grid_photos(n_side=40, step_m=10.0):
    proj = LocalProjection(51.515, -0.10)
    x0, y0 = proj.to_xy(51.515, -0.10)
    gx, gy = np.meshgrid(np.arange(n_side) * step_m, np.arange(n_side) * step_m)
    return proj.to_latlon(x0 + gx.ravel(), y0 + gy.ravel())


def test_place_split_holds_out_only_photos_with_a_training_photo_near():
    from retrieval.data.splits import place_split, split_photos

    lat, lon = _grid_photos(n_side=20, step_m=20.0)  # a 20 m grid: neighbours at 20 m, diagonals at 28 m
    split = place_split(lat, lon, val_fraction=0.1, test_fraction=0.2, radius_m=25.0, seed=1)
    train = split == "train"
    assert (split == "test").sum() == 80 and (split == "val").sum() == 40  # 0.2 and 0.1 of 400
    held = np.flatnonzero(~train)
    d = haversine_m(lat[held][:, None], lon[held][:, None], lat[train][None], lon[train][None])
    assert (d.min(axis=1) <= 25.0).all()  # every held-out photo has a training photo within 25 m
    assert np.array_equal(split, split_photos("place", lat, lon, 0.1, 0.2, radius_m=25.0, seed=1))
    # photos 100 m apart have no neighbour to stand in for them: nothing can be held out
    far_lat, far_lon = _grid_photos(n_side=5, step_m=100.0)
    assert (place_split(far_lat, far_lon, 0.2, 0.2, 25.0) == "train").all()


def test_place_split_by_date_holds_out_later_visits_of_earlier_places():
    from retrieval.data.splits import place_split

    # two visits to the same 20 m grid: 2022 (photos 0..99) and 2024 (100..199, 2 m off), plus a few undated
    lat, lon = _grid_photos(n_side=10, step_m=20.0)
    lat2, lon2 = lat + 2e-5, lon
    lat, lon = np.r_[lat, lat2, lat[:5] + 4e-5], np.r_[lon, lon2, lon[:5]]
    date = np.array(["2022-03-01"] * 100 + ["2024-07-15"] * 100 + ["NaT"] * 5, dtype="datetime64[s]")
    split = place_split(lat, lon, val_fraction=0.1, test_fraction=0.2, radius_m=25.0, seed=0, date=date)
    held = np.flatnonzero(split != "train")
    assert len(held) == round(0.2 * 205) + round(0.1 * 205)
    assert (held >= 100).all() and (held < 200).all()  # only the later, dated visit is held out
    # each has a 2022 training photo within 25 m
    old = np.flatnonzero((split == "train") & (date < np.datetime64("2023-01-01")))
    d = haversine_m(lat[held][:, None], lon[held][:, None], lat[old][None], lon[old][None])
    assert (d.min(axis=1) <= 25.0).all()
    # one day only: no photo has an earlier partner, nothing is held out
    one_day = np.full(len(lat), np.datetime64("2024-07-15"), dtype="datetime64[s]")
    assert (place_split(lat, lon, 0.1, 0.2, 25.0, 0, one_day) == "train").all()


def test_random_split_draws_the_requested_counts():
    from retrieval.data.splits import random_split, split_photos

    split = random_split(50, 0.1, 0.2, seed=0)
    assert (split == "val").sum() == 5 and (split == "test").sum() == 10 and (split == "train").sum() == 35
    assert not np.array_equal(split, random_split(50, 0.1, 0.2, seed=1))
    with pytest.raises(GeolocError, match="split mode 'blocks'"):
        split_photos("blocks", np.zeros(3), np.zeros(3))


def test_split_has_no_leakage_and_is_deterministic():
    lat, lon = _grid_photos()
    split = spatial_split(lat, lon, val_fraction=0.15, test_fraction=0.15, gap_m=25, block_m=100, seed=3)
    assert set(split) <= {"train", "val", "test", ""}
    train = split == "train"
    for held in ("val", "test"):
        idx = np.flatnonzero(split == held)
        assert len(idx) > 0
        d = haversine_m(lat[idx][:, None], lon[idx][:, None], lat[train][None], lon[train][None])
        assert d.min() >= 25.0
    assert np.array_equal(split, spatial_split(lat, lon, 0.15, 0.15, 25, 100, seed=3))
    assert not np.array_equal(split, spatial_split(lat, lon, 0.15, 0.15, 25, 100, seed=4))
    # Roughly the requested shares before the gap is cut out.
    assert 0.6 < train.mean() < 0.8


def test_load_splits_from_folder_and_manifest(photo_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("other")
    m = read_manifest(photo_dir / "photos.csv")
    write_manifest(photo_dir / "train.csv", m.subset(range(10)))
    write_manifest(photo_dir / "test.csv", m.subset([10, 11]))
    s = load_splits(photo_dir, val_fraction=0.0)
    assert len(s["train"]) == 10 and len(s["test"]) == 2 and "val" not in s
    m.split = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    write_manifest(tmp_path / "all.csv", m)
    s = load_splits(tmp_path / "all.csv")
    assert {k: len(v) for k, v in s.items()} == {"train": 8, "val": 2, "test": 2}
    with pytest.raises(GeolocError, match="no train.csv"):
        load_splits(tmp_path)
