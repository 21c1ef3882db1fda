"""`geoloc data fetch panoramax` against a real Panoramax server: GeoVisio (PyPI `geovisio`) on 127.0.0.1, with
its own PostgreSQL + PostGIS cluster in a temporary folder, fed pictures that carry EXIF GPS, direction,
capture time and author, in a few sequences, one an equirectangular panorama. Faults: the server stopped
in the middle of a fetch, kill -9 of the fetch at random points, an empty bbox, a picture with no direction.

GeoVisio pins its own Flask and Pillow, so it lives in a virtual environment of its own: $GEOLOC_GEOVISIO_VENV,
else ~/.cache/geoloc-geovisio (.ci/run makes it); PostgreSQL's initdb/pg_ctl come from /usr/lib/postgresql
(Debian's postgresql and postgresql-NN-postgis-3). Where either is missing the tests skip, saying which.
"""
from __future__ import annotations

import glob
import io
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.data.manifests import parse_date
from tests.conftest import REPO
from tests.test_fetch import geoloc, jpeg_bytes, read_rows

pytestmark = pytest.mark.slow
VENV = Path(os.environ.get("GEOLOC_GEOVISIO_VENV", Path.home() / ".cache" / "geoloc-geovisio"))
CENTRE = (44.0, -30.0)  # the procedural demo city's centre (retrieval.synth.city), for --streets offline
BBOX = f"{CENTRE[1] - 0.004},{CENTRE[0] - 0.003},{CENTRE[1] + 0.004},{CENTRE[0] + 0.003}"
T0 = np.datetime64("2024-05-01T10:00:00")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql postgresql-15-postgis-3)")
    bin_dir = Path(found[-1]).parent
    version = bin_dir.parent.name
    if not glob.glob(f"/usr/share/postgresql/{version}/extension/postgis.control"):
        pytest.skip(f"PostGIS is not installed for PostgreSQL {version} (apt-get install postgresql-{version}-postgis-3)")
    return bin_dir


def _as_postgres():
    """initdb and postgres refuse to run as root: run them as the postgres user where we are root."""
    if os.getuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no postgres user for the database cluster")
    return lambda: (os.setgid(pw.pw_gid), os.setuid(pw.pw_uid))


