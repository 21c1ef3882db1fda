"""`geoloc serve`: the web app over HTTP (Flask's client, and a real threaded server for concurrent
requests) and, where a headless Chromium is installed, in a real browser."""
import io
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
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from retrieval import GeolocError
from retrieval.api import Locator
from retrieval.config import load_config
from retrieval.geo import haversine_m
from retrieval.manifests import read_manifest
from retrieval.web.app import create_app, load_app, make_http_server
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
    assert [n["path"] for n in got["neighbours"]] == [n["path"] for n in want["neighbours"]]
    assert [n["similarity"] for n in got["neighbours"]] == pytest.approx([n["similarity"] for n in want["neighbours"]],
                                                                         abs=1e-5)


# --- over HTTP -------------------------------------------------------------------------------------

def test_page_and_city_map_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and b"<svg id=\"map\"" in page.data
    assert b"http://" not in page.data.replace(b"http://www.w3.org/2000/svg", b"")  # nothing fetched from afar
    geo = client.get("/api/map").get_json()
    assert geo["source"].startswith("streets: ") and geo["source"].endswith("streets.graphml")
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
    r = client.get("/thumb", query_string={"path": loc.side.paths[3]})
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
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
        assert card.find_element(By.CSS_SELECTOR, ".confidence").text.startswith("confidence 0.")
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
