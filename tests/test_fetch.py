"""`geoloc data fetch`: panorama views, the state file, the sequence split, and the Mapillary client against
a local server answering in the Graph API v4's documented shapes (paging, the per-request cap, a 429 with
Retry-After, an expired thumbnail URL, a refused token). No test touches the internet."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from retrieval import GeolocError
from tests.conftest import REPO

TOKEN = "MLY|1234567890|s3cr3t-t0ken-value"
CENTRE = (48.8566, 2.3522)  # Paris: positions only, nothing is fetched from there


def jpeg_bytes(size=(96, 64), seed=0, equirect=False) -> bytes:
    """A small JPEG with structure; an equirectangular one encodes each column's longitude in red."""
    w, h = size
    if equirect:
        col = (np.arange(w) * 255 // (w - 1)).astype(np.uint8)
        arr = np.stack([np.tile(col, (h, 1)), np.full((h, w), 80, np.uint8),
                        np.tile(np.linspace(0, 255, h, dtype=np.uint8)[:, None], (1, w))], axis=-1)
    else:
        arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_fetching_loads_no_torch():
    """A fetch is downloads and JPEGs: none of the training stack (seconds to import, and not needed)."""
    code = ("import sys, retrieval.cli, retrieval.data.fetch_area, retrieval.data.panoramax, retrieval.data.mapillary, "
            "retrieval.data.sequences, retrieval.data.splits; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode == 0


# --- panoramas -------------------------------------------------------------------------------------

def test_perspective_crop_looks_where_asked():
    from retrieval.data.panorama import crop_offsets, is_equirectangular, perspective_crop

    pano = np.asarray(Image.open(io.BytesIO(jpeg_bytes((720, 360), equirect=True))))
    assert is_equirectangular(720, 360) and not is_equirectangular(640, 360)
    assert crop_offsets(4) == [0.0, 90.0, 180.0, 270.0]
    for yaw in (0.0, 90.0, -90.0):
        view = perspective_crop(pano, yaw, 90.0, 64)
        centre = view[30:34, 30:34, 0].astype(float).mean()  # red = 255 * column / width
        assert centre == pytest.approx(255 * ((yaw / 360 + 0.5) % 1), abs=4)
        assert view.shape == (64, 64, 3)
    # a level camera: the horizon (the panorama's middle row, blue 128) crosses the view's middle row
    assert perspective_crop(pano, 0.0, 90.0, 64)[32, :, 2].mean() == pytest.approx(128, abs=6)
    # the left edge of a 90-degree view looks 45 degrees left: column 3/8 of the panorama
    assert perspective_crop(pano, 0.0, 90.0, 64)[32, 0, 0] == pytest.approx(255 * 0.375, abs=6)


def test_stac_item_to_picture():
    """A Panoramax item as GeoVisio writes it (web/items.py); the heading only where the camera gave one."""
    from retrieval.data.panoramax import picture_of

    item = {"id": "p1", "collection": "s1", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
            "providers": [{"name": "Default account", "roles": ["producer"]}, {"name": "alice", "roles": ["producer"]}],
            "properties": {"datetime": "2024-05-01T10:00:00+00:00", "view:azimuth": 93, "license": "CC-BY-SA-4.0",
                           "pers:interior_orientation": {"field_of_view": 360},
                           "exif": {"Exif.GPSInfo.GPSImgDirection": "93/1"}},
            "assets": {"hd": {"href": "http://x/hd.jpg"}, "sd": {"href": "http://x/sd.jpg"}}}
    p = picture_of(item, "sd")
    assert (p.lat, p.lon, p.heading, p.sequence, p.author, p.licence, p.url, p.pano) == \
        (48.85, 2.35, 93.0, "s1", "alice", "CC-BY-SA-4.0", "http://x/sd.jpg", True)
    assert picture_of(item, "thumb").url == "http://x/sd.jpg"  # a size the item lacks: the next one
    item["properties"]["exif"] = {"Exif.Image.Make": "x"}  # GeoVisio's azimuth from the path: not the camera's
    assert picture_of(item, "sd").heading is None
    del item["properties"]["exif"]  # an API that shows no EXIF: its azimuth as it is
    assert picture_of(item, "sd").heading == 93.0
    item["geometry"], item["properties"]["pers:interior_orientation"] = None, {"field_of_view": 70}
    p = picture_of(item, "sd")
    assert p.lat is None and p.lon is None and p.pano is False


# --- the state file --------------------------------------------------------------------------------

def test_state_drops_a_line_cut_by_a_kill(tmp_path):
    from retrieval.data.fetch import read_state

    path = tmp_path / "fetch-state.jsonl"
    path.write_text(json.dumps({"id": "a", "rows": [{"path": "images/a.jpg"}]}) + "\n" + '{"id": "b", "ro')
    assert list(read_state(path)) == ["a"]
    assert path.read_text().endswith("]}\n")  # cut back to whole lines: the next append starts a line


# --- a local Graph API -----------------------------------------------------------------------------

class FakeMapillary:
    """A Graph API v4 of a few images: /images?bbox (pages of PAGE, at most `limit` per request, as the
    real one), /{id}?fields=..., the thumbnails at /img/{id}.jpg?sig=N. Counts what it was asked."""
    PAGE = 3

    def __init__(self, images: dict[str, dict], blobs: dict[str, bytes], delay_s: float = 0.0):
        self.images, self.blobs, self.delay_s = images, blobs, delay_s
        self.expired: set[str] = set()  # ids whose first URL answers 403
        self.corrupt: set[str] = set()  # ids whose image is cut short
        self.throttle = 0  # the next requests of /images answer 429 Retry-After: 1
        self.throttle_images = 0  # the next image downloads answer 503 Retry-After: 1
        self.log: list[tuple[str, str]] = []
        self.auth: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.api = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, i: str, sig: int = 0) -> str:
        return f"{self.api}/img/{i}.jpg?sig={sig}"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: bytes, kind="application/json", headers=None):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                with fake.lock:
                    fake.log.append((u.path, u.query))
                if u.path.startswith("/img/"):
                    return self.image(u.path[5:-4], int(q.get("sig", 0)))
                fake.auth.append(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != f"OAuth {TOKEN}" or "access_token" in q:
                    return self.reply(401, json.dumps({"error": {
                        "message": "Invalid OAuth access token - Cannot parse access token",
                        "type": "OAuthException", "code": 190}}).encode())
                if u.path == "/images":
                    return self.search(q)
                i = u.path.strip("/")
                if i in fake.images:
                    fields = q["fields"].split(",")
                    return self.reply(200, json.dumps({f: self.field(i, f) for f in fields if f != "id"}
                                                      | {"id": i}).encode())
                self.reply(404, b'{"error": {"message": "Unsupported get request"}}')

            def field(self, i, f):
                return fake.url(i, 1) if f.startswith("thumb_") else fake.images[i].get(f)

            def search(self, q):
                with fake.lock:
                    if fake.throttle:
                        fake.throttle -= 1
                        return self.reply(429, b'{"error": {"message": "rate limited"}}', headers={"Retry-After": "1"})
                w, s, e, n = (float(v) for v in q["bbox"].split(","))
                if (e - w) * (n - s) > 0.01 + 1e-12:  # the real search's limit on a box (our wording)
                    return self.reply(500, json.dumps({"error": {"message": "bbox area too large", "code": 1}}).encode())
                inside = [i for i, im in sorted(fake.images.items())
                          if w <= im["_at"][0] < e and s <= im["_at"][1] < n]
                inside = inside[: int(q["limit"])]  # the per-request cap
                after = int(q.get("after", 0))
                page = inside[after: after + fake.PAGE]
                fields = q["fields"].split(",")
                data = [{f: fake.url(i) if f.startswith("thumb_") else fake.images[i].get(f) for f in fields
                         if f.startswith("thumb_") or f in fake.images[i]} | {"id": i} for i in page]
                body = {"data": data}
                if after + fake.PAGE < len(inside):
                    body["paging"] = {"cursors": {"after": str(after + fake.PAGE)},
                                      "next": f"{fake.api}/images?{self.path.split('?', 1)[1].split('&after=')[0]}"
                                              f"&after={after + fake.PAGE}"}
                self.reply(200, json.dumps(body).encode())

            def image(self, i, sig):
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                with fake.lock:
                    if fake.throttle_images:
                        fake.throttle_images -= 1
                        return self.reply(503, b"busy", "text/plain", headers={"Retry-After": "1"})
                if i in fake.expired and sig == 0:
                    return self.reply(403, b"URL signature expired", "text/plain")
                blob = fake.blobs[i]
                if i in fake.corrupt:
                    blob = blob[: len(blob) // 2]
                self.reply(200, blob, "image/jpeg")

        return Handler

    def downloads(self) -> Counter:
        return Counter(p[5:-4] for p, _ in self.log if p.startswith("/img/"))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def mapillary_images(n: int = 14, seed: int = 0):
    """n images around CENTRE in 3 sequences: image 0 a panorama, 1 without a position, 2 without a compass
    angle, 3 with a GPS position only (no computed one)."""
    rng = random.Random(seed)
    images, blobs = {}, {}
    for k in range(n):
        i = str(1000 + k)
        lat, lon = CENTRE[0] + rng.uniform(-0.002, 0.002), CENTRE[1] + rng.uniform(-0.003, 0.003)
        im = {"_at": (lon, lat),  # where the server files it: an image without a position is found too
              "computed_geometry": {"type": "Point", "coordinates": [lon, lat]},
              "geometry": {"type": "Point", "coordinates": [lon + 1e-5, lat + 1e-5]},
              "compass_angle": float(rng.randrange(360)), "computed_compass_angle": float(rng.randrange(360)),
              "captured_at": 1_714_557_600_000 + k * 2000, "sequence": f"seq{k % 3}", "is_pano": k == 0,
              "creator": {"id": "7", "username": f"user{k % 2}"}}
        if k == 1:
            del im["computed_geometry"], im["geometry"]
        if k == 2:
            del im["compass_angle"], im["computed_compass_angle"]
        if k == 3:
            del im["computed_geometry"]
        images[i] = im
        blobs[i] = jpeg_bytes((256, 128), equirect=True) if k == 0 else jpeg_bytes(seed=k)
    return images, blobs


BBOX = f"{CENTRE[1] - 0.01},{CENTRE[0] - 0.01},{CENTRE[1] + 0.01},{CENTRE[0] + 0.01}"


@pytest.fixture
def fake():
    images, blobs = mapillary_images()
    server = FakeMapillary(images, blobs)
    yield server
    server.close()


def fetch_mapillary(fake, out: Path, **kw):
    from retrieval.data.fetch_area import fetch_area

    args = dict(bbox=BBOX, api=fake.api, token=TOKEN, no_streets=True, per_request=4, concurrency=4, retries=2,
                progress=False)
    return fetch_area("mapillary", out, **(args | kw))


def test_mapillary_fetch(fake, tmp_path):
    from retrieval.data.fetch import MANIFEST_COLUMNS

    fake.expired.add("1005")
    fake.corrupt.add("1007")
    fake.throttle = 1
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="1007: corrupt or truncated image"):
        s = fetch_mapillary(fake, tmp_path / "city")
    assert time.perf_counter() - t0 >= 1.0  # the 429 asked for a second
    searches = [parse_qs(q) for p, q in fake.log if p == "/images"]
    assert len(searches) > 5 and any("after" in q for q in searches)  # split boxes, pages followed
    assert all(int(q["limit"][0]) == 4 for q in searches)
    assert (s.pictures, s.no_position, s.no_heading, s.panoramas) == (13, 1, 1, 1)
    assert len(s.failed) == 1 and s.failed[0].startswith("1007: corrupt or truncated image (image file is truncated")
    assert s.failed[0].endswith(", 3 times")
    rows = read_rows(tmp_path / "city" / "photos.csv")
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == 11 + 8  # 12 pictures had (1007 failed), the panorama as 8 views
    by_id = {}
    for r in rows:
        by_id.setdefault(r["source_id"], []).append(r)
    assert "1001" not in by_id and "1007" not in by_id
    assert by_id["1002"][0]["heading"] == ""  # no compass angle
    assert by_id["1003"][0]["lat"] == f"{fake.images['1003']['geometry']['coordinates'][1]:.7f}"  # GPS, no computed
    assert by_id["1004"][0]["lat"] == f"{fake.images['1004']['computed_geometry']['coordinates'][1]:.7f}"
    assert by_id["1004"][0]["heading"] == f"{fake.images['1004']['computed_compass_angle']:.1f}"
    pano = sorted(by_id["1000"], key=lambda r: r["path"])
    base = fake.images["1000"]["computed_compass_angle"]
    assert [float(r["heading"]) for r in pano] == [(base + 45 * k) % 360 for k in range(8)]
    assert all(Image.open(tmp_path / "city" / r["path"]).size == (64, 64) for r in pano)
    assert {r["licence"] for r in rows} == {"CC-BY-SA-4.0"} and {r["author"] for r in rows} == {"user0", "user1"}
    assert by_id["1009"][0]["date"] == "2024-05-01T10:00:18" and by_id["1009"][0]["sequence"] == "seq0"
    assert fake.downloads()["1005"] == 2 and ("/1005", "fields=thumb_1024_url") in fake.log  # 403, re-queried
    attribution = (tmp_path / "city" / "ATTRIBUTION.txt").read_text()
    assert "CC-BY-SA-4.0 (12 pictures): user" in attribution and "Mapillary" in attribution
    assert not list((tmp_path / "city").rglob("*.tmp")) and not list((tmp_path / "city" / ".panoramas").glob("*"))

    # again: nothing downloaded twice, the failed picture tried again, the same manifest
    fake.corrupt.clear()
    before = fake.downloads()
    s2 = fetch_mapillary(fake, tmp_path / "city")
    got = fake.downloads() - before
    assert got == Counter({"1007": 1}) and (s2.already, s2.fetched) == (12, 1)
    rows2 = read_rows(tmp_path / "city" / "photos.csv")
    assert [r for r in rows2 if r["source_id"] != "1007"] == rows


def test_mapillary_asks_a_large_area_box_by_box(fake, tmp_path):
    """The images search refuses a bbox over 0.01 square degrees: a city-sized area is asked as a grid."""
    lon, lat = (float(v) for v in BBOX.split(",")[:2])
    big = (lon - 0.14, lat - 0.04, lon + 0.16, lat + 0.06)  # 0.30 x 0.10 degrees
    s = fetch_mapillary(fake, tmp_path / "city", bbox=",".join(map(str, big)), per_request=2000)
    boxes = {tuple(float(v) for v in parse_qs(q)["bbox"][0].split(",")) for p, q in fake.log if p == "/images"}
    assert all((e - w) * (n - s) <= 0.01 + 1e-12 for w, s, e, n in boxes)
    assert sum((e - w) * (n - s) for w, s, e, n in boxes) == pytest.approx(0.30 * 0.10)  # they tile the area
    assert s.pictures == 13 and not s.failed  # as in the small box: every image, none twice


def test_a_busy_image_server_is_waited_for(fake, tmp_path):
    fake.throttle_images = 2
    t0 = time.perf_counter()
    s = fetch_mapillary(fake, tmp_path / "city", max_pictures=3, concurrency=1)
    assert time.perf_counter() - t0 >= 2.0 and s.fetched == 3 and not s.failed  # Retry-After: 1, twice
    assert sum(fake.downloads().values()) == 3 + 2


def test_mapillary_refused_token(fake, tmp_path):
    from retrieval.data.fetch_area import fetch_area

    with pytest.raises(GeolocError, match="the token was refused") as err:
        fetch_area("mapillary", tmp_path / "x", bbox=BBOX, api=fake.api, token="MLY|wrong-token", no_streets=True,
                   progress=False)
    assert "wrong-token" not in str(err.value)
    with pytest.raises(GeolocError, match="no token: pass --token or set MAPILLARY_TOKEN"):
        fetch_area("mapillary", tmp_path / "y", bbox=BBOX, api=fake.api, token="", no_streets=True, progress=False)


def geoloc(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrieval.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, **kw)


def test_token_is_never_written(fake, tmp_path):
    out = tmp_path / "city"
    r = geoloc("data", "fetch", "mapillary", "--bbox", BBOX, "--api", fake.api, "--out", str(out), "--no-streets",
               "--per-request", "4", env={"MAPILLARY_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert "photos.csv: 20 photos of 13 pictures" in r.stdout and "skipped 1 without a position" in r.stdout
    assert set(fake.auth) == {f"OAuth {TOKEN}"}  # every API request carried it, in the header
    assert all("access_token" not in q for _, q in fake.log)
    secret = TOKEN.split("|")[-1]
    assert secret not in r.stdout + r.stderr
    for p in out.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p
    # the refused token's message names neither it nor the good one
    r = geoloc("data", "fetch", "mapillary", "--bbox", BBOX, "--api", fake.api, "--out", str(tmp_path / "b"),
               "--no-streets", "--token", "MLY|nope-nope")
    assert r.returncode == 2 and "the token was refused" in r.stderr and "nope-nope" not in r.stderr


def test_resume_refuses_other_settings_and_a_second_fetch(fake, tmp_path):
    out = tmp_path / "city"
    fetch_mapillary(fake, out, max_pictures=3)
    with pytest.raises(GeolocError, match=r"holds a fetch with other settings \(size 'sd' -> 'hd'\)"):
        fetch_mapillary(fake, out, size="hd")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from retrieval.locks import folder_lock\nwith folder_lock(Path(sys.argv[1]), 'data fetch'): "
                               "print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        r = geoloc("data", "fetch", "mapillary", "--bbox", BBOX, "--api", fake.api, "--out", str(out),
                   "--no-streets", "--token", TOKEN)
        assert r.returncode == 2 and f"in use by pid {holder.pid} (geoloc data fetch)" in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_an_empty_area_and_bad_areas(fake, tmp_path):
    with pytest.raises(GeolocError, match="has no picture with a position in the bbox 10.0,10.0,10.01,10.01"):
        fetch_mapillary(fake, tmp_path / "empty", bbox="10,10,10.01,10.01")
    assert not (tmp_path / "empty" / "photos.csv").exists()
    with pytest.raises(GeolocError, match="--bbox '2,1,1,2': need west < east"):
        fetch_mapillary(fake, tmp_path / "e", bbox="2,1,1,2")
    with pytest.raises(GeolocError, match="give the area as --bbox W,S,E,N or as --place NAME"):
        fetch_mapillary(fake, tmp_path / "e", bbox=None)
    with pytest.raises(GeolocError, match="--place 'Atlantis, Nowhere': cannot geocode it"):
        fetch_mapillary(fake, tmp_path / "e", bbox=None, place="Atlantis, Nowhere")


def test_streets_from_an_extract(fake, tmp_path):
    """--streets: the street graph of an OSM extract cut to the bbox, offline (the demo city, moved to the
    fake photos' area is not needed: a bbox over the demo city's centre and photos elsewhere work alike)."""
    import bz2

    from retrieval.data.fetch_area import write_streets
    from retrieval.data.streets import load_graph
    from retrieval.synth.city import CENTRE as DEMO, write_demo_city

    osm = write_demo_city(tmp_path / "city.osm", seed=1, size_m=600)
    packed = tmp_path / "city.osm.bz2"
    packed.write_bytes(bz2.compress(osm.read_bytes()))
    lat, lon = DEMO
    box = (lon - 0.002, lat - 0.0015, lon + 0.002, lat + 0.0015)
    assert write_streets(tmp_path / "out", box, packed)
    g = load_graph(tmp_path / "out" / "streets.graphml")
    lat_n, lon_n = g.projection.to_latlon(*np.array([[d["x"], d["y"]] for _, d in g.graph.nodes(data=True)]).T)
    whole = load_graph(packed)
    assert 0 < len(g.nodes) < len(whole.nodes)
    assert (abs(lat_n - lat) < 0.004).all() and (abs(lon_n - lon) < 0.005).all()  # the bbox and the next node out
    with pytest.raises(GeolocError, match="no street of the extract lies in the bbox"):
        write_streets(tmp_path / "far", (10, 10, 10.01, 10.01), packed)


@pytest.mark.slow
def test_kill9_at_random_points_then_resume(tmp_path):
    """Five kill -9s of a fetch at random moments, then a run to the end: the manifest of an uninterrupted
    fetch, every image whole, no temporary file left, no picture downloaded twice that was whole on disk."""
    images, blobs = mapillary_images(40, seed=3)
    server = FakeMapillary(images, blobs, delay_s=0.1)
    try:
        args = ["data", "fetch", "mapillary", "--bbox", BBOX, "--api", server.api, "--no-streets",
                "--per-request", "8", "--concurrency", "4", "--token", TOKEN]
        assert geoloc(*args, "--out", str(tmp_path / "clean")).returncode == 0
        clean = (tmp_path / "clean" / "photos.csv").read_text()
        server.log.clear()
        out, rng = tmp_path / "killed", random.Random(7)
        state = out / "fetch-state.jsonl"
        for k in range(5):
            p = subprocess.Popen([sys.executable, "-m", "retrieval.cli", *args, "--out", str(out)], cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            done = len(state.read_text().splitlines()) if state.is_file() else 0
            target = done + rng.randint(0 if k == 0 else 1, 6)  # the first kill may land before any download
            while p.poll() is None and (len(state.read_text().splitlines()) if state.is_file() else 0) < target:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.1))  # between two pictures, or in the middle of one
            p.send_signal(signal.SIGKILL)
            p.wait()
            assert p.returncode == -signal.SIGKILL  # killed, not finished
        r = geoloc(*args, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert (out / "photos.csv").read_text() == clean
        for row in read_rows(out / "photos.csv"):
            Image.open(out / row["path"]).load()
        assert not list(out.rglob("*.tmp"))
        # a picture is downloaded again only when a kill caught it in flight (4 at a time, 5 kills)
        twice = sum(n - 1 for n in server.downloads().values())
        assert twice <= 5 * 4
    finally:
        server.close()


# --- the sequence split and near-duplicates ---------------------------------------------------------

def fetched_manifest(path: Path, rng_seed: int = 0) -> Path:
    """A manifest as `data fetch` writes it: 20 sequences of 10 photos along lines; sequences 0 and 1 are one
    author's drive cut in two (30 s apart); 2 and 3 pass the same street within a minute (other authors)."""
    rng = np.random.default_rng(rng_seed)
    rows = ["path,lat,lon,heading,date,sequence,source,source_id,licence,author"]
    t0 = np.datetime64("2024-05-01T09:00:00")
    for s in range(20):
        lat0, lon0 = CENTRE[0] + rng.uniform(-0.01, 0.01), CENTRE[1] + rng.uniform(-0.01, 0.01)
        start = t0 + np.timedelta64(3600 * s, "s")
        if s == 1:
            start = t0 + np.timedelta64(9 * 2 + 30, "s")  # 30 s after sequence 0's last photo
        if s == 3:
            lat0, lon0, start = prev_lat, prev_lon, prev_start + np.timedelta64(40, "s")
        for k in range(10):
            name = f"s{s}_{k}"
            write = path.parent / "images" / f"{name}.jpg"
            write.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (s * 10, k * 20, 0)).save(write)
            when = start + np.timedelta64(2 * k, "s")
            rows.append(f"images/{name}.jpg,{lat0 + 1.2e-4 * k:.7f},{lon0:.7f},90.0,{when},seq{s},mapillary,{name},"
                        f"CC-BY-SA-4.0,{'a' if s < 2 else f'u{s}'}")
        prev_lat, prev_lon, prev_start = lat0, lon0, start
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sequence_split_keeps_sequences_and_twins_whole(tmp_path):
    from typer.testing import CliRunner

    from retrieval.cli import app

    src = fetched_manifest(tmp_path / "photos.csv")
    out = tmp_path / "split.csv"
    r = CliRunner().invoke(app, ["data", "split", str(src), "--out", str(out), "--mode", "sequence",
                                 "--val", "0.2", "--test", "0.2"])
    assert r.exit_code == 0, r.output
    counts = {k: int(v) for k, v in re.findall(r"(train|val|test) (\d+)", r.output)}
    assert sum(counts.values()) == 200 and 30 <= counts["val"] <= 50 and 30 <= counts["test"] <= 50, r.output
    rows = read_rows(out)
    assert {"sequence", "author", "source_id", "licence"} <= set(rows[0])  # the fetched columns kept
    side = {}
    for row in rows:
        side.setdefault(row["sequence"], set()).add(row["split"])
    assert all(len(v) == 1 for v in side.values())  # whole sequences
    assert side["seq0"] == side["seq1"] and side["seq2"] == side["seq3"]  # twins on one side
    r = CliRunner().invoke(app, ["data", "check", str(out)])
    assert r.exit_code == 0 and "near-duplicate" not in r.output


def test_check_names_near_duplicates_across_splits(tmp_path):
    from typer.testing import CliRunner

    from retrieval.cli import app

    src = fetched_manifest(tmp_path / "photos.csv")
    rows = read_rows(src)
    for i, row in enumerate(rows):
        row["split"] = "test" if row["sequence"] == "seq1" else "train"  # seq1 is seq0's second half
    rows[10]["lat"], rows[10]["lon"] = rows[9]["lat"], rows[9]["lon"]  # and starts where seq0 ended
    with open(tmp_path / "bad.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = CliRunner().invoke(app, ["data", "check", str(tmp_path / "bad.csv")])
    assert r.exit_code == 0, r.output
    assert "1 pairs of near-duplicate photos across splits (the same author, within 10 m and a minute): " \
           "rows 11 (train) and 12 (test)" in r.output


def test_training_carves_validation_by_sequence(tmp_path):
    """data.split_mode=sequence: a manifest without a split column is cut into whole sequences for training."""
    from retrieval.data.sequences import extra_columns
    from retrieval.data.splits import load_splits

    splits = load_splits(fetched_manifest(tmp_path / "photos.csv"), 0.2, 0.2, mode="sequence")
    seqs = {name: set(extra_columns(m)["sequence"]) for name, m in splits.items()}
    assert set(seqs) == {"train", "val", "test"} and sum(len(m) for m in splits.values()) == 200
    assert not (seqs["train"] & seqs["val"]) and not (seqs["train"] & seqs["test"]) and not (seqs["val"] & seqs["test"])
