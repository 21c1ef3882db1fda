"""`geoloc serve` under measurement, on 127.0.0.1 only, with bounded loops:

1. upload-to-answer time of 20 photos, one request each, against Locator.locate's own time for the same
   files in this process (the server's overhead: HTTP, multipart, the upload checks, JSON);
2. bad uploads, one each: the status and the message the page shows, and a good photo answered after;
3. rounds of 50 concurrent uploads: how many were answered, how many refused (with which status), none
   lost; the server's resident memory before and after each round.

    python scripts/bench_serve.py [--run RUN] [--out benchmarks/serve/bench_serve.json]

Without --run it builds a run with the demo's network (an untrained ResNet-18 at 48 px: the time per
photo is a trained one's) over a rendered 600 m city of 400 views, and uploads 1024 x 768 JPEGs made
from the city's test views (a phone photo's size after a messenger's compression).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import requests
import torch
from PIL import Image

from retrieval.answering.locator import Locator
from retrieval.answering.run_index import build_run_index
from retrieval.config import load_config
from retrieval.data.manifests import read_manifest
from retrieval.learning.models import embedding_net
from retrieval.run import prepare_run_dir
from retrieval.synth.cameras import render_dataset
from retrieval.synth.city import write_demo_city

PHOTOS, CONCURRENT, ROUNDS = 20, 50, 3
REPO = Path(__file__).resolve().parents[1]


def build_run(root: Path) -> tuple[Path, list[Path]]:
    osm = write_demo_city(root / "city.osm", seed=0, size_m=600)
    render_dataset(osm, root / "data", n_train=400, n_test=PHOTOS, size=73, seed=0, workers=2)
    run = root / "run"
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "data.resize=55", "data.image_size=48",
                             "index.vote=pool", f"data.train={root / 'data'}"], base={"name": "embedding"})
    prepare_run_dir(run, cfg)
    torch.manual_seed(0)
    torch.save({"model": embedding_net("none", cfg.model.embed_dim, arch="resnet18").state_dict()}, run / "best.pt")
    build_run_index(run, cfg, db=read_manifest(root / "data" / "train.csv"))
    photos = []
    for i, p in enumerate(read_manifest(root / "data" / "test.csv").paths):
        out = root / "uploads" / f"photo_{i:02d}.jpg"
        out.parent.mkdir(exist_ok=True)
        Image.open(p).convert("RGB").resize((1024, 768), Image.BICUBIC).save(out, quality=90)
        photos.append(out)
    return run, photos


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(run: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--run", str(run), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):  # at most 2 minutes to load the model and the map
        try:
            if requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("error: the server did not answer within 2 minutes")


def post(url: str, photo: Path) -> tuple[float, requests.Response]:
    data = photo.read_bytes()
    t0 = time.perf_counter()
    r = requests.post(f"{url}/api/locate", files={"photo": (photo.name, data)}, timeout=120)
    return 1000 * (time.perf_counter() - t0), r


def latency(url: str, run: Path, photos: list[Path]) -> dict:
    loc = Locator.load(run)
    for p in photos[:3]:  # warm both: first calls allocate
        loc.locate(p)
        post(url, p)
    own, http = [], []
    for p in photos:
        t0 = time.perf_counter()
        loc.locate(p)
        own.append(1000 * (time.perf_counter() - t0))
        ms, r = post(url, p)
        assert r.status_code == 200, r.text
        http.append(ms)
    del loc
    over = [h - o for h, o in zip(http, own)]
    return {"photos": len(photos), "upload_to_answer_ms_median": round(statistics.median(http), 1),
            "locator_locate_ms_median": round(statistics.median(own), 1),
            "overhead_ms_median": round(statistics.median(over), 1), "overhead_ms_max": round(max(over), 1)}


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def bad_uploads(url: str, good: Path) -> list[dict]:
    cases = {"notes.jpg (text)": b"not a photo, my holiday notes", "cut.jpg (first 2 kB of a JPEG)": good.read_bytes()[:2048],
             "big.jpg (21 MB)": os.urandom(21 * 2**20), "dot.png (1 x 1 px)": png((1, 1)),
             "huge.png (15000 x 15000 px)": png((15000, 15000), "1"), "large.png (9000 x 9000 px)": png((9000, 9000), "1")}
    out = []
    for what, data in cases.items():
        r = requests.post(f"{url}/api/locate", files={"photo": (what.split()[0], data)}, timeout=120)
        body = r.json()
        after = post(url, good)[1].status_code
        out.append({"upload": what, "status": r.status_code,
                    "message": body["error"] if isinstance(body, dict) else body[0]["error"], "next_good_upload": after})
    return out


def load_round(url: str, photos: list[Path]) -> dict:
    gate = Barrier(CONCURRENT)

    def one(i: int):
        photo = photos[i % len(photos)]
        gate.wait(timeout=60)  # all 50 sent together
        try:
            ms, r = post(url, photo)
            ok = r.status_code == 200 and r.json()[0]["path"] == photo.name
            return r.status_code, ms, ok
        except requests.RequestException as exc:
            return type(exc).__name__, 0.0, False

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(one, range(CONCURRENT)))
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    answered = [ms for status, ms, ok in results if status == 200 and ok]
    return {"sent": CONCURRENT, "statuses": statuses, "answered": len(answered),
            "refused": sum(1 for s, _, _ in results if isinstance(s, int) and s != 200),
            "lost": sum(1 for s, _, _ in results if not isinstance(s, int)),
            "slowest_ms": round(max(answered, default=0.0), 0), "wall_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a trained embedding run with an index (default: build one)")
    ap.add_argument("--photos", type=Path, nargs="*", help="photos to upload (default: the built run's)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, photos = build_run(Path(tmp)) if a.run is None else (a.run, a.photos)
        if not photos:
            sys.exit("error: --run needs --photos to upload")
        photos = (photos * PHOTOS)[:PHOTOS]
        server = start_server(run, a.port)
        url = f"http://127.0.0.1:{a.port}"
        try:
            figures = {"latency": latency(url, run, photos), "bad_uploads": bad_uploads(url, photos[0]),
                       "rss_mb_before_load": round(rss_mb(server.pid), 1), "load": []}
            for _ in range(ROUNDS):
                figures["load"].append({**load_round(url, photos), "rss_mb_after": round(rss_mb(server.pid), 1)})
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(figures, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
