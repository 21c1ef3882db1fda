"""Issue #11's bad inputs, one case per line of the issue, each made here in tmp_path.

Each case asserts the exact behaviour: exit status 2 and one `error:` line naming the file, row or
field; or a correct result; and, for run directories, that the files that must not change did not.
(The config-validation cases of the issue live with the config: tests/test_config.py.)
"""
import bz2
import json
import os
import resource
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from retrieval import GeolocError
from tests.conftest import REPO, untrained_run, write_image

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def geoloc(*args, env=None, max_file_bytes=None, timeout=300):
    """The CLI's console entry point (retrieval.cli.main: errors become one line and exit status 2),
    here in this process, or in a fresh one where the case needs it: env (PYTHONHASHSEED) or
    max_file_bytes, a file-size limit (ulimit -f) standing in for a full disk."""
    if env is None and max_file_bytes is None:
        return _in_process(args)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "retrieval.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**ENV, **(env or {})},
                          preexec_fn=limit if max_file_bytes else None)


def _in_process(args):
    import contextlib
    import io
    import warnings

    from retrieval import cli

    argv, show, out, err = sys.argv, warnings.showwarning, io.StringIO(), io.StringIO()
    sys.argv = ["geoloc", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")
            cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, warnings.showwarning = argv, show
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def one_error(out, *names) -> str:
    """Exit status 2, no traceback, exactly one `error:` line, naming every one of names."""
    assert out.returncode == 2, (out.returncode, out.stdout[-1000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def london_photos(folder: Path, n: int = 12, size=(32, 32)) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        write_image(folder / f"{i:02d}.jpg", size=size, color=(20 * i, 100, 200 - 10 * i))
        rows.append((f"{i:02d}.jpg", 51.5138 + rng.uniform(-0.003, 0.003), -0.0984 + rng.uniform(-0.004, 0.004)))
    return rows


def write_csv(path: Path, header: str, rows, encoding="utf-8", bom=False) -> Path:
    text = header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return path


def bomb_png(path: Path) -> Path:
    """15000 x 15000 px (225 Mpx, past PIL's decompression-bomb limit) in a 27 kB file."""
    Image.new("1", (15000, 15000)).save(path)
    return path


# --- data check: tracebacks, silent wrong results and valid input rejected -------------------------

def _bomb(tmp):
    rows = london_photos(tmp, 3)
    bomb_png(tmp / "big.png")
    return write_csv(tmp / "m.csv", "path,lat,lon", [rows[0], ("big.png", 51.514, -0.098), *rows[1:]])


def _latin1(tmp):
    rows = london_photos(tmp, 3)
    return write_csv(tmp / "m.csv", "path,lat,lon,note", [(*r, "Straße") for r in rows], encoding="latin-1")


def _heading(value):
    def make(tmp):
        rows = london_photos(tmp, 3)
        return write_csv(tmp / "m.csv", "path,lat,lon,heading",
                         [(*rows[0], 90), (*rows[1], value), (*rows[2], 180)])
    return make


def _swapped(tmp):
    rows = london_photos(tmp, 12)
    rows[5] = (rows[5][0], rows[5][2], rows[5][1])  # lon, lat
    return write_csv(tmp / "m.csv", "path,lat,lon", rows)


def _bom(tmp):
    return write_csv(tmp / "m.csv", "path,lat,lon", london_photos(tmp, 3), bom=True)


@pytest.mark.parametrize("make, skip_bad, status, expected", [
    # "A 15000 x 15000 PNG: DecompressionBombError in data check (also with --skip-bad)"
    (_bomb, False, 2, ["m.csv", "row 3", "big.png", "image too large to decode"]),
    (_bomb, True, 0, ["3 good photos, 1 bad rows skipped"]),
    # "A Latin-1 manifest CSV ...: UnicodeDecodeError"
    (_latin1, False, 2, ["m.csv", "not UTF-8", "line 2"]),
    # "heading of inf becomes NaN without a word"
    (_heading("inf"), False, 2, ["m.csv", "row 3", "heading 'inf' is not a finite number"]),
    (_heading("nan"), False, 2, ["m.csv", "row 3", "heading 'nan' is not a finite number"]),
    # "One manifest row with lat/lon swapped passes data check"
    (_swapped, False, 2, ["m.csv", "row 7", "from the rest of the set", "lat and lon swapped?"]),
    (_swapped, True, 0, ["11 good photos, 1 bad rows skipped"]),
    # "A manifest saved with a UTF-8 BOM: missing column(s) path"
    (_bom, False, 0, ["3 good photos"]),
], ids=["bomb", "bomb-skip-bad", "latin1", "heading-inf", "heading-nan", "swapped-row", "swapped-row-skip-bad",
        "utf8-bom"])
def test_data_check(tmp_path, make, skip_bad, status, expected):
    manifest = make(tmp_path)
    out = geoloc("data", "check", manifest, *(["--skip-bad"] if skip_bad else []))
    if status == 2:
        one_error(out, *expected)
    else:
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Traceback" not in out.stderr
        for e in expected:
            assert e in out.stdout, out.stdout


def test_bom_manifest_reads_every_column(tmp_path):
    from retrieval.data.manifests import read_manifest

    m = read_manifest(write_csv(tmp_path / "m.csv", "path,lat,lon,heading",
                                [(*r, 10 * i) for i, r in enumerate(london_photos(tmp_path, 3))], bom=True))
    assert len(m) == 3 and m.heading.tolist() == [0.0, 10.0, 20.0]


# --- importers -------------------------------------------------------------------------------------

def _gps(lat, lon):
    def dms(v):
        v = abs(v)
        d, m = int(v), int((v - int(v)) * 60)
        return (IFDRational(d), IFDRational(m), IFDRational(round((v - d - m / 60) * 3600, 2)))
    exif = Image.Exif()
    exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    return exif


@pytest.mark.parametrize("fmt, name, exif, skip_bad, expected", [
    # "A VPR file name with UTM zone 0 or 99: pyproj CRSError, even with --skip-bad"
    ("vpr", "@500000.00@5700000.00@0@U@@@p@t@90@.jpg", None, False, ["@0@U@", "UTM zone 0 is out of range"]),
    ("vpr", "@500000.00@5700000.00@99@U@@@p@t@90@.jpg", None, False, ["@99@U@", "UTM zone 99 is out of range"]),
    ("vpr", "@500000.00@5700000.00@99@U@@@p@t@90@.jpg", None, True, []),
    # "EXIF GPS of exactly 0/0 is imported as a real position"
    ("exif", "nofix.jpg", (0.0, 0.0), False, ["nofix.jpg", "exactly 0, 0: no position"]),
    ("exif", "nofix.jpg", (0.0, 0.0), True, []),
], ids=["vpr-zone-0", "vpr-zone-99", "vpr-zone-99-skip-bad", "exif-0-0", "exif-0-0-skip-bad"])
def test_import(tmp_path, fmt, name, exif, skip_bad, expected):
    src = tmp_path / "src"
    write_image(src / name, **({"exif": _gps(*exif)} if exif else {}))
    # one good photo beside the bad one
    if fmt == "vpr":
        write_image(src / "@500000.00@5700000.00@33@U@@@p@t@90@.jpg")
    else:
        write_image(src / "good.jpg", exif=_gps(51.5138, -0.0984))
    out = geoloc("data", "import", src, "--format", fmt, "--out", tmp_path / "m.csv",
                 *(["--skip-bad"] if skip_bad else []))
    if not skip_bad:
        one_error(out, *expected)
        assert not (tmp_path / "m.csv").exists()
        return
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 photos, skipped 1" in out.stdout and name in out.stderr
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 2 and name not in rows[1]


def test_exif_position_is_read(tmp_path):
    from retrieval.data.photo_import import read_exif_gps

    lat, lon, _ = read_exif_gps(write_image(tmp_path / "a.jpg", exif=_gps(51.5138, -0.0984)))
    assert lat == pytest.approx(51.5138, abs=1e-5) and lon == pytest.approx(-0.0984, abs=1e-5)


# --- images ----------------------------------------------------------------------------------------

def test_16_bit_grayscale_png_keeps_its_brightness(tmp_path):
    # "A 16-bit grayscale PNG is decoded as an all-white image (mean 255 instead of 97.7)"
    from retrieval.data.manifests import load_rgb

    rng = np.random.default_rng(0)
    a = np.clip(rng.normal(97.7 * 257, 40 * 257, (48, 64)), 0, 65535).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    rgb = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert rgb.mean() == pytest.approx(a.mean() / 257, abs=0.6)
    assert (rgb[..., 0] == rgb[..., 1]).all() and rgb.std() > 20


def test_decompression_bomb_is_one_error_naming_the_file(tmp_path):
    # "... DecompressionBombError in ... training and query" (decoding goes through load_rgb)
    from retrieval.data.manifests import load_rgb

    with pytest.raises(GeolocError, match=r"big\.png: cannot read image: image too large to decode"):
        load_rgb(bomb_png(tmp_path / "big.png"))


def test_skip_bad_in_training_skips_corrupt_images(tmp_path):
    # "data.skip_bad=true in training skips 5 bad rows and then stops on a corrupt image"
    from retrieval.config import load_config
    from retrieval.data.splits import load_data

    rows = london_photos(tmp_path, 12)
    (tmp_path / "03.jpg").write_bytes((tmp_path / "03.jpg").read_bytes()[:200])  # truncated
    (tmp_path / "05.jpg").write_bytes(b"not an image")
    rows.append(("missing.jpg", 51.514, -0.098))
    write_csv(tmp_path / "train.csv", "path,lat,lon", rows)
    cfg = load_config(None, [f"data.train={tmp_path}", "data.skip_bad=true", "data.val_fraction=0",
                             "data.test_fraction=0"])
    with pytest.warns(UserWarning) as caught:
        splits = load_data(cfg)
    assert len(splits["train"]) == 10
    text = " | ".join(str(w.message) for w in caught)
    assert "row 5: 03.jpg: corrupt or truncated image" in text and "row 7: 05.jpg" in text
    assert "row 14: image file not found: missing.jpg" in text


# --- query -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def query_run(tmp_path_factory):
    """An embedding run with an index over 12 photos: an untrained ResNet-18 is enough to query."""
    root = tmp_path_factory.mktemp("query")
    write_csv(root / "db" / "train.csv", "path,lat,lon", london_photos(root / "db", 12, size=(40, 40)))
    run = untrained_run(root / "run", root / "db", k=3, vote="auto")
    from retrieval.answering.locator import Locator

    Locator.load(run, choose=True)  # as `geoloc index build` does: the vote chosen where the data is
    return run


@pytest.mark.parametrize("size, error", [
    # "query answers a 1 x 1 px or 3000 x 1 px image with confidence 0.20 and no warning"
    ((1, 1), "image is 1 x 1 px, too small to locate"),
    ((3000, 1), "image is 3000 x 1 px, too small to locate"),
    ((600, 60), None),
], ids=["1x1", "3000x1", "600x60"])
def test_query_refuses_tiny_and_warns_on_slivers(query_run, tmp_path, size, error):
    from retrieval.answering.locator import Locator

    image = write_image(tmp_path / "q.png", size=size)
    (a,) = Locator.load(query_run).locate([image])
    if error:
        assert set(a.to_dict()) == {"path", "error"} and error in a.error and "q.png" in a.error
        return
    assert "q.png: image is 600 x 60 px (aspect 10.0:1)" in a.warning and np.isfinite([a.lat, a.lon]).all()


def test_query_folder_with_one_truncated_image_answers_the_others(query_run, tmp_path):
    # "a folder of 3 good images and 1 truncated one gives an error and no answer for the 3"
    folder = tmp_path / "photos"
    for i in range(3):
        write_image(folder / f"good{i}.jpg", size=(40, 40), color=(40 * i, 90, 60))
    write_image(folder / "cut.jpg", size=(40, 40))
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:300])
    bomb_png(folder / "big.png")
    out = geoloc("query", "--run", query_run, folder)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    answered = [line for line in out.stdout.splitlines() if not line.startswith(" ") and "confidence" in line]
    assert sorted(Path(line.split(":")[0]).name for line in answered) == ["good0.jpg", "good1.jpg", "good2.jpg"]
    assert "3 image(s), median" in out.stdout and "2 could not be located" in out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert "big.png: cannot read image: image too large to decode" in errors[0]
    assert "cut.jpg: cannot read image: corrupt or truncated image" in errors[1]


def test_query_k_0_is_an_error(query_run, tmp_path):
    # "--k 0 quietly means 10"
    one_error(geoloc("query", "--run", query_run, write_image(tmp_path / "q.jpg"), "--k", "0"),
              "--k 0", "at least 1 neighbour")


# --- street graphs: clipped extracts, photos off the streets ---------------------------------------

def clip_osm(src: Path, dst: Path, west: float, south: float, east: float, north: float) -> Path:
    """Cut an extract by a bounding box as a simple extract tool does: the nodes inside, every way and
    relation with a member inside, whole (so ways reference nodes the file does not hold)."""
    root = ET.parse(bz2.open(src)).getroot()
    out = ET.Element("osm", root.attrib)
    nodes, ways = set(), set()
    for el in root:
        if el.tag == "node" and south <= float(el.get("lat")) <= north and west <= float(el.get("lon")) <= east:
            nodes.add(el.get("id"))
            out.append(el)
        elif el.tag == "way" and any(nd.get("ref") in nodes for nd in el.findall("nd")):
            ways.add(el.get("id"))
            out.append(el)
        elif el.tag == "relation" and any(m.get("ref") in (nodes if m.get("type") == "node" else ways)
                                          for m in el.findall("member")):
            out.append(el)
    ET.ElementTree(out).write(dst, encoding="utf-8", xml_declaration=True)
    return dst


@pytest.fixture(scope="module")
def clipped_london(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    src = SHARED_DATA / "osm" / "london_city.osm.bz2"
    if not src.is_file():
        pytest.skip(f"{src} is absent (only the developers' machines have ../shared)")
    return clip_osm(src, tmp_path_factory.mktemp("osm") / "clipped.osm", -0.1010, 51.5125, -0.0960, 51.5160)


def test_clipped_extract_renders(clipped_london):
    # "A real OpenStreetMap extract clipped at its bounding box: rendering fails with EmptyPartError"
    from retrieval.synth.cameras import sample_views
    from retrieval.synth.osm import load_city
    from retrieval.synth.scene import world_from_city

    with pytest.warns(UserWarning, match=r"clipped\.osm: clipped extract: dropped \d+ reference\(s\) to nodes "
                                         r"not in the file"):
        city = load_city(clipped_london)
    assert len(city.buildings) > 20 and len(city.streets) > 50
    views = sample_views(world_from_city(city), "train", 5, None, 0, size=16)
    assert len(views) == 5


def test_clipped_extract_gives_a_street_graph(clipped_london):
    # "... and --streets with 'Some edges missing nodes, possibly due to input data clipping issue'"
    from retrieval.data.streets import load_graph

    with pytest.warns(UserWarning, match=r"clipped\.osm: clipped extract: dropped \d+ reference\(s\)"):
        g = load_graph(clipped_london)
    assert len(g.nodes) > 50 and np.isfinite(g.length_m).all() and (g.length_m >= 0).all()


def test_an_extract_with_a_one_node_way_renders(tmp_path):
    # "new_york_lower_east_side.osm.bz2: OSMnx could not read the extract (EmptyPartError: Can't create
    # MultiLineString with empty component)": a clip kept one node of ways that relations still name
    from retrieval.synth.osm import load_city

    xy = {1: (0, 0), 2: (200, 0), 3: (200, 100), 4: (0, 100), 20: (50, 20), 21: (80, 20), 22: (80, 40),
          23: (50, 40), 24: (120, 20), 25: (150, 20), 26: (150, 40), 27: (120, 40)}
    nodes = "".join(f'<node id="{n}" lat="{44.0 + y / 111_320:.7f}" lon="{-30.0 + x / 80_000:.7f}"/>\n'
                    for n, (x, y) in xy.items())
    ways = {10: ((1, 2), "highway=residential"), 11: ((2, 3), "highway=residential"),
            12: ((1, 4), "highway=residential"), 30: ((20, 21, 22, 23, 20), "building=yes"),
            31: ((24, 25, 26, 27, 24), ""), 32: ((24,), "")}
    body = "".join(f'<way id="{w}">' + "".join(f'<nd ref="{r}"/>' for r in refs)
                   + "".join('<tag k="{}" v="{}"/>'.format(*kv.split("=")) for kv in tags.split()) + "</way>\n"
                   for w, (refs, tags) in ways.items())
    relation = ('<relation id="40"><member type="way" ref="31" role="outer"/><member type="way" ref="32" '
                'role="outer"/><tag k="type" v="multipolygon"/><tag k="building" v="yes"/></relation>\n')
    osm = tmp_path / "one_node.osm"
    osm.write_text("<?xml version='1.0' encoding='UTF-8'?>\n<osm version=\"0.6\">\n" + nodes + body + relation
                   + "</osm>\n")
    with pytest.warns(UserWarning, match=r"one_node\.osm: clipped extract: dropped 0 reference\(s\) to nodes "
                                         r"not in the file, 1 way\(s\) left with fewer than 2 nodes"):
        city = load_city(osm)
    assert len(city.buildings) == 2  # the way's building, and the relation's from its one whole way


def test_photos_all_off_the_streets_are_named_not_blamed_on_pos_radius(tmp_path):
    # "When every row is swapped, training blames pos_radius_m"
    from retrieval.data.streets import load_graph, photo_distances, photos_along_streets
    from retrieval.synth.city import write_demo_city

    osm = write_demo_city(tmp_path / "city.osm", seed=0, size_m=400)
    lat, lon = photos_along_streets(load_graph(osm), 20, np.random.default_rng(0))
    with pytest.warns(UserWarning), pytest.raises(GeolocError, match=r"none of the 20 photos is within 30 m of a "
                                                                    r"street.*lat and lon swapped"):
        photo_distances(lon, lat, 100.0, "geodesic", osm)


def test_photo_off_the_streets_is_named_by_its_row(tmp_path):
    # "training then warns about 'photos #60' (an index, not the file or row)"
    from retrieval.data.manifests import read_manifest
    from retrieval.data.streets import load_graph, photo_distances, photos_along_streets
    from retrieval.synth.city import write_demo_city

    osm = write_demo_city(tmp_path / "city.osm", seed=0, size_m=400)
    lat, lon = photos_along_streets(load_graph(osm), 8, np.random.default_rng(0), jitter_m=0.0)
    rows = [(f"{i}.jpg", la, lo) for i, (la, lo) in enumerate(zip(lat, lon))]
    rows[3] = ("3.jpg", rows[3][2], rows[3][1])
    m = read_manifest(write_csv(tmp_path / "m.csv", "path,lat,lon", rows), check_files=False)
    with pytest.warns(UserWarning, match=r"1 of 8 photos .* #3 is .*m\.csv: row 5: .*3\.jpg, at lat -30"):
        photo_distances(m.lat, m.lon, 100.0, "geodesic", osm, describe=m.describe)


# --- data split ------------------------------------------------------------------------------------

def test_split_without_training_photos_is_an_error():
    # "data split ... exits 0 with 'train 0, val 3, test 29'" (the helper data split calls)
    from retrieval.data.splits import split_counts

    assert split_counts(np.array(["train", "val", "", "test"]), "m.csv") == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(GeolocError, match=r"m\.csv: the split leaves no training photos \(train 0, val 3, test 29"):
        split_counts(np.array(["val"] * 3 + ["test"] * 29), "m.csv")


# --- disk full -------------------------------------------------------------------------------------

def test_data_split_on_a_full_disk_keeps_the_old_file(tmp_path):
    # "Disk full: ... data split over an existing file ... end in tracebacks"
    rows = [(f"{i:02d}.jpg", 51.51 + 0.0004 * (i % 6), -0.10 + 0.0006 * (i // 6)) for i in range(30)]
    for r in rows:
        write_image(tmp_path / r[0])
    write_csv(tmp_path / "m.csv", "path,lat,lon", rows)
    old = write_csv(tmp_path / "s.csv", "path,lat,lon,split", [(*rows[0], "train")]).read_bytes()
    out = geoloc("data", "split", tmp_path / "m.csv", "--out", tmp_path / "s.csv", "--block-m", "60",
                 max_file_bytes=200)
    one_error(out, "s.csv", "cannot write: File too large")
    assert (tmp_path / "s.csv").read_bytes() == old
    assert sorted(p.name for p in tmp_path.glob(".*")) == []  # no temporary file left


def test_full_disk_while_writing_is_one_error_and_leaves_nothing(tmp_path):
    import errno

    from retrieval.files import atomic_write

    (tmp_path / "a.txt").write_text("old")

    def writer(p):
        p.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))

    with pytest.raises(GeolocError, match=r"a\.txt: cannot write: No space left on device"):
        atomic_write(tmp_path / "a.txt", writer)
    assert (tmp_path / "a.txt").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.txt"]


FULL_DISK_SCRIPT = """
import json, sys
import numpy as np
import faiss, torch
from retrieval import GeolocError
from retrieval.files import atomic_write, create_npy
from retrieval.learning.checkpoints import save_checkpoint
out, seen = sys.argv[1], {}
index = faiss.IndexFlatIP(64)
index.add(np.ones((2000, 64), dtype=np.float32))
for name, write in [
    ("best.pt", lambda: save_checkpoint(out + "/best.pt", {"w": torch.zeros(100000)})),
    ("index.faiss", lambda: atomic_write(out + "/index.faiss", lambda p: faiss.write_index(index, str(p)))),
    ("embeddings.npy", lambda: create_npy(out + "/embeddings.npy", (2000, 64))),
]:
    try:
        write()
        seen[name] = "written"
    except GeolocError as exc:
        seen[name] = str(exc)
print(json.dumps(seen))
"""


def test_checkpoint_index_and_embeddings_on_a_full_disk(tmp_path):
    # "training (RuntimeError ... inline_container.cc), ... index build writing index.faiss ... tracebacks;
    # index build writing embeddings.npy dies of SIGBUS (exit 135) with no message at all"
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    out = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO, env=ENV, preexec_fn=limit, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    for name, msg in seen.items():
        assert msg.startswith(f"{tmp_path / name}: cannot write: ") and "\n" not in msg, (name, msg)
    assert os.listdir(tmp_path) == []  # nothing half-written, no temporary file


def test_embeddings_file_is_allocated_not_sparse(tmp_path):
    from retrieval.files import create_npy

    path = create_npy(tmp_path / "e.npy", (1000, 64))
    rows = np.load(path, mmap_mode="r")
    assert rows.shape == (1000, 64) and not rows.any()
    assert os.stat(path).st_blocks * 512 >= 1000 * 64 * 4  # every block on disk: no SIGBUS when writing later


# --- run safety ------------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path):
    """An embedding run directory as training leaves it (the checkpoint itself is never opened here)."""
    from retrieval.config import load_config
    from retrieval.run import prepare_run_dir

    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", "path,lat,lon", london_photos(data, 4))
    other = tmp_path / "other"
    other.mkdir()
    write_csv(other / "train.csv", "path,lat,lon", london_photos(other, 4))
    cfg = load_config(None, ["model.embed_dim=64", f"data.train={data}", "train.epochs=2"],
                      base={"name": "embedding"})
    run = tmp_path / "run"
    prepare_run_dir(run, cfg)
    (run / "last.pt").write_bytes(b"a checkpoint")
    (run / "best.pt").write_bytes(b"a checkpoint")
    (run / "run.json").write_text(json.dumps({"kind": "embedding"}))
    return run


@pytest.mark.parametrize("args, expected", [
    # "--resume --set model.embed_dim=256: a state-dict size-mismatch traceback" / "rewrites config.yaml"
    (["embedding", "--set", "model.embed_dim=256"], ["model.embed_dim 64 -> 256"]),
    # "--resume --data OTHER silently continues on another data set and replaces data.train"
    (["embedding", "--data", "{other}"], ["data.train", "{other}"]),
    (["embedding", "--set", "embedding.pos_radius_m=10", "--set", "embedding.neg_radius_m=200", "--set",
      "augment.enabled=false", "--set", "train.epochs=5"],
     ["augment.enabled True -> False", "embedding.neg_radius_m 100.0 -> 200.0", "embedding.pos_radius_m 25.0 -> 10.0"]),
    (["regression"], ["trained by `geoloc train embedding`, cannot resume it as `geoloc train regression`"]),
], ids=["embed-dim", "other-data", "loss-and-mining", "other-kind"])
def test_refused_resume_lists_the_differences_and_changes_no_file(run_dir, args, expected):
    # "A refused --resume still rewrites config.yaml and command.txt"
    other = str(run_dir.parent / "other")
    before = snapshot(run_dir)
    time.sleep(0.01)
    out = geoloc("train", args[0], "--resume", "--out", run_dir, *[a.format(other=other) for a in args[1:]])
    line = one_error(out, run_dir, *[e.format(other=other) for e in expected])
    assert "train.epochs 2 -> 5" not in line  # an allowed change is not listed
    assert snapshot(run_dir) == before


def test_resume_may_change_the_budget(run_dir):
    from retrieval.config import load_config
    from retrieval.run import check_resume, record_resume

    same_data = f"data.train={run_dir.parent / 'data' / '.'}"  # the same folder, spelt otherwise
    cfg = load_config(run_dir / "config.yaml", ["train.epochs=5", "train.max_minutes=3", same_data])
    changes = check_resume(run_dir, "embedding", cfg)
    assert changes == {"train.epochs": (2, 5), "train.max_minutes": (0.0, 3.0)}
    first = (run_dir / "command.txt").read_text()
    record_resume(run_dir, cfg, changes)
    assert load_config(run_dir / "config.yaml").train.epochs == 5
    assert (run_dir / "command.txt").read_text().startswith(first)  # the command that started the run stays


def test_resume_of_nothing_changes_no_file(run_dir):
    (run_dir / "last.pt").unlink()
    before = snapshot(run_dir)
    one_error(geoloc("train", "embedding", "--resume", "--out", run_dir, "--set", "train.epochs=3"),
              run_dir, "nothing to resume")
    assert snapshot(run_dir) == before


KILLED_WRITER = """
import sys, time
from retrieval.files import atomic_write
def write(p):
    p.write_bytes(b"half a checkpoint")
    print("writing", flush=True)
    time.sleep(60)
atomic_write(sys.argv[1], write)
"""


def test_temporary_file_of_a_killed_write_is_removed_at_the_next_start(run_dir):
    # "kill -9 while the first best.pt is written leaves an orphan .best.pt.*.tmp forever"
    from typer.testing import CliRunner

    from retrieval.cli import app

    (run_dir / "best.pt").unlink()
    (run_dir / "last.pt").unlink()
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run_dir / "best.pt")], stdout=subprocess.PIPE,
                         text=True, cwd=REPO, env=ENV)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    (orphan,) = run_dir.glob(".best.pt.*.tmp")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    fresh = run_dir / ".last.pt.abcd1234.tmp"  # as if another process were writing it right now
    fresh.write_bytes(b"")
    foreign = run_dir / ".notes.txt.tmp"
    foreign.write_bytes(b"")
    # the next start (here it goes on to fail for want of photos: the clean-up comes first)
    result = CliRunner().invoke(app, ["train", "embedding", "--out", str(run_dir), "--data", str(run_dir / "none")])
    assert isinstance(result.exception, GeolocError)
    assert not orphan.exists() and fresh.exists() and foreign.exists()


