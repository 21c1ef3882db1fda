"""`geoloc serve`: the web app over HTTP (Flask's client, and a real threaded server for concurrent
requests), routes of several photos uploaded together, and, where a headless Chromium is installed, in a
real browser."""
import dataclasses
import io
import json
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import shapely
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from retrieval import GeolocError
from retrieval.answering.locator import Locator
from retrieval.config import load_config
from retrieval.data.manifests import read_manifest
from retrieval.geo import haversine_m
from retrieval.web.app import create_app, load_app, make_http_server, public_names
from retrieval.web.city_map import city_geojson
from tests.conftest import SHARED_DATA, untrained_run

K = 4


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """An untrained ResNet-18 over the tiny rendered city's 90 views (its streets.graphml is the map)."""
    return untrained_run(tmp_path_factory.mktemp("serve") / "run", tiny_data, k=K)


@pytest.fixture(scope="module")
def loc(run):
    return Locator.load(run)


@pytest.fixture(scope="module")
def city(loc):
    return city_geojson(loc.cfg, loc.side.lat, loc.side.lon)


@pytest.fixture(scope="module")
def client(loc, city):
    return create_app(loc, city, max_upload_mb=1.0).test_client()


@pytest.fixture(scope="module")
def test_view(tiny_data) -> Path:
    return read_manifest(tiny_data / "test.csv").paths[0]


def post(client, *files, k=None):
    """POST /api/locate with (name, bytes) files; returns (status, JSON)."""
    data = {"photo": [(io.BytesIO(b), name) for name, b in files]}
    r = client.post("/api/locate" + (f"?k={k}" if k else ""), data=data, content_type="multipart/form-data")
    return r.status_code, r.get_json()


