"""`geoloc data fetch panoramax` against a real local GeoVisio: throughput by size and concurrency, a resume
after kill -9, and the sequence split's counts on what was fetched.

    .venv/bin/python benchmarks/fetch/throughput.py --out benchmarks/fetch/throughput.json

The server is the test suite's (tests/test_fetch_geovisio.py: GeoVisio from ~/.cache/geoloc-geovisio, its own
PostgreSQL + PostGIS cluster in a temporary folder) and shares the machine's cores with the fetch, as a
user's laptop would not: the figures bound a fetch from a fast local server, not from the internet.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.test_fetch_geovisio import BBOX, CENTRE, T0, Server, exif_jpeg, upload  # noqa: E402

SIZES, CONCURRENCY, REPEATS = ("thumb", "sd", "hd"), (1, 4, 8), 3


def pictures(width: int, height: int):
    """150 pictures in 10 drives of 15 by 6 authors. Twins by the issue's rules: ann's two drives start 30 s
    apart (one author within 60 s); ben's second drive and cat's first pass the same 15 places 2 minutes apart
    (within 10 m and 5 minutes); the rest are apart in time or place."""
    drives = (("ann-1", "ann", 0.0000, 0, 0), ("ann-2", "ann", 0.0004, 45 + 30, 0),
              ("ben-1", "ben", 0.0008, 3600, 0), ("ben-2", "ben", 0.0012, 7200, 0),
              ("cat-1", "cat", 0.0012, 7200 + 120, 0.00003), ("cat-2", "cat", -0.0004, 10800, 0),
              ("dan-1", "dan", -0.0008, 14400, 0), ("dan-2", "dan", -0.0012, 86400, 0),
              ("eve-1", "eve", -0.0016, 18000, 0), ("fay-1", "fay", 0.0016, 21600, 0))
    seqs = {}
    for i, (name, author, dlat, start, jitter) in enumerate(drives):
        rows = []
        for k in range(15):
            lat, lon = CENTRE[0] + dlat + jitter, CENTRE[1] - 0.0025 + 0.00006 * k  # 5 m apart, heading east
            when = T0 + np.timedelta64(start + 3 * k, "s")
            jpeg = exif_jpeg(lat, lon, when, 90.0, author, seed=100 * i + k)
            rows.append((_resized(jpeg, width, height), {}, None))
        seqs[name] = rows
    return seqs


def _resized(jpeg: bytes, width: int, height: int) -> bytes:
    """The test's 320 x 240 picture scaled to the benchmark's size, its EXIF kept."""
    from PIL import Image

    im = Image.open(io.BytesIO(jpeg))
    exif = im.getexif()
    buf = io.BytesIO()
    im.resize((width, height), Image.BILINEAR).save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


def geoloc(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrieval.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def fetch_args(api: str, out: Path, size: str, concurrency: int) -> list[str]:
    return ["data", "fetch", "panoramax", "--api", api, "--bbox", BBOX, "--out", str(out), "--no-streets",
            "--size", size, "--concurrency", str(concurrency)]


def timed_fetch(api: str, out: Path, size: str, concurrency: int) -> dict:
    t = time.perf_counter()
    r = geoloc(*fetch_args(api, out, size, concurrency))
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    rate = float(re.search(r"([0-9.]+) pictures/s", r.stdout).group(1))
    fetched = int(re.search(r"\((\d+) fetched now", r.stdout).group(1))
    return dict(downloads_per_s=rate, command_s=wall, fetched=fetched)


def resume_check(api: str, root: Path, clean: Path) -> dict:
    """kill -9 at about a third and two thirds of the pictures, then run to the end: the manifest must equal
    the uninterrupted fetch's."""
    out, state = root / "killed", root / "killed" / "fetch-state.jsonl"
    done_at_kill = []
    for target in (50, 100):
        p = subprocess.Popen([sys.executable, "-m", "retrieval.cli", *fetch_args(api, out, "sd", 4)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        while p.poll() is None and (len(state.read_text().splitlines()) if state.is_file() else 0) < target:
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        done_at_kill.append(len(state.read_text().splitlines()))
    r = geoloc(*fetch_args(api, out, "sd", 4))
    already = int(re.search(r"(\d+) by an earlier run", r.stdout).group(1))
    same = (out / "photos.csv").read_text() == (clean / "photos.csv").read_text()
    return dict(done_at_kills=done_at_kill, resumed_with_already=already, manifest_equals_uninterrupted=same,
                leftover_tmp=len(list(out.rglob("*.tmp"))))


def _split(city: Path, out: Path, mode: str) -> None:
    r = geoloc("data", "split", str(city / "photos.csv"), "--out", str(out), "--mode", mode, "--val", "0.2",
               "--test", "0.2")
    if r.returncode != 0:
        raise RuntimeError(r.stderr)


def split_counts(city: Path, ids: dict[str, str]) -> dict:
    split = city / "split.csv"
    _split(city, split, "sequence")
    with open(split, newline="") as f:
        rows = list(csv.DictReader(f))
    sides = {}
    for row in rows:
        sides.setdefault(row["split"], {"photos": 0, "sequences": set()})
        sides[row["split"]]["photos"] += 1
        sides[row["split"]]["sequences"].add(row["sequence"])
    side_of_seq = {}
    for row in rows:
        side_of_seq.setdefault(row["sequence"], set()).add(row["split"])
    check = geoloc("data", "check", str(split))
    rand = city / "random.csv"  # the contrast: photos drawn one by one leave a drive's neighbours across splits
    _split(city, rand, "random")
    random_check = geoloc("data", "check", str(rand)).stdout.strip().splitlines()[-1]
    return dict(sides={k: {"photos": v["photos"], "sequences": len(v["sequences"])} for k, v in sorted(sides.items())},
                sequences_on_one_side=all(len(s) == 1 for s in side_of_seq.values()),
                side_of={name: "/".join(sorted(side_of_seq[i])) for name, i in ids.items()},
                check=(check.stdout + check.stderr).strip().splitlines()[-1], random_split_check=random_check)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    args = ap.parse_args()
    server = Server()
    results = dict(date=time.strftime("%Y-%m-%d %H:%M"), cpu=_cpu(), cores=os.cpu_count(),
                   picture_px=[args.width, args.height], repeats=REPEATS, runs={})
    try:
        server.start()
        seqs = pictures(args.width, args.height)
        t = time.perf_counter()
        ids = upload(server.api, seqs)
        results["upload_s"] = time.perf_counter() - t
        results["pictures"] = sum(len(v) for v in seqs.values())
        results["sequence_ids"] = ids
        root = server.root / "bench"
        for size in SIZES:
            for c in CONCURRENCY:
                runs = [timed_fetch(server.api, root / f"{size}-{c}-{k}", size, c) for k in range(REPEATS)]
                assert all(r["fetched"] == results["pictures"] for r in runs), runs
                results["runs"][f"{size}/{c}"] = dict(
                    runs=runs, median_downloads_per_s=statistics.median(r["downloads_per_s"] for r in runs),
                    median_command_s=statistics.median(r["command_s"] for r in runs))
                print(size, c, results["runs"][f"{size}/{c}"]["median_downloads_per_s"], flush=True)
        results["resume"] = resume_check(server.api, root, root / "sd-4-0")
        results["split"] = split_counts(root / "sd-4-0", ids)
    finally:
        server.close()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1))


def _cpu() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    main()
