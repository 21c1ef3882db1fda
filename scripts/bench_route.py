"""Route decoding against single photos, on rendered camera walks (`geoloc synth render --routes`).

Each walk of routes.csv is cut into windows of L photos taken every S-th photo (so one render at 10 m
steps gives 10, 20, 30 m steps); each window is decoded on its own (retrieval.answering.route.decode, as
Locator.locate_route does) with walking-distance (geodesic) and straight-line (euclidean) steps. Per
(L, S): per-photo acc@25m and median error of the single-photo vote, of both decodes, the candidate-set
ceiling (share of photos with one of their route.k candidates within 25 m), milliseconds of decoding
per photo, and paired bootstrap 95% CIs over windows (retrieval.metrics.paired_bootstrap on per-window
hit rates: photos of one window are not independent) of geodesic - euclidean and geodesic - single.

    .venv/bin/python scripts/bench_route.py --run RUN --routes DATA/routes.csv --lengths 5 10 20 --strides 1 3 \
        [--streets GRAPH] [--no-times] [--set route.temperature=0.02] [--out route_bench.json]

--no-times drops the capture times (every step expected at route.step_m). The embedding is run once
over every photo of routes.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from retrieval.answering.locator import Locator
from retrieval.answering.route import decode, read_route_list
from retrieval.answering.vote import vote
from retrieval.config import load_config
from retrieval.data.manifests import read_manifest
from retrieval.files import atomic_write_json
from retrieval.learning.transforms import decode_images
from retrieval.metrics import errors_m, paired_bootstrap

HIT_M = 25.0


def windows(groups: np.ndarray, times: np.ndarray, length: int, stride: int) -> list[np.ndarray]:
    """Row numbers of consecutive windows of `length` photos, every `stride`-th photo of each walk."""
    out = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        rows = rows[np.argsort(times[rows], kind="stable")][::stride]
        out += [rows[i:i + length] for i in range(0, len(rows) - length + 1, length)]
    return out


def arm(name, wins, lat, lon, true_lat, true_lon) -> dict:
    err = np.concatenate([errors_m(lat[w], lon[w], true_lat[w], true_lon[w]) for w in wins])
    return {f"{name}_acc@25m": float(np.mean(err <= HIT_M)), f"{name}_median_m": float(np.median(err))}


def per_window_hits(wins, lat, lon, true_lat, true_lon) -> np.ndarray:
    return np.array([np.mean(errors_m(lat[w], lon[w], true_lat[w], true_lon[w]) <= HIT_M) for w in wins])


def decode_windows(wins, ids, sims, lat, lon, seconds, single, p, walks) -> tuple[np.ndarray, np.ndarray, float]:
    """Each photo's position decoded within its window (lat, lon over all rows; NaN outside windows)."""
    out_lat, out_lon = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
    t0 = time.perf_counter()
    for w in wins:
        d = decode(ids[w], sims[w], lat[w], lon[w], seconds[w], p, walks)
        out_lat[w], out_lon[w] = d.positions(lat[w], lon[w], single[0][w], single[1][w])
    return out_lat, out_lon, 1e3 * (time.perf_counter() - t0) / max(sum(len(w) for w in wins), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="A trained embedding run with an index.")
    ap.add_argument("--routes", type=Path, required=True, help="routes.csv of `geoloc synth render --routes`.")
    ap.add_argument("--lengths", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--strides", type=int, nargs="+", default=[1, 3], help="Every S-th photo of a walk.")
    ap.add_argument("--streets", type=Path, help="Street graph of the routes' city (default: the run's).")
    ap.add_argument("--no-times", action="store_true", help="Decode without capture times.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (route.*).")
    ap.add_argument("--out", type=Path, help="JSON of the rows.")
    args = ap.parse_args()
    print(HEADER)
    cfg = load_config(args.run / "config.yaml", args.overrides)
    loc = Locator.load(args.run, cfg)
    m = read_manifest(args.routes)
    _, times, _, groups = read_route_list(args.routes)
    seconds = np.full(len(m), np.nan) if args.no_times else (times - times.min()).astype(np.float64)
    sims, ids = loc.neighbours(decode_images(m, cfg.data.resize, "decode routes"), max(cfg.route.k, cfg.index.k))
    lat, lon = loc.positions(ids)
    kv = cfg.index.k  # the single-photo answer, as Locator.locate votes
    v = vote(lat[:, :kv], lon[:, :kv], np.where(ids < 0, np.nan, sims)[:, :kv], loc.mode, cfg.index.vote_radius_m)
    ids, sims, lat, lon = (a[:, :cfg.route.k] for a in (ids, sims, lat, lon))
    near = np.nan_to_num(errors_m(lat, lon, m.lat[:, None], m.lon[:, None]), nan=np.inf) <= HIT_M
    walks = loc.street_walks(args.streets)
    arms = {d: dataclasses.replace(cfg.route, distance=d) for d in ("geodesic", "euclidean")}
    rows = []
    for length in args.lengths:
        for stride in args.strides:
            wins = windows(groups, times, length, stride)
            if not wins:
                print(f"L={length} S={stride}: no walk has {length} photos at that stride")
                continue
            every = np.concatenate(wins)
            step = np.concatenate([errors_m(m.lat[w[:-1]], m.lon[w[:-1]], m.lat[w[1:]], m.lon[w[1:]]) for w in wins])
            row = {"length": length, "stride": stride, "step_m": round(float(np.median(step)), 1) if len(step) else 0.0,
                   "windows": len(wins), "photos": len(every), "ceiling": float(near[every].any(axis=1).mean()),
                   **arm("single", wins, v.lat, v.lon, m.lat, m.lon)}
            hits = {"single": per_window_hits(wins, v.lat, v.lon, m.lat, m.lon)}
            for name, p in arms.items():
                a, b, ms = decode_windows(wins, ids, sims, lat, lon, seconds, (v.lat, v.lon), p,
                                          walks if name == "geodesic" else None)
                row.update(arm(name, wins, a, b, m.lat, m.lon), **{f"{name}_ms_per_photo": round(ms, 2)})
                hits[name] = per_window_hits(wins, a, b, m.lat, m.lon)
            for x, y in (("geodesic", "euclidean"), ("geodesic", "single")):
                mean, lo, hi = paired_bootstrap(hits[x], hits[y])
                row[f"{x}-{y}"] = [round(mean, 4), round(lo, 4), round(hi, 4)]
            rows.append(row)
            print(table_row(row), flush=True)
    if args.out:
        atomic_write_json(args.out, {"run": str(args.run), "routes": str(args.routes), "no_times": args.no_times,
                                     "route": dataclasses.asdict(cfg.route), "vote": loc.mode, "rows": rows})


HEADER = ("| L | step | windows | ceiling | single acc@25 / median | route geodesic | route euclidean | "
          "geo - euc (95% CI) | geo - single (95% CI) | decode ms/photo |")


def table_row(r: dict) -> str:
    def acc(name):
        return f"{r[f'{name}_acc@25m']:.1%} / {r[f'{name}_median_m']:.0f} m"

    def ci(key):
        mean, lo, hi = r[key]
        return f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"

    return (f"| {r['length']} | {r['step_m']:.0f} m | {r['windows']} | {r['ceiling']:.1%} | {acc('single')} | "
            f"{acc('geodesic')} | {acc('euclidean')} | {ci('geodesic-euclidean')} | {ci('geodesic-single')} | "
            f"{r['geodesic_ms_per_photo']:.1f} |")


if __name__ == "__main__":
    main()
