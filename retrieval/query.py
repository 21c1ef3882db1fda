"""Locate photos with a trained embedding run: embed, search the run's FAISS index, vote."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.config import load_run_config
from retrieval.data import IMAGE_SUFFIXES, load_rgb
from retrieval.geo import haversine_m

MIN_SIDE_PX = 32  # smaller images hold too little to locate: refused, not answered
MAX_ASPECT = 4.0  # a panorama strip or a sliver: answered from its centre crop only, with a warning


def image_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise GeolocError(f"{p}: no .jpg/.jpeg/.png images in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise GeolocError(f"{p}: no such image or folder")
    return files


def check_shape(image, path) -> str | None:
    """Refuse images too small to locate; return a warning for very elongated ones (None otherwise)."""
    w, h = image.size
    if min(w, h) < MIN_SIDE_PX:
        raise GeolocError(f"{path}: image is {w} x {h} px, too small to locate (need at least "
                          f"{MIN_SIDE_PX} px a side)")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return (f"{path}: image is {w} x {h} px (aspect {max(w, h) / min(w, h):.1f}:1): only its centre "
                "square is seen, the answer may be unreliable")
    return None


def query(run_dir: str | Path, inputs: list[Path], k: int | None = None) -> list[dict]:
    """One answer per image: lat, lon, confidence, the neighbours that voted, and the time it took
    (decode to answer; loading the model and index once is not counted). An image that cannot be
    read or is too small gets {"path", "error"} instead, and the others are still answered; a very
    elongated one is answered with a "warning"."""
    import warnings

    if k is not None and k < 1:
        raise GeolocError(f"--k {k}: at least 1 neighbour must vote")
    from retrieval.embedding import embed, open_index, resolve_vote
    from retrieval.index import search
    from retrieval.prior import CellPrior, check_complete, rerank
    from retrieval.transforms import to_cached
    from retrieval.vote import vote

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    files = image_files(inputs)
    k = k or cfg.index.k
    check_complete(run_dir, cfg)
    model, index, side = open_index(run_dir, cfg)
    mode = resolve_vote(run_dir, cfg, model, side)[0]
    prior = CellPrior.load(run_dir)
    db_class = prior.classes(side.lat, side.lon) if prior else None
    answers = []
    for path in files:
        t0 = time.perf_counter()
        try:
            image = load_rgb(path)
            warning = check_shape(image, path)
        except GeolocError as exc:
            answers.append({"path": str(path), "error": str(exc)})
            continue
        if warning:
            warnings.warn(warning, stacklevel=2)
        cached = [to_cached(image, cfg.data.resize)]
        q = embed(model, cached, cfg, "embed query")
        sims, ids = search(index, q, max(k, cfg.index.cell_prior_candidates) if prior else k)
        if prior is not None:
            sims, ids = rerank(sims, ids, prior.log_probs(cached), db_class, prior.weight)
            sims, ids = sims[:, :k], ids[:, :k]
        ok = ids[0] >= 0
        sims, ids = sims[:, ok], ids[:, ok]
        v = vote(side.lat[ids], side.lon[ids], sims, mode, cfg.index.vote_radius_m)
        ms = 1000 * (time.perf_counter() - t0)
        dist = haversine_m(v.lat[0], v.lon[0], side.lat[ids[0]], side.lon[ids[0]])
        answers.append({
            "path": str(path), "lat": float(v.lat[0]), "lon": float(v.lon[0]), "confidence": float(v.confidence[0]),
            "vote": mode, "ms": round(ms, 1), **({"warning": warning} if warning else {}),
            "neighbours": [{"path": side.paths[i], "lat": float(side.lat[i]), "lon": float(side.lon[i]),
                            "similarity": float(s), "distance_m": float(d)}
                           for i, s, d in zip(ids[0], sims[0], dist)],
        })
    return answers


def format_answer(a: dict) -> str:
    lines = [f"{a['path']}: {a['lat']:.6f}, {a['lon']:.6f}  confidence {a['confidence']:.2f}  "
             f"({a['vote']} vote, {a['ms']:.0f} ms)"]
    for n in a["neighbours"]:
        lines.append(f"    {n['similarity']:.3f}  {n['lat']:.6f}, {n['lon']:.6f}  {n['distance_m']:7.0f} m  "
                     f"{Path(n['path']).name}")
    return "\n".join(lines)


def summary(answers: list[dict]) -> str:
    ms = np.array([a["ms"] for a in answers if "error" not in a])
    bad = sum("error" in a for a in answers)
    text = f"{len(ms)} image(s)" + (f", median {np.median(ms):.0f} ms per image" if len(ms) else "")
    return text + (f"; {bad} could not be located" if bad else "")
