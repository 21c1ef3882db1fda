"""Benchmark the street-view renderer: images per second at 224 and 128 px, 2 worker processes.

    .venv/bin/python scripts/bench_render.py --osm ../shared/data/osm/london_city.osm.bz2 --views 1000

Without --osm it renders the procedural demo city. Reports, from one run: scene build time, the
median single-process time per image (ray casting + finishing, no JPEG; wall clock and CPU time), and
the end-to-end rate of render_views (ray casting, JPEG encoding, atomic writes) with --workers
processes (0: skip it), by the wall clock and by the workers' CPU time (what the rate would be if each worker had
a core to itself: the figure to compare when other jobs share the machine). Load averages are printed
so a shared machine shows.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--osm", type=Path, default=None, help="OSM extract (default: the demo city)")
    ap.add_argument("--views", type=int, default=1000, help="views per size for the throughput run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    ap.add_argument("--workers", type=int, default=2, help="processes for the end-to-end run (0: skip it)")
    ap.add_argument("--single", type=int, default=100, help="views timed one by one for the median")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from retrieval.synth.cameras import render_views, sample_views
    from retrieval.synth.city import write_demo_city
    from retrieval.synth.osm import load_city
    from retrieval.synth.render import Renderer
    from retrieval.synth.scene import world_from_city

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        osm = args.osm or write_demo_city(tmp / "city.osm", seed=args.seed)
        t0 = time.perf_counter()
        city = load_city(osm)
        t1 = time.perf_counter()
        world = world_from_city(city)
        t2 = time.perf_counter()
        print(f"# {osm.name}: {len(world.buildings)} buildings, {len(world.walls)} wall segments, "
              f"{len(world.trees)} trees; OSM load {t1 - t0:.1f} s, scene build {t2 - t1:.1f} s")
        print(f"# {_cpu_model()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
        print(f"# load average before: {os.getloadavg()[0]:.2f}")
        print("| size | median ms/image, 1 process (wall / CPU; no JPEG) | img/s, 1 process (wall) | "
              f"img/s end to end, {args.workers} workers (wall) | same, by workers' CPU time | views |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes:
            views = sample_views(world, "test", args.views, None, args.seed, size=size)
            rend = Renderer(world)
            rend.render(views[0].camera, views[0].look)  # compile (or load numba's cache)
            wall, cpu = [], []
            for v in views[: args.single]:
                s, c = time.perf_counter(), time.process_time()
                rend.render(v.camera, v.look)
                wall.append(time.perf_counter() - s)
                cpu.append(time.process_time() - c)
            med, med_cpu = statistics.median(wall), statistics.median(cpu)
            if args.workers < 1:
                print(f"| {size} | {med * 1000:.2f} / {med_cpu * 1000:.2f} | {1 / med:.0f} | - | - | {len(wall)} |")
                continue
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            s = time.perf_counter()
            n = render_views(world, views, tmp / f"img{size}", workers=args.workers, desc=f"{size}px")
            rate = n / (time.perf_counter() - s)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
            cpu_rate = n / (cpu_s / args.workers) if cpu_s > 0 else float("nan")
            print(f"| {size} | {med * 1000:.2f} / {med_cpu * 1000:.2f} | {1 / med:.0f} | {rate:.0f} | "
                  f"{cpu_rate:.0f} | {n} |")
        print(f"# load average after: {os.getloadavg()[0]:.2f}")
        if args.workers >= 1:
            sizes = np.array([p.stat().st_size for p in (tmp / f"img{args.sizes[0]}").glob("*.jpg")])
            print(f"# mean JPEG size at {args.sizes[0]} px: {sizes.mean() / 1024:.1f} KiB")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