# --- rendering -------------------------------------------------------------------------------------

def test_render_is_the_same_whatever_the_hash_seed(tmp_path):
    # "The same render command gives a different data set from run to run"
    from retrieval.synth.city import write_demo_city

    osm = write_demo_city(tmp_path / "city.osm", seed=0, size_m=500)
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"render{hash_seed}"
        r = geoloc("synth", "render", "--osm", osm, "--out", out, "--train", 12, "--test", 4, "--size", 16,
                   "--workers", 1, env={"PYTHONHASHSEED": hash_seed})
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out)
    a, b = outs
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "dataset.json")
    assert {"train.csv", "test.csv", "streets.graphml"} <= {str(f) for f in files}
    assert len([f for f in files if f.suffix == ".jpg"]) == 16
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "dataset.json")
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    cams = [json.loads((d / "dataset.json").read_text())["cameras"] for d in outs]
    assert cams[0] == cams[1]


# --- a new user's first stumble --------------------------------------------------------------------

def test_demo_query_hint_works_as_printed(tmp_path):
    # "After make demo, the demo prints `geoloc query --run ...`, and geoloc is not on the PATH"
    import shlex

    from retrieval.reports.benchmark import demo_query_hint

    (tmp_path / "methods" / "embedding_geodesic").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "test.csv", "path,lat,lon", [("images/test_00000.jpg", 44.0, -30.0)])
    hint = demo_query_hint(tmp_path)
    assert hint.startswith("locate a photo:  ")
    cmd = shlex.split(hint.split(":  ", 1)[1])
    assert cmd[1:4] == ["query", "--run", str(tmp_path / "methods" / "embedding_geodesic")]
    out = subprocess.run([cmd[0], "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0 and "query" in out.stdout
    readme = (REPO / "README.md").read_text()
    top = readme.split("## The three methods")[0]
    assert ".venv/bin/geoloc" in top and "source .venv/bin/activate" in top


# --- run safety, round three (issue 30) --------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from retrieval.run import lock_run_dir
lock_run_dir(sys.argv[1], "train embedding")
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding FOLDER's run lock, as a running training does."""
    p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                         env=ENV)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_command_into_a_busy_run_folder_is_refused(tmp_path, photo_dir):
    # "Two `geoloc train embedding --out runs/same` started 3 s apart both exit 0 with no warning"
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        before = snapshot(run)
        out = subprocess.run([sys.executable, "-m", "retrieval.cli", "train", "embedding", "--data",
                              str(photo_dir / "photos.csv"), "--out", str(run), "--positives", "euclidean"],
                             cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
        one_error(out, run, f"pid {holder.pid}", "train embedding", "wait for it to end")
        assert snapshot(run) == before  # nothing of the running one's was touched
        (run / "config.yaml").write_text("name: x\n")
        one_error(geoloc("index", "build", "--run", run), run, f"pid {holder.pid}")
        bench = tmp_path / "bench.yaml"
        bench.write_text("name: b\n")
        one_error(geoloc("benchmark", "--config", bench, "--out", run), run, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9): its lock file stays, but no process holds it any more
    assert (run / ".lock").is_file()
    again = hold_lock(run)
    again.kill()
    again.wait()


@pytest.mark.parametrize("args", [
    ["train", "embedding", "--positives", "euclidean", "--out", "{file}"],
    ["synth", "render", "--train", "4", "--test", "2", "--size", "32", "--out", "{file}"],
], ids=["train", "synth-render"])
def test_out_that_is_an_existing_file(tmp_path, photo_dir, args):
    file = tmp_path / "taken.txt"
    file.write_text("mine")
    args = [a.format(file=file) for a in args]
    if args[0] == "train":
        args += ["--data", str(photo_dir / "photos.csv")]
    one_error(geoloc(*args), file, "exists and is not a folder")
    assert file.read_text() == "mine"


def test_data_split_and_import_into_an_existing_folder(tmp_path, photo_dir):
    folder = tmp_path / "out"
    folder.mkdir()
    one_error(geoloc("data", "split", photo_dir / "photos.csv", "--out", folder), folder, "is a folder")
    seed = tmp_path / "seed"
    write_image(seed / "51.5100_-0.1000.jpg")
    one_error(geoloc("data", "import", seed, "--format", "seed", "--out", folder), folder, "is a folder")
    assert list(folder.iterdir()) == []


def test_read_only_destination_is_one_line(tmp_path, photo_dir, monkeypatch):
    # root ignores permission bits, so a read-only file system is what the kernel says for it
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir") or (args[0] if args else None))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    one_error(geoloc("data", "split", photo_dir / "photos.csv", "--out", tmp_path / "ro" / "s.csv"),
              tmp_path / "ro" / "s.csv", "read-only file system")
    monkeypatch.undo()
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: read_only(str(self)))
    one_error(geoloc("train", "embedding", "--data", photo_dir / "photos.csv", "--out", tmp_path / "ro2"),
              tmp_path / "ro2", "read-only file system")