class Server:
    """A PostgreSQL cluster and a GeoVisio API on 127.0.0.1, in a temporary folder; start() and stop() the
    API alone (the database stays up), for the fault tests."""

    def __init__(self):
        if not (VENV / "bin" / "flask").is_file():
            pytest.skip(f"no GeoVisio virtual environment at {VENV} (python3.11 -m venv {VENV} && "
                        f"{VENV}/bin/pip install geovisio; .ci/run does it; or set GEOLOC_GEOVISIO_VENV)")
        self.pg_bin, self.demote = _pg_bin(), _as_postgres()
        self.root = Path(tempfile.mkdtemp(prefix="geoloc-geovisio-"))
        os.chmod(self.root, 0o755)
        self.pg_port, self.port = _free_port(), _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc = None
        self._start_db()
        (self.root / "storage").mkdir()
        self.env = {**os.environ, "DB_URL": f"postgresql://postgres@127.0.0.1:{self.pg_port}/geovisio",
                    "FS_URL": str(self.root / "storage"), "FLASK_SECRET_KEY": "geoloc-test",
                    "API_PICTURES_LICENSE_SPDX_ID": "CC-BY-SA-4.0",
                    "API_PICTURES_LICENSE_URL": "https://creativecommons.org/licenses/by-sa/4.0/",
                    "PICTURE_PROCESS_THREADS_LIMIT": "1", "PICTURE_PROCESS_DERIVATES_STRATEGY": "PREPROCESS",
                    "API_LOG_LEVEL": "warning"}
        self._flask("db", "upgrade")

    def _start_db(self):
        data = self.root / "pg"
        data.mkdir()
        if self.demote:
            shutil.chown(data, "postgres", "postgres")
        self._run([self.pg_bin / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"], "initdb")
        self._run([self.pg_bin / "pg_ctl", "-D", data, "-l", data / "log.txt", "-w", "-t", "60", "-o",
                   f"-p {self.pg_port} -h 127.0.0.1 -k {data}", "start"], "pg_ctl start")
        self._run([self.pg_bin / "createdb", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres", "geovisio"],
                  "createdb")

    def _run(self, cmd, what):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, preexec_fn=self.demote, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{what} failed: {r.stderr[-2000:]}")

    def _flask(self, *args):
        r = subprocess.run([str(VENV / "bin" / "flask"), "--app", "geovisio", *args], capture_output=True, text=True,
                           env=self.env, cwd=self.root, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed: {r.stderr[-3000:]}")
        return r.stdout

    def start(self):
        log = open(self.root / "api.log", "a")
        self.proc = subprocess.Popen([str(VENV / "bin" / "flask"), "--app", "geovisio", "run", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--with-threads"], env=self.env, cwd=self.root,
                                     stdout=log, stderr=subprocess.STDOUT)
        import requests

        for _ in range(300):
            try:
                if requests.get(self.api, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"GeoVisio exited: {(self.root / 'api.log').read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError("GeoVisio did not answer in 60 s")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def close(self):
        self.stop()
        subprocess.run([str(self.pg_bin / "pg_ctl"), "-D", str(self.root / "pg"), "-m", "immediate", "stop"],
                       capture_output=True, preexec_fn=self.demote, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def exif_jpeg(lat, lon, when, direction=None, artist="alice", pano=False, seed=0) -> bytes:
    """A JPEG with EXIF GPS position (and direction), DateTimeOriginal and Artist, as a camera writes them."""
    raw = jpeg_bytes((1024, 512), equirect=True) if pano else jpeg_bytes((320, 240), seed=seed)
    im = Image.open(io.BytesIO(raw))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x013B] = "geoloc", "test camera", artist  # Make, Model, Artist
    gps = exif.get_ifd(0x8825)
    gps.update({0: b"\x02\x03\x00\x00", 1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W",
                4: _dms(lon)})
    if direction is not None:
        gps.update({16: "T", 17: float(direction)})
    exif.get_ifd(0x8769)[0x9003] = str(when).replace("-", ":").replace("T", " ")  # DateTimeOriginal
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def _dms(v: float):
    v = abs(v)
    d, m = int(v), int((abs(v) - int(v)) * 60)
    return (float(d), float(m), round((v - d - m / 60) * 3600, 4))


def pictures():
    """(sequence, [(jpeg, form fields, expected)]): alice drives a street in two sequences 30 s apart (twins),
    bob another street, carol a 360-degree panorama, dave one picture with no direction."""
    seqs = {}
    for name, artist, lat0, lon0, start, n in (("alice-1", "alice", 0.0, -0.002, 0, 8),
                                               ("alice-2", "alice", 0.0, 0.0015, 8 * 3 + 30, 8),
                                               ("bob", "bob", 0.0015, -0.002, 3600, 8)):
        rows = []
        for k in range(n):
            lat, lon = CENTRE[0] + lat0, CENTRE[1] + lon0 + 0.00012 * k  # 10 m apart, heading east
            when = T0 + np.timedelta64(start + 3 * k, "s")
            rows.append((exif_jpeg(lat, lon, when, 90.0 + k, artist, seed=len(seqs) * 100 + k), {},
                         dict(lat=lat, lon=lon, heading=90.0 + k, date=str(when), author=artist)))
        seqs[name] = rows
    lat, lon, when = CENTRE[0] - 0.0015, CENTRE[1], T0 + np.timedelta64(7200, "s")
    seqs["carol-360"] = [(exif_jpeg(lat, lon, when, 30.0, "carol", pano=True),
                          {"override_Xmp.GPano.ProjectionType": "equirectangular"},
                          dict(lat=lat, lon=lon, heading=30.0, date=str(when), author="carol"))]
    lat, lon, when = CENTRE[0] - 0.0015, CENTRE[1] + 0.002, T0 + np.timedelta64(9000, "s")
    seqs["dave"] = [(exif_jpeg(lat, lon, when, None, "dave", seed=999), {},
                     dict(lat=lat, lon=lon, heading=None, date=str(when), author="dave"))]
    return seqs


def upload(api: str, seqs) -> dict[str, str]:
    """Each sequence as a collection of pictures (GeoVisio's upload API); waits until all are processed.
    Returns sequence name -> collection id."""
    import requests

    ids = {}
    for name, rows in seqs.items():
        r = requests.post(f"{api}/collections", json={"title": name}, timeout=30)
        assert r.status_code in (200, 202), r.text
        ids[name] = r.json()["id"]
        for k, (jpeg, fields, _) in enumerate(rows, start=1):
            r = requests.post(f"{api}/collections/{ids[name]}/items", data={"position": str(k), **fields},
                              files={"picture": (f"{name}-{k}.jpg", jpeg, "image/jpeg")}, timeout=60)
            assert r.status_code in (200, 202), r.text
    want = sum(len(v) for v in seqs.values())
    for _ in range(240):  # the search shows a picture once it is processed
        found = requests.get(f"{api}/search", params={"bbox": BBOX, "limit": want}, timeout=30).json()["features"]
        if len(found) == want:
            return ids
        time.sleep(0.5)
    status = {name: [f["properties"].get("geovisio:status") for f in
                     requests.get(f"{api}/collections/{i}/items", timeout=30).json()["features"]] for name, i in ids.items()}
    raise RuntimeError(f"GeoVisio showed {len(found)} of {want} pictures after 120 s: {status}")


@pytest.fixture(scope="module")
def geovisio():
    server = Server()
    try:
        server.start()
        seqs = pictures()
        ids = upload(server.api, seqs)
        yield server, seqs, ids
    finally:
        server.close()


def fetch(api, out: Path, *extra, **kw) -> subprocess.CompletedProcess:
    return geoloc("data", "fetch", "panoramax", "--api", api, "--bbox", BBOX, "--out", str(out), "--no-streets",
                  "--retries", "1", *extra, **kw)


def test_fetch_from_geovisio(geovisio, tmp_path):
    server, seqs, ids = geovisio
    r = fetch(server.api, tmp_path / "city", "--concurrency", "4")
    assert r.returncode == 0, r.stderr
    print(f"\n{r.stdout}")  # the throughput
    n_pics = sum(len(v) for v in seqs.values())
    assert f"photos of {n_pics} pictures" in r.stdout and "1 panoramas cut into views" in r.stdout, r.stdout
    rows = read_rows(tmp_path / "city" / "photos.csv")
    assert len(rows) == n_pics - 1 + 8
    seq_of = {v: k for k, v in ids.items()}
    by_seq = {}
    for row in rows:
        by_seq.setdefault(seq_of[row["sequence"]], []).append(row)
    for name, pics in seqs.items():
        if name == "carol-360":
            continue
        got = sorted(by_seq[name], key=lambda r: r["date"])
        assert len(got) == len(pics)
        first = parse_date(got[0]["date"])  # GeoVisio turns the EXIF's local time into UTC by the position's zone
        for row, (_, _, want) in zip(got, pics):
            assert float(row["lat"]) == pytest.approx(want["lat"], abs=1e-6)
            assert float(row["lon"]) == pytest.approx(want["lon"], abs=1e-6)
            assert parse_date(row["date"]) - first == np.datetime64(want["date"]) - np.datetime64(pics[0][2]["date"])
            assert row["author"] == want["author"] and row["licence"] == "CC-BY-SA-4.0"
            assert row["source"] == "panoramax"
            if want["heading"] is None:  # dave's: GeoVisio says 0 (its one-picture sequence's path), we say none
                assert row["heading"] == ""
            else:
                assert float(row["heading"]) == pytest.approx(want["heading"], abs=0.5), (name, row)  # whole degrees
            Image.open(tmp_path / "city" / row["path"]).load()
    views = sorted(by_seq["carol-360"], key=lambda r: r["path"])
    assert [float(v["heading"]) for v in views] == [(30.0 + 45 * k) % 360 for k in range(8)]
    assert all(Image.open(tmp_path / "city" / v["path"]).size[0] == Image.open(tmp_path / "city" / v["path"]).size[1]
               for v in views)
    check = geoloc("data", "check", str(tmp_path / "city" / "photos.csv"))
    assert check.returncode == 0 and f"{n_pics - 1 + 8} good photos" in check.stdout, check.stdout + check.stderr
    attribution = (tmp_path / "city" / "ATTRIBUTION.txt").read_text()
    assert f"CC-BY-SA-4.0 ({n_pics} pictures): alice, bob, carol, dave" in attribution

    # the sequence split keeps alice's two drives (30 s apart) together
    split = tmp_path / "city" / "split.csv"
    r = geoloc("data", "split", str(tmp_path / "city" / "photos.csv"), "--out", str(split), "--mode", "sequence",
               "--val", "0.2", "--test", "0.2")
    assert r.returncode == 0, r.stderr
    side = {}
    for row in read_rows(split):
        side.setdefault(seq_of[row["sequence"]], set()).add(row["split"])
    assert all(len(s) == 1 for s in side.values()) and side["alice-1"] == side["alice-2"]

    # GeoVisio answers a search with the `limit` nearest pictures and no next page: asked 5 at a time, the
    # client splits the box until each answer has room to spare, and finds every picture
    log_start = len((server.root / "api.log").read_text())
    r = fetch(server.api, tmp_path / "small", "--per-request", "5", "--concurrency", "4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "small" / "photos.csv").read_text() == (tmp_path / "city" / "photos.csv").read_text()
    assert len(re.findall(r"(?:GET|POST) /api/search", (server.root / "api.log").read_text()[log_start:])) >= 9
    first = fetch(server.api, tmp_path / "one", "--per-request", str(n_pics), "--concurrency", "4")
    assert first.returncode == 0 and "photos of 26 pictures" in first.stdout  # one full answer: split, not cut

    # again: nothing to download
    r = fetch(server.api, tmp_path / "city", "--concurrency", "4")
    assert r.returncode == 0 and "0 fetched now" in r.stdout and f"{n_pics} by an earlier run" in r.stdout, r.stdout


def test_empty_bbox_and_streets(geovisio, tmp_path):
    import bz2

    from retrieval.synth.city import write_demo_city

    server, _, _ = geovisio
    r = geoloc("data", "fetch", "panoramax", "--api", server.api, "--bbox", "10,10,10.01,10.01", "--out",
               str(tmp_path / "empty"), "--no-streets")
    assert r.returncode == 2 and "has no picture with a position in the bbox 10.0,10.0,10.01,10.01" in r.stderr
    osm = write_demo_city(tmp_path / "city.osm", seed=0, size_m=800)
    (tmp_path / "city.osm.bz2").write_bytes(bz2.compress(osm.read_bytes()))
    r = geoloc("data", "fetch", "panoramax", "--api", server.api, "--bbox", BBOX, "--out", str(tmp_path / "c"),
               "--streets", str(tmp_path / "city.osm.bz2"), "--max", "3", "--size", "thumb")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c" / "streets.graphml").is_file()
    assert "OpenStreetMap contributors" in (tmp_path / "c" / "ATTRIBUTION.txt").read_text()
    assert len({row["source_id"] for row in read_rows(tmp_path / "c" / "photos.csv")}) == 3


def test_server_stopped_mid_fetch_then_resumed(geovisio, tmp_path):
    server, _, _ = geovisio
    r = fetch(server.api, tmp_path / "clean", "--concurrency", "1")
    assert r.returncode == 0, r.stderr
    clean = (tmp_path / "clean" / "photos.csv").read_text()
    out, state = tmp_path / "cut", tmp_path / "cut" / "fetch-state.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "data", "fetch", "panoramax", "--api", server.api,
                          "--bbox", BBOX, "--out", str(out), "--no-streets", "--retries", "1", "--concurrency", "1"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        while p.poll() is None and (len(state.read_text().splitlines()) if state.is_file() else 0) < 5:
            time.sleep(0.01)
        server.stop()
        _, err = p.communicate(timeout=120)
    finally:
        server.start()
    assert p.returncode == 2 and "the server stopped answering" in err and "run the same command again" in err, err
    done = len(state.read_text().splitlines())
    assert 5 <= done < len(read_rows(tmp_path / "clean" / "photos.csv"))
    r = fetch(server.api, out, "--concurrency", "1")
    assert r.returncode == 0, r.stderr
    assert f"{done} by an earlier run" in r.stdout
    assert (out / "photos.csv").read_text() == clean


def test_kill9_at_random_points(geovisio, tmp_path):
    server, _, _ = geovisio
    r = fetch(server.api, tmp_path / "clean", "--concurrency", "2")
    assert r.returncode == 0, r.stderr
    clean = (tmp_path / "clean" / "photos.csv").read_text()
    log_start = len((server.root / "api.log").read_text())
    out, state, rng = tmp_path / "killed", tmp_path / "killed" / "fetch-state.jsonl", random.Random(11)
    for k in range(5):
        p = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "data", "fetch", "panoramax", "--api",
                              server.api, "--bbox", BBOX, "--out", str(out), "--no-streets", "--concurrency", "2"],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        target = (len(state.read_text().splitlines()) if state.is_file() else 0) + rng.randint(0 if k == 0 else 1, 4)
        while p.poll() is None and (len(state.read_text().splitlines()) if state.is_file() else 0) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL  # killed, not finished
    r = fetch(server.api, out, "--concurrency", "2")
    assert r.returncode == 0, r.stderr
    assert (out / "photos.csv").read_text() == clean
    # a picture is downloaded again only where a kill caught it in flight (2 at a time, 5 kills)
    gets = re.findall(r"GET /api/pictures/([0-9a-f-]+)/sd.jpg", (server.root / "api.log").read_text()[log_start:])
    assert len(gets) - len(set(gets)) <= 5 * 2 and set(gets) == {r["source_id"] for r in read_rows(out / "photos.csv")}
    for row in read_rows(out / "photos.csv"):
        Image.open(out / row["path"]).load()
    assert not list(out.rglob("*.tmp")) and not list((out / ".panoramas").glob("*"))


def test_from_a_panoramax_server_to_a_located_photo(geovisio, tmp_path):
    """The issue's end to end: fetched from the server with the area's streets, split by sequence, trained
    with geodesic positives on those streets, indexed and asked, all through geoloc's commands (a tiny
    network and budget: the path, not an accuracy)."""
    import bz2

    from retrieval.synth.city import write_demo_city

    server, _, _ = geovisio
    city = tmp_path / "city"
    osm = write_demo_city(tmp_path / "streets.osm", seed=0, size_m=800)
    (tmp_path / "streets.osm.bz2").write_bytes(bz2.compress(osm.read_bytes()))
    r = geoloc("data", "fetch", "panoramax", "--api", server.api, "--bbox", BBOX, "--out", str(city), "--streets",
               str(tmp_path / "streets.osm.bz2"), "--concurrency", "4")
    assert r.returncode == 0 and (city / "streets.graphml").is_file(), r.stderr
    split = city / "split.csv"
    r = geoloc("data", "split", str(city / "photos.csv"), "--out", str(split), "--mode", "sequence",
               "--val", "0.2", "--test", "0.2")
    assert r.returncode == 0, r.stderr
    tiny = ["model.arch=resnet18", "model.weights=none", "model.embed_dim=16", "data.image_size=32", "data.resize=36",
            "train.epochs=1", "train.max_steps_per_epoch=2", "train.precision=fp32",
            "embedding.places_per_batch=2", "embedding.photos_per_place=2", "train.batch_size=4",
            "embedding.pos_radius_m=25", "index.place_mean_m=0"]
    r = geoloc("train", "embedding", "--data", str(split), "--out", str(tmp_path / "run"),
               *[a for s in tiny for a in ("--set", s)])
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["positives"] == "geodesic" and info["streets"] == str(city / "streets.graphml")  # found beside
    assert geoloc("index", "build", "--run", str(tmp_path / "run")).returncode == 0
    rows = read_rows(split)
    test = next(row for row in rows if row["split"] == "test")
    r = geoloc("query", "--run", str(tmp_path / "run"), "--json", str(city / test["path"]))
    assert r.returncode == 0, r.stderr[-2000:]
    answer = json.loads(r.stdout)[0]
    assert answer["neighbours"] and abs(answer["lat"] - CENTRE[0]) < 0.01 and abs(answer["lon"] - CENTRE[1]) < 0.01
    # a held-out drive as a route, matched on the fetched streets
    drive = [row for row in rows if row["sequence"] == test["sequence"]]
    (city / "drive.csv").write_text("path,date\n" + "".join(f"{city / row['path']},{row['date']}\n" for row in drive))
    r = geoloc("query", "--run", str(tmp_path / "run"), "--route", str(city / "drive.csv"), "--route-out",
               str(tmp_path / "route.geojson"))
    assert r.returncode == 0, r.stderr[-2000:]
    route = json.loads((tmp_path / "route.geojson").read_text())
    assert sum(f["geometry"]["type"] == "Point" for f in route["features"]) == len(drive)
    assert route["distance"] == "geodesic" and any(f["geometry"]["type"] == "LineString" for f in route["features"])