def png_bytes(size, mode="RGB", fmt="PNG", exif=None) -> bytes:
    buf = io.BytesIO()
    im = Image.new(mode, size, 90) if mode == "1" else Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    im.save(buf, fmt, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def gps_exif(lat, lon) -> Image.Exif:
    def dms(v):
        v = abs(v)
        d, m = int(v), int((v - int(v)) * 60)
        return (IFDRational(d), IFDRational(m), IFDRational(round((v - d - m / 60) * 3600, 4)))
    exif = Image.Exif()
    exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    return exif


def same_answer(got: dict, want: dict) -> None:
    assert set(got) - {"truth"} == set(want)
    for key in ("lat", "lon", "confidence"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert got["vote"] == want["vote"]
    # the database photos named relative to their data folder, never by the server's absolute path
    assert not any(Path(n["path"]).is_absolute() or ".." in n["path"] for n in got["neighbours"])
    assert all(w["path"].endswith("/" + g["path"]) for g, w in zip(got["neighbours"], want["neighbours"], strict=True))
    assert [n["similarity"] for n in got["neighbours"]] == pytest.approx([n["similarity"] for n in want["neighbours"]],
                                                                         abs=1e-5)


# --- over HTTP -------------------------------------------------------------------------------------

def test_page_and_city_map_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and b"<svg id=\"map\"" in page.data
    assert b"http://" not in page.data.replace(b"http://www.w3.org/2000/svg", b"")  # nothing fetched from afar
    geo = client.get("/api/map").get_json()
    assert geo["source"] == "streets: streets.graphml"  # its name, not the server's path to it (issue 41)
    assert len(geo["features"]) > 20 and {f["geometry"]["type"] for f in geo["features"]} == {"LineString"}


def test_without_a_street_graph_the_map_shows_the_database_photos(loc):
    cfg = load_config(None, ["data.train=/nowhere/train.csv"])
    geo = city_geojson(cfg, loc.side.lat, loc.side.lon)
    (dots,) = geo["features"]
    assert dots["geometry"]["type"] == "MultiPoint" and len(dots["geometry"]["coordinates"]) == len(loc.side.lat)
    assert "no street graph" in geo["source"]


def test_an_upload_is_answered_as_the_locator_answers_its_file(client, loc, test_view):
    status, body = post(client, ("view.jpg", test_view.read_bytes()))
    assert status == 200
    (got,) = body
    want = loc.locate(test_view)[0].to_dict()
    assert got["path"] == "view.jpg" and len(got["neighbours"]) == K
    same_answer(got, want)
    assert "truth" not in got  # a rendered view carries no EXIF GPS
    status, body = post(client, ("view.jpg", test_view.read_bytes()), k=2)
    assert status == 200 and len(body[0]["neighbours"]) == 2


def test_exif_gps_gives_the_true_position_and_the_error(client):
    status, body = post(client, ("gps.jpg", png_bytes((64, 48), fmt="JPEG", exif=gps_exif(51.5142, -0.0931))))
    assert status == 200
    truth = body[0]["truth"]
    assert truth["lat"] == pytest.approx(51.5142, abs=1e-6) and truth["lon"] == pytest.approx(-0.0931, abs=1e-6)
    want = float(haversine_m(body[0]["lat"], body[0]["lon"], truth["lat"], truth["lon"]))
    assert truth["error_m"] == pytest.approx(want, abs=0.1)


def truncated() -> bytes:
    return png_bytes((64, 64))[:300]


@pytest.mark.parametrize("name, data, status, message", [
    ("notes.jpg", lambda: b"these are my holiday notes, not a photo", 415, "notes.jpg: not an image"),
    ("cut.png", truncated, 400, "cut.png: cannot read image: corrupt or truncated image"),
    ("big.png", lambda: os.urandom(1_200_000), 413, "over the 1 MB limit"),
    ("dot.png", lambda: png_bytes((1, 1)), 400, "dot.png: image is 1 x 1 px, too small to locate"),
    ("huge.png", lambda: png_bytes((15000, 15000), mode="1"), 413, "huge.png: image too large to decode"),
    ("large.png", lambda: png_bytes((9000, 9000), mode="1"), 413,
     "large.png: image is 9000 x 9000 px (81 Mpx), too large to decode: this server decodes at most 50 Mpx"),
    ("empty.jpg", lambda: b"", 400, "empty.jpg: empty file"),
])
def test_a_bad_upload_gets_a_4xx_and_one_line(client, test_view, name, data, status, message):
    got, body = post(client, (name, data()))
    assert got == status
    error = body["error"] if isinstance(body, dict) else body[0]["error"]
    assert message in error and "\n" not in error
    assert post(client, ("view.jpg", test_view.read_bytes()))[0] == 200  # and the server goes on


def test_other_bad_requests(client, test_view):
    r = client.post("/api/locate", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no photo in the upload" in r.get_json()["error"]
    status, body = post(client, ("view.jpg", test_view.read_bytes()), k="0")
    assert status == 400 and "k='0'" in body["error"]
    # one bad photo among good ones: every photo answered, the status says one failed (as `geoloc query`)
    status, body = post(client, ("a.jpg", test_view.read_bytes()), ("b.txt", b"text"), ("c.jpg", test_view.read_bytes()))
    assert status == 415 and [("error" in a) for a in body] == [False, True, False]
    assert client.get("/api/nothing").status_code == 404


def test_thumbnails_only_of_the_index_photos(client, loc, tmp_path):
    r = client.get("/thumb", query_string={"path": public_names(loc.side.paths)[3]})
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert client.get("/thumb", query_string={"path": loc.side.paths[3]}).status_code == 404  # no server paths
    assert max(Image.open(io.BytesIO(r.data)).size) <= 240
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes((40, 40)))
    for path in (str(secret), "../../etc/passwd", ""):
        assert client.get("/thumb", query_string={"path": path}).status_code == 404


@pytest.fixture
def server(loc, city):
    """A real threaded server on a free port of 127.0.0.1: yields (base url, app factory limits setter)."""
    started = []

    def start(**limits):
        srv = make_http_server(create_app(loc, city, **limits), "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return f"http://127.0.0.1:{srv.server_port}"

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def http_post(url, name, data, timeout=60):
    return requests.post(f"{url}/api/locate", files={"photo": (name, data)}, timeout=timeout)


def test_concurrent_uploads_are_all_answered(server, loc, test_view):
    url = server()
    data = test_view.read_bytes()
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda i: http_post(url, f"v{i}.jpg", data), range(12)))
    assert [r.status_code for r in replies] == [200] * 12
    want = loc.locate(test_view)[0].to_dict()
    for i, r in enumerate(replies):
        assert r.json()[0]["path"] == f"v{i}.jpg"
        same_answer(r.json()[0], want)


def test_past_the_waiting_limit_a_request_is_refused_with_503(server, loc, test_view, monkeypatch):
    slow = loc.locate

    def locate(*a, **kw):
        time.sleep(1.0)
        return slow(*a, **kw)

    monkeypatch.setattr(loc, "locate", locate)  # the instance's method: this module's other tests see the real one
    url = server(max_waiting=1)
    data = test_view.read_bytes()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(http_post, url, "a.jpg", data)
        time.sleep(0.5)
        others = [pool.submit(http_post, url, n, data) for n in ("b.jpg", "c.jpg")]
        statuses = sorted([first.result().status_code] + [f.result().status_code for f in others])
    assert statuses == [200, 503, 503]
    assert "busy" in others[0].result().json()["error"]


def test_a_port_in_use_is_one_line(server, loc, city):
    port = int(server().rsplit(":", 1)[1])
    with pytest.raises(GeolocError, match=f"cannot listen on 127.0.0.1:{port} .*choose another --port"):
        make_http_server(create_app(loc, city), "127.0.0.1", port)


# --- routes ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def walk(loc) -> list[Path]:
    """Four database views one after another along the streets, each 10 to 60 m on foot from the one
    before and farther from the first: the rendered photos of a walk."""
    ids = np.arange(len(loc.side.paths))
    on_foot = loc.street_walks().distances(np.stack([ids, ids]), np.array([np.inf]))[0]
    for start in ids:
        chain = [start]
        while len(chain) < 4:
            last = chain[-1]
            ahead = [j for j in ids if 10 <= on_foot[last, j] <= 60 and on_foot[start, j] > on_foot[start, last]]
            if not ahead:
                break
            chain.append(min(ahead, key=lambda j: on_foot[last, j]))
        if len(chain) == 4:
            return [Path(loc.side.paths[i]) for i in chain]
    pytest.fail("no four database views of the tiny city make a walk")


def taken_at(path: Path, when: str) -> bytes:
    """The photo as a JPEG whose EXIF says when it was taken."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when
    buf = io.BytesIO()
    Image.open(path).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def post_route(client, *files):
    """POST /api/route with (name, bytes) files; returns (status, JSON)."""
    data = {"photo": [(io.BytesIO(b), name) for name, b in files]}
    r = client.post("/api/route", data=data, content_type="multipart/form-data")
    return r.status_code, r.get_json()


def features(body, geometry: str) -> list[dict]:
    return [f for f in body["features"] if f["geometry"]["type"] == geometry]


def assert_on_the_streets(loc, body):
    """Every street path joining two or more photos runs along the street graph (to the centimetre)."""
    segments = [p["segment"] for p in body["photos"] if "error" not in p]
    joined = [f for f in features(body, "LineString") if segments.count(f["properties"]["segment"]) > 1]
    assert joined, body["notes"]
    g = loc.street_walks().graph
    for f in joined:
        lon, lat = np.array(f["geometry"]["coordinates"]).T
        x, y = g.projection.to_xy(lat, lon)
        assert shapely.distance(shapely.points(x, y), shapely.MultiLineString(list(g.geometry))).max() < 0.05


def test_photos_uploaded_together_are_a_route_in_file_name_order(client, loc, walk):
    names = ["walk1.jpg", "walk2.jpg", "walk3.jpg", "walk10.jpg"]  # natural order: walk10 last
    status, body = post_route(client, *[(names[i], walk[i].read_bytes()) for i in (3, 1, 0, 2)])
    assert status == 200 and body["type"] == "FeatureCollection", body
    assert body["order"] == "file name" and body["distance"] == "geodesic"
    assert any("4 of 4 photos have no capture time" in n for n in body["notes"])
    points = features(body, "Point")
    assert [f["properties"]["path"] for f in points] == [p["path"] for p in body["photos"]] == names
    assert [f["properties"]["number"] for f in points] == [1, 2, 3, 4]
    assert len(features(body, "LineString")) == body["segments"] >= 1
    singles = loc.locate([walk[i] for i in range(4)])
    for p, a in zip(body["photos"], singles):  # each beside its own single-photo answer
        assert (p["single"]["lat"], p["single"]["lon"]) == pytest.approx((a.lat, a.lon), abs=1e-6)
    assert_on_the_streets(loc, body)


def test_capture_times_order_a_route_whatever_the_names(client, loc, walk):
    times = ["2024:05:01 10:00:00", "2024:05:01 10:00:20", "2024:05:01 10:00:40", "2024:05:01 10:01:00"]
    names = ["d.jpg", "c.jpg", "b.jpg", "a.jpg"]  # taken in the reverse of their names' order
    status, body = post_route(client, *[(names[i], taken_at(walk[i], times[i])) for i in (2, 0, 3, 1)])
    assert status == 200 and body["order"] == "capture time", body
    assert [p["path"] for p in body["photos"]] == names
    assert [p["time"] for p in body["photos"]] == [t.replace(":", "-", 2).replace(" ", "T") for t in times]
    assert not any("capture time" in n for n in body["notes"])
    assert_on_the_streets(loc, body)


def test_an_unreadable_photo_is_named_and_the_route_goes_on_without_it(client, loc, walk):
    files = [("w1.jpg", walk[0].read_bytes()), ("w2.txt", b"my notes"), ("w3.jpg", walk[1].read_bytes()),
             ("w4.jpg", walk[2].read_bytes())]
    status, body = post_route(client, *files)
    assert status == 415 and body["type"] == "FeatureCollection"  # the status says one failed, as /api/locate's
    assert [p["path"] for p in body["photos"]] == ["w1.jpg", "w2.txt", "w3.jpg", "w4.jpg"]
    assert body["skipped"] == [{"path": "w2.txt", "error": "w2.txt: not an image (expected a JPEG or PNG photo)"}]
    assert body["error"] == ("1 of 4 photos could not be read and were left out of the route: "
                             "w2.txt: not an image (expected a JPEG or PNG photo)")
    assert any(n.startswith("skipped: w2.txt: not an image") for n in body["notes"])
    assert [f["properties"]["path"] for f in features(body, "Point")] == ["w1.jpg", "w3.jpg", "w4.jpg"]
    assert not any("<image" in n for n in body["notes"])  # every photo named as uploaded


def test_a_route_needs_two_readable_photos(client, walk):
    status, body = post_route(client, ("one.jpg", walk[0].read_bytes()))
    assert status == 400 and body["error"].startswith("a route needs 2 or more photos, got 1")
    status, body = post_route(client, ("one.jpg", walk[0].read_bytes()), ("two.jpg", b""))
    assert status == 400
    assert body["error"] == "a route needs 2 or more readable photos, 1 of 2 could be read (two.jpg: empty file)"
    for error in (body["error"], post_route(client)[1]["error"]):
        assert "\n" not in error


def test_a_route_without_a_street_graph_says_so(run, loc, city, walk):
    cfg = load_config(run / "config.yaml", [f"data.train={run / 'elsewhere'}"])
    bare = create_app(dataclasses.replace(loc, cfg=cfg), city).test_client()
    status, body = post_route(bare, ("a.jpg", walk[0].read_bytes()), ("b.jpg", walk[1].read_bytes()))
    assert status == 500 and body["error"].startswith("cannot decode a route: ")
    assert "route.distance=geodesic needs a street graph" in body["error"]
    assert str(run.parent) not in body["error"]  # the run by its name, not the server's path (issue 41)


def test_load_app_reads_the_run(run):
    app = load_app(run)
    assert app.test_client().get("/api/map").get_json()["source"].startswith("streets: ")


# --- in a real browser -----------------------------------------------------------------------------

@pytest.fixture
def browser():
    """Headless Chromium and its driver from the system's packages (never downloaded)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("no headless Chromium with chromedriver here (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,820"):
        opts.add_argument(arg)
    b = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    yield b
    b.quit()


def upload_in_page(b, path: Path, n_before: int):
    """Pick a file in the page's input and wait for its result card; returns the card."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    b.find_element(By.ID, "pick").send_keys(str(path.resolve()))
    WebDriverWait(b, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .confidence, .result.bad"))
                               > n_before)
    card = b.find_elements(By.CSS_SELECTOR, ".result")[0]  # the newest card comes first
    WebDriverWait(b, 30).until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                                             for i in card.find_elements(By.CSS_SELECTOR, ".neighbour img")))
    return card


def test_the_page_locates_photos_in_a_browser(browser, server, tiny_data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("GEOLOC_SCREENSHOTS", tmp_path))  # set it to keep the screenshots
    shots.mkdir(parents=True, exist_ok=True)
    url = server()
    b = browser
    b.get(url + "/")
    WebDriverWait(b, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#city polyline")) > 20)
    # a rendered test view carrying its true position as EXIF GPS, as a phone's photo would
    views = read_manifest(tiny_data / "test.csv")
    rendered = tmp_path / "rendered.jpg"
    Image.open(views.paths[0]).save(rendered, quality=95, exif=gps_exif(views.lat[0], views.lon[0]))
    photos = [("rendered", rendered)]
    real = SHARED_DATA / "photos" / "berlin" / "01.jpg"
    if real.is_file():  # only the developers' machines have ../shared
        photos.append(("berlin", real))
    for n, (what, path) in enumerate(photos):
        card = upload_in_page(b, path, n)
        assert "bad" not in card.get_attribute("class"), card.text
        assert card.find_element(By.CSS_SELECTOR, ".name").text == path.name
        conf = card.find_element(By.CSS_SELECTOR, ".confidence").text
        assert conf.startswith("confidence 0.") and "share of the neighbours' similarity" in conf
        assert len(card.find_elements(By.CSS_SELECTOR, ".neighbour img")) == K
        assert len(b.find_elements(By.CSS_SELECTOR, "#markers .answer-mark")) == 1
        assert len(b.find_elements(By.CSS_SELECTOR, "#markers .nb-mark")) == K
        truth = card.find_element(By.CSS_SELECTOR, ".truth").text
        if what == "rendered":  # the truth on the map, and the error in metres
            lat, lon = (float(v) for v in truth.split(") ", 1)[1].split(":")[0].split(", "))
            assert lat == pytest.approx(views.lat[0], abs=1e-5) and lon == pytest.approx(views.lon[0], abs=1e-5)
            assert re.fullmatch(r".*: error \d+ m", truth)
            assert len(b.find_elements(By.CSS_SELECTOR, "#markers .truth-mark")) == 1
        else:  # Berlin: the truth named, far outside the rendered city's map
            assert "true position (EXIF GPS) 52.51" in truth and truth.endswith("km (outside this map)")
            assert not b.find_elements(By.CSS_SELECTOR, "#markers .truth-mark")
        b.save_screenshot(str(shots / f"upload_{what}.png"))
    # a bad upload: its message in the page, and the page goes on working
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    card = upload_in_page(b, bad, len(photos))
    assert "bad" in card.get_attribute("class")
    assert "notes.jpg: not an image" in card.find_element(By.CSS_SELECTOR, ".message").text
    b.save_screenshot(str(shots / "upload_bad.png"))


def test_photos_dropped_together_draw_their_route(browser, server, walk, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("GEOLOC_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    files = []
    for n, path in enumerate(walk, start=1):
        files.append(tmp_path / f"walk{n}.jpg")
        shutil.copy(path, files[-1])
    b = browser
    b.get(server() + "/")
    WebDriverWait(b, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#city polyline")) > 20)
    b.find_element(By.ID, "pick").send_keys("\n".join(str(f) for f in files))  # picked at once
    WebDriverWait(b, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#route-legend .summary"))
    assert b.find_elements(By.CSS_SELECTOR, "#route polyline.route-path")
    labels = [s.text for s in b.find_elements(By.CSS_SELECTOR, "#route .route-stop text")]
    assert sorted(int(n) for label in labels for n in label.split(",")) == [1, 2, 3, 4], labels  # one spot, one mark
    assert len(b.find_elements(By.CSS_SELECTOR, "#route .route-move")) == 4
    summary = b.find_element(By.CSS_SELECTOR, "#route-legend .summary").text
    assert summary.startswith("route of 4 photo(s), ordered by file name: ") and "segment(s)" in summary
    assert len(b.find_elements(By.CSS_SELECTOR, ".result .confidence")) == 4  # each photo's own answer too
    assert len(b.find_elements(By.CSS_SELECTOR, ".result .on-route")) == 4
    b.save_screenshot(str(shots / "route.png"))


def test_a_real_server_shows_no_server_path(server, loc, test_view, walk):
    """Issue 41 over HTTP: nothing a real `geoloc serve` answers names the server's folders (the neighbours'
    paths, the map's street file, a route's error), and a route with an unreadable photo answers in JSON."""
    url = server()
    root = str(Path(loc.side.paths[0]).parent.parent)
    r = http_post(url, "v.jpg", test_view.read_bytes())
    nbs = r.json()[0]["neighbours"]
    assert r.status_code == 200 and nbs and all(not n["path"].startswith("/") for n in nbs)
    assert requests.get(f"{url}/thumb", params={"path": nbs[0]["path"]}, timeout=30).status_code == 200
    geo = requests.get(f"{url}/api/map", timeout=30).json()
    assert geo["source"] == "streets: streets.graphml"
    files = [("photo", ("a.jpg", walk[0].read_bytes())), ("photo", ("b.jpg", walk[1].read_bytes())),
             ("photo", ("bad.jpg", b"not an image"))]
    r = requests.post(f"{url}/api/route", files=files, timeout=60)
    body = r.json()
    assert r.status_code == 415 and "bad.jpg" in body["error"] and body["type"] == "FeatureCollection"
    assert root not in r.text and root not in json.dumps(geo)