@pytest.mark.parametrize("value, expected", [(".inf", "expected a finite number, got inf"),
                                             (".nan", "expected a finite number, got nan"),
                                             ("1e3", None)])
def test_epochs_inf_nan_and_exponent(value, expected):
    from retrieval.config import load_config

    if expected is None:
        assert load_config(None, [f"train.epochs={value}"]).train.epochs == 1000
        return
    with pytest.raises(GeolocError, match=f"train.epochs: {expected}"):
        load_config(None, [f"train.epochs={value}"])


@pytest.mark.parametrize("option", ["--cols", "--n"])
def test_synth_sheet_zero(tmp_path, option):
    one_error(geoloc("synth", "sheet", tmp_path, "--out", tmp_path / "s.png", option, "0"), option, "at least 1")


def test_index_build_with_a_manifest_indexes_every_photo(query_run, tmp_path):
    # "given a single manifest and no test set, it carves a test fraction out of it"
    from retrieval.answering.index import load_index

    rows = london_photos(tmp_path, 20, size=(40, 40))
    write_csv(tmp_path / "all.csv", "path,lat,lon", rows)
    run = tmp_path / "run"
    import shutil
    shutil.copytree(query_run, run)
    out = geoloc("index", "build", "--run", run, "--data", tmp_path / "all.csv")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "indexed 20 photos (every photo of" in out.stdout
    assert load_index(run / "index")[0].ntotal == 20


