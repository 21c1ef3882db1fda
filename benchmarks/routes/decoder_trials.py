"""Route decoder trials on cached candidates (session 18): route.k, the chain's settings, two dropped decoders
(pooled potentials, per-photo marginal answers) and where the k=30 decode misses with a right candidate.

    .venv/bin/python benchmarks/routes/decoder_trials.py runs/lon_scratch30 runs/london_dense/routes.csv /tmp/cands.npz

The candidates (100 per route photo) are embedded once into the .npz; every trial then decodes with numpy only.
Gathered after the fact from the session's scratch scripts, which ran the same code paths.
"""
import dataclasses
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_route import windows  # noqa: E402
from retrieval.answering.locator import Locator  # noqa: E402
from retrieval.config import load_config  # noqa: E402
from retrieval.geo import haversine_m  # noqa: E402
from retrieval.data.manifests import read_manifest  # noqa: E402
from retrieval.metrics import errors_m  # noqa: E402
from retrieval.answering.route import (decode, expected_steps, follow_scores, posteriors, read_route_list,  # noqa: E402
                             viterbi)
from retrieval.answering.vote import vote  # noqa: E402
from retrieval.learning.transforms import decode_images  # noqa: E402

run, routes, cache = (Path(a) for a in sys.argv[1:4])
cfg = load_config(run / "config.yaml", [])
loc = Locator.load(run, cfg)
m = read_manifest(routes)
_, times, _, groups = read_route_list(routes)
seconds = (times - times.min()).astype(np.float64)
if not cache.is_file():
    s, i = loc.neighbours(decode_images(m, cfg.data.resize, "decode routes"), 100)
    np.savez(cache, sims=s, ids=i)
sims, ids = np.load(cache)["sims"], np.load(cache)["ids"]
lat, lon = loc.positions(ids)
v = vote(lat[:, :cfg.index.k], lon[:, :cfg.index.k], np.where(ids < 0, np.nan, sims)[:, :cfg.index.k], loc.mode,
         cfg.index.vote_radius_m)
walks = loc.street_walks()


def near_pairs(la, lo, r):
    return np.nan_to_num(haversine_m(la[:, :, None], lo[:, :, None], la[:, None, :], lo[:, None, :]), nan=np.inf) <= r


def dropped(ids_, sims_, la, lo, sec, p, w, pool_m=0.0, marginal=False):
    """decode() with pooled potentials and/or per-photo marginal answers: the two decoders tried and dropped."""
    emit = np.where(ids_ >= 0, sims_ / p.temperature, -np.inf)
    if pool_m:
        emit = np.where(ids_ >= 0, logsumexp(np.where(near_pairs(la, lo, pool_m), emit[:, None, :], -np.inf), axis=2), -np.inf)
    step, spread = expected_steps(sec, p)
    follow = follow_scores(w.distances(ids_, step + p.break_cost * spread), step, spread, p.break_cost)
    choice, breaks, _ = viterbi(emit, follow, p.break_cost)
    if marginal:
        post = posteriors(emit, follow, p.break_cost)
        choice = (post[:, None, :] * near_pairs(la, lo, p.confidence_radius_m)).sum(axis=2).argmax(axis=1)
    seg = np.concatenate([[0], np.cumsum(breaks)])
    alone = np.bincount(seg)[seg] == 1
    rows = np.arange(len(choice))
    return np.where(alone, np.nan, la[rows, choice]), np.where(alone, np.nan, lo[rows, choice])


def trial(p, k, length, stride, **drop):
    hits, ceil, fails = [], [], np.zeros(length)
    for w in windows(groups, times, length, stride):
        args = (ids[w, :k], sims[w, :k], lat[w, :k], lon[w, :k], seconds[w], p)
        if drop:
            a, b = dropped(*args, walks, **drop)
            a, b = np.where(np.isnan(a), v.lat[w], a), np.where(np.isnan(b), v.lon[w], b)
        else:
            a, b = decode(*args, walks).positions(lat[w, :k], lon[w, :k], v.lat[w], v.lon[w])
        hit = errors_m(a, b, m.lat[w], m.lon[w]) <= 25
        held = (np.nan_to_num(errors_m(lat[w, :k], lon[w, :k], m.lat[w, None], m.lon[w, None]), nan=1e9) <= 25).any(1)
        hits.append(hit), ceil.append(held)
        fails += ~hit & held
    return np.mean(np.concatenate(hits)), np.mean(np.concatenate(ceil)), fails


def show(name, p, k, **drop):
    out = [trial(p, k, 10, s, **drop) for s in (1, 3)]
    print(f"{name:40s} k={k:3d}  10 m: {out[0][0]:.1%} (ceiling {out[0][1]:.1%})  29 m: {out[1][0]:.1%} "
          f"(ceiling {out[1][1]:.1%})", flush=True)
    return out


base = cfg.route
print("single photo:", f"{np.mean(errors_m(v.lat, v.lon, m.lat, m.lon) <= 25):.1%}")
print("k=30, 10 m steps: misses with a right candidate, by position in the window:", show("default", base, 30)[0][2])
for k in (60, 80, 100):
    show("default", base, k)
for key, values in (("temperature", (0.03, 0.07)), ("step_tol_m", (6.0, 15.0)), ("break_cost", (5.0, 12.0))):
    for x in values:
        show(f"{key}={x}", dataclasses.replace(base, **{key: x}), 100)
show("marginal answers", base, 30, marginal=True)
for r in (10.0, 20.0, 30.0):
    show(f"pooled {r:g} m", base, 30, pool_m=r)
    show(f"pooled {r:g} m + marginal", base, 30, pool_m=r, marginal=True)
for t in (0.03, 0.08):
    show(f"pooled 20 m + marginal, temperature {t}", dataclasses.replace(base, temperature=t), 30, pool_m=20.0, marginal=True)
