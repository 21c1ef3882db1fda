"""Benchmark geodesic neighbour sets: snapping + all pairs within a radius, against a networkx loop.

    .venv/bin/python scripts/bench_geodesic.py            # as in benchmarks/RESULTS.md
    .venv/bin/python scripts/bench_geodesic.py --photos 2000 --repeats 1

Graphs: the real City of London and Monaco extracts from ../shared/data/osm (skipped when absent), and a
synthetic jittered grid of ~5,000 nodes (71 x 71, 40 m blocks, 15% of streets removed). Photos are placed
uniformly along the streets with 5 m of GPS-like noise. The reference is the plain approach: networkx's
single-source Dijkstra with a cutoff from every photo over the street graph with the photos spliced into
their edges (building that graph is not timed); both must give the same neighbour sets.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import networkx as nx
import numpy as np
from tqdm import tqdm

from retrieval.geo import LocalProjection
from retrieval.data.streets import (StreetGraph, euclidean_neighbours, geodesic_neighbours, load_graph,
                               photos_along_streets, snap_photos, spliced_networkx_graph)

SHARED_OSM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "osm"


def grid_graph(side: int = 71, block_m: float = 40.0, drop: float = 0.15, seed: int = 0) -> StreetGraph:
    rng = np.random.default_rng(seed)
    proj = LocalProjection(51.5138, -0.0984)
    x0, y0 = proj.to_xy(51.5138, -0.0984)
    G = nx.MultiDiGraph(crs="epsg:4326")
    ij = [(i, j) for i in range(side) for j in range(side)]
    xy = np.array(ij, dtype=float) * block_m + rng.uniform(-8, 8, (len(ij), 2))
    lat, lon = proj.to_latlon(x0 + xy[:, 0], y0 + xy[:, 1])
    for n, (la, lo) in enumerate(zip(lat, lon)):
        G.add_node(n, x=float(lo), y=float(la))
    osmid = 0
    for n, (i, j) in enumerate(ij):
        for di, dj in ((1, 0), (0, 1)):
            if i + di < side and j + dj < side and rng.random() >= drop:
                G.add_edge(n, n + di * side + dj, osmid=osmid, highway="residential")
                osmid += 1
    return StreetGraph.from_networkx(G)


def networkx_loop(H: nx.Graph, photos: np.ndarray, radius: float) -> dict:
    out = {}
    for p in tqdm(photos, desc="networkx single-source loop", leave=False):
        dist = nx.single_source_dijkstra_path_length(H, ("photo", int(p)), cutoff=radius, weight="w")
        out[int(p)] = {n[1]: d for n, d in dist.items() if isinstance(n, tuple)}
    return out


def median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def bench(name: str, load, args) -> None:
    t = time.perf_counter()
    g = load()
    t_load = time.perf_counter() - t
    rng = np.random.default_rng(0)
    lat, lon = photos_along_streets(g, args.photos, rng)
    t_snap, snap = median_time(lambda: snap_photos(g, lat, lon, args.max_snap_m), args.repeats)
    t_geo, d = median_time(lambda: geodesic_neighbours(g, snap, args.radius, progress=False), args.repeats)
    t_euc, e = median_time(lambda: euclidean_neighbours(lat, lon, args.radius, projection=g.projection),
                           args.repeats)
    H = spliced_networkx_graph(g, snap)
    kept = np.flatnonzero(snap.kept)
    t_nx, ref = median_time(lambda: networkx_loop(H, kept, args.radius), args.nx_repeats)
    agree = all(set(d[p].indices.tolist()) == set(ref[p]) and
                np.allclose(d[p].data, [ref[p][q] for q in d[p].indices.tolist()], atol=1e-6) for p in kept)
    print(f"| {name} | {len(g.nodes):,} | {len(g.length_m):,} | {g.length_m.sum() / 1000:.0f} | {args.photos:,} "
          f"({snap.excluded} excluded) | {t_load:.1f} | {t_snap:.2f} | {t_geo:.2f} | {t_snap + t_geo:.2f} | "
          f"{d.nnz / len(kept):.0f} | {e.nnz / len(lat):.0f} | {t_euc:.2f} | {t_nx:.1f} | "
          f"{t_nx / t_geo:.1f}x | {'yes' if agree else 'NO'} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=10_000)
    p.add_argument("--radius", type=float, default=250.0, help="neighbour radius, metres (neg_radius_m)")
    p.add_argument("--max-snap-m", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nx-repeats", type=int, default=1)
    args = p.parse_args()
    print(f"{os.cpu_count()} cpus; {args.photos:,} photos, radius {args.radius:g} m; times in seconds, median "
          f"of {args.repeats} (networkx: {args.nx_repeats})\n")
    print("| graph | nodes | edges | street km | photos | load | snap | neighbours | snap + neighbours | "
          "geodesic nbrs/photo | euclidean nbrs/photo | euclidean (cKDTree) | networkx loop | ratio | same sets |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for city in ("london_city", "monaco"):
        path = SHARED_OSM / f"{city}.osm.bz2"
        if path.is_file():
            bench(city, lambda: load_graph(path), args)
        else:
            print(f"| {city} | skipped: {path} absent |")
    bench("synthetic grid", grid_graph, args)


if __name__ == "__main__":
    main()