def test_a_checkpoint_that_asks_to_run_code_is_refused_by_name(query_run, tmp_path):
    import shutil

    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    run = tmp_path / "run"
    shutil.copytree(query_run, run)
    torch.save({"model": Payload()}, run / "best.pt")
    err = one_error(geoloc("query", "--run", run, write_image(tmp_path / "q.jpg", size=(40, 40))),
                    run / "best.pt", "is not a geoloc checkpoint: it asks to run code (posix.system); refusing")
    assert "weights_only=False" not in err


def test_a_full_disk_while_rendering_is_on_a_line_of_its_own(tmp_path):
    out = geoloc("synth", "render", "--out", tmp_path / "r", "--train", "40", "--test", "4", "--size", "64",
                 "--workers", "1", max_file_bytes=20_000)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.split("\n") if "error: " in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]


def test_progress_in_a_log_file_is_not_every_redraw(tmp_path):
    # "A training log written to a file holds every progress-bar redraw"
    out = geoloc("synth", "render", "--out", tmp_path / "r", "--train", "300", "--test", "4", "--size", "160",
                 "--workers", "1", env={})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("\r") <= 12, out.stderr.count("\r")


def test_photos_without_a_street_graph_are_told_both_ways(photo_dir, tmp_path):
    err = one_error(geoloc("train", "embedding", "--data", photo_dir / "photos.csv", "--out", tmp_path / "r"),
                    "street graph")
    assert "--streets" in err and "--positives euclidean" in err


def test_a_training_log_in_a_file_is_not_every_step(tmp_path, photo_dir):
    # "A training log written to a file holds every progress-bar redraw: 600 KB for a 12-minute run"
    out = geoloc("train", "regression", "--data", photo_dir / "photos.csv", "--out", tmp_path / "r",
                 "--set", "model.arch=resnet18", "--set", "model.weights=none", "--set", "data.image_size=32",
                 "--set", "data.resize=36", "--set", "train.batch_size=2", "--set", "train.epochs=6",
                 "--set", "train.precision=fp32", "--set", "data.val_fraction=0", "--set", "data.test_fraction=0",
                 env={})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "epoch 6/6: train_loss" in out.stdout  # one line per epoch, as it happens
    assert out.stderr.count("\r") <= 30, out.stderr.count("\r")  # 36 steps, each redrawn before: 57
