"""Prediction images (`geoloc evaluate --save-predictions N`): for the worst, the best and a random
sample of an embedding run's test photos, the query beside the database photos it was matched with,
each marked by its distance from the truth, and one self-contained HTML page linking them, in
RUN/predictions/. They show *why* a photo went wrong: which places the model confuses. A run with the
geometric rerank (index.rerank) also gets, per photo, its matched local features with the answer's
photo and with the truth's nearest database view: a picture is how a user trusts a geometric check."""
from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retrieval import GeolocError  # noqa: E402
from retrieval.answering.geometry import inliers, matched_points  # noqa: E402
from retrieval.answering.index import load_index  # noqa: E402
from retrieval.answering.local_features import LocalStore, matching_image  # noqa: E402
from retrieval.answering.rerank import query_features  # noqa: E402
from retrieval.data.manifests import load_rgb  # noqa: E402
from retrieval.files import atomic_write, atomic_write_text  # noqa: E402
from retrieval.geo import haversine_m  # noqa: E402
from retrieval.run import Run, load_run_config

PAGE = "index.html"
NEAR_M = 25.0  # the recall radius: a neighbour this close to the truth shows the right place
GREEN, RED = "#2e7d32", "#c62828"
PANEL_PX = 256  # photos are shrunk to this side before drawing: a figure never holds full-size photos
LABELS = {"worst": "Worst: the largest errors", "best": "Best: the smallest errors",
          "random": "Random: a sample of the others"}


@dataclass
class Shown:
    """One test photo drawn: its row in predictions.csv, which group it stands in, and its rank there."""
    row: int
    label: str
    rank: int


def pick(errors: np.ndarray, n: int, seed: int = 0) -> list[Shown]:
    """n test photos: a third with the largest errors (worst first), a third with the smallest (best
    first), the rest drawn at random from the others (in test order); each photo once."""
    errors = np.asarray(errors, dtype=float)
    n = min(n, len(errors))
    n_worst, n_best = (n + 2) // 3, (n + 1) // 3
    order = np.argsort(np.where(np.isnan(errors), np.inf, errors), kind="stable")
    worst = order[::-1][:n_worst]
    best = [i for i in order if i not in set(worst.tolist())][:n_best]
    rest = np.setdiff1d(np.arange(len(errors)), np.concatenate([worst, best]).astype(int))
    sample = np.sort(np.random.default_rng(seed).choice(rest, n - n_worst - n_best, replace=False))
    return [Shown(int(r), label, i + 1) for label, rows in (("worst", worst), ("best", best), ("random", sample))
            for i, r in enumerate(rows)]


def _photo(path: str) -> np.ndarray | None:
    try:
        image = load_rgb(path)
    except GeolocError:
        return None
    image.thumbnail((PANEL_PX, PANEL_PX))
    return np.asarray(image)


def _panel(ax, path: str, title: str, colour: str, size: float = 8) -> None:
    photo = _photo(path)
    if photo is None:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", color="0.5", transform=ax.transAxes)
    else:
        ax.imshow(photo)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    ax.set_title(title, color=colour, fontsize=size)


def prediction_png(query: str, heading: str, answer: str, answer_ok: bool,
                   neighbours: list[tuple[str, float]], out: Path) -> Path:
    """The query photo (left) and its neighbours best first, each titled with its distance from the
    truth: green within NEAR_M, red beyond. heading names the photo; answer gives its error and confidence."""
    rows = 1 if len(neighbours) <= 5 else 2  # k = 10 (index.k's default) draws two rows of five
    cols = max(1, math.ceil(len(neighbours) / rows))
    fig = plt.figure(figsize=(1.8 * (cols + rows), 2.0 * rows + 0.6))
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[rows] + [1] * cols, wspace=0.08, hspace=0.3)
    _panel(fig.add_subplot(grid[:, 0]), query, answer, GREEN if answer_ok else RED, size=10)
    for j, (path, dist) in enumerate(neighbours):
        _panel(fig.add_subplot(grid[j // cols, 1 + j % cols]), path, f"#{j + 1}  {dist:,.0f} m from truth",
               GREEN if dist <= NEAR_M else RED)
    fig.suptitle(heading, fontsize=11, x=0.01, ha="left")

    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")

    try:
        return atomic_write(out, write)
    finally:
        plt.close(fig)


def _grey(path: str, size: int) -> np.ndarray:
    try:
        return matching_image(load_rgb(path), size)
    except GeolocError:
        return np.zeros((size // 2, size), np.uint8)


def matches_png(query: str, q: tuple, pairs: list[tuple[str, str, tuple]], cfg, out: Path) -> Path:
    """One row per (title, database photo, its stored features): the query (its features q) and that photo
    side by side at the matching size, the inlier matches drawn as lines between them."""
    fig, axes = plt.subplots(len(pairs), 1, figsize=(8, 3.2 * len(pairs)), squeeze=False)
    for ax, (title, path, feats) in zip(axes[:, 0], pairs):
        a, b = _grey(query, cfg.rerank.size), _grey(path, cfg.rerank.size)
        h = max(a.shape[0], b.shape[0])
        canvas = np.zeros((h, a.shape[1] + b.shape[1]), np.uint8)
        canvas[:a.shape[0], :a.shape[1]], canvas[:b.shape[0], a.shape[1]:] = a, b
        pa, pb = matched_points(q, feats, cfg.rerank.ratio)
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=255)
        for (x0, y0), (x1, y1) in zip(pa, pb):
            ax.plot([x0, x1 + a.shape[1]], [y0, y1], "-", color="#fdd835", lw=0.6, alpha=0.8)
        ax.set_title(f"{title}: {len(pa)} inliers  (query left, {Path(path).name} right)", fontsize=9)
        ax.axis("off")

    return _save(fig, out)


def _read_predictions(run: Path) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """predictions.csv's rows and predictions.npz's neighbour ids and confidences, checked to match."""
    csv_path, npz_path = Run(run).predictions_csv, Run(run).predictions_npz
    for p in (csv_path, npz_path):
        if not p.is_file():
            raise GeolocError(f"{p}: missing; run `geoloc evaluate --run {run}` first")
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with np.load(npz_path, allow_pickle=False) as z:
        if "neighbour_ids" not in z.files:
            raise GeolocError(f"{npz_path}: no neighbour_ids: only embedding runs have neighbours to show")
        ids, conf = z["neighbour_ids"], z["confidence"]
    if len(ids) != len(rows) or len(conf) != len(rows):
        raise GeolocError(f"{npz_path}: {len(ids)} photos but {csv_path.name} has {len(rows)}; "
                          f"run `geoloc evaluate --run {run}` again")
    return rows, ids, conf


def save_predictions(run_dir: str | Path, n: int, seed: int = 0) -> Path:
    """Draw n test photos of an evaluated embedding run (see pick) into RUN/predictions/ with an
    index.html linking them; returns the page. Images of an earlier call that this one does not redraw
    are removed, so the page and the folder agree."""
    run = Path(run_dir)
    if n < 1:
        raise GeolocError(f"--save-predictions {n}: draw at least 1 photo")
    rows, ids, conf = _read_predictions(run)
    cfg = load_run_config(run)
    k = cfg.index.k
    _, side = load_index(run / Run.INDEX_DIR)
    if ids.size and ids.max() >= len(side.paths):
        raise GeolocError(f"{run / 'predictions.npz'}: neighbour ids beyond the {len(side.paths)} photos of "
                          f"{Run(run).index_dir}; run `geoloc evaluate --run {run}` again")
    out = Run(run).predictions_dir
    local = Run(run).local_dir
    store = LocalStore(local) if cfg.index.rerank != "off" and local.is_dir() else None
    errors = np.array([float(r["error_m"]) for r in rows])
    shown = pick(errors, n, seed)
    written, items = set(), []
    for s in shown:
        r, nb = rows[s.row], [j for j in ids[s.row, :k] if j >= 0]
        t_lat, t_lon = float(r["true_lat"]), float(r["true_lon"])
        dist = haversine_m(side.lat[nb], side.lon[nb], t_lat, t_lon)
        name = f"{s.label}_{s.rank:02d}.png"
        caption = (f"error {errors[s.row]:,.0f} m, confidence {conf[s.row]:.2f}; "
                   f"{int((dist <= NEAR_M).sum())} of {len(nb)} neighbours within {NEAR_M:g} m of the truth")
        prediction_png(r["path"], f"{s.label} #{s.rank}: {Path(r['path']).name}  ({caption})",
                       f"query: error {errors[s.row]:,.0f} m, confidence {conf[s.row]:.2f}",
                       bool(errors[s.row] <= NEAR_M), [(side.paths[j], float(d)) for j, d in zip(nb, dist)],
                       out / name)
        written.add(name)
        if store is not None and nb:
            # of the database views nearest the truth (they may face anywhere), the one that matches best
            near = np.argsort(haversine_m(side.lat, side.lon, t_lat, t_lon))[:8]
            q = query_features(load_rgb(r["path"]), cfg)
            truth = max(near, key=lambda j: inliers(q, store.features(int(j)), cfg.rerank.ratio))
            pairs = [("the answer's first neighbour", side.paths[nb[0]], store.features(nb[0])),
                     ("the best-matching database view near the truth", side.paths[truth], store.features(truth))]
            matches_png(r["path"], q, pairs, cfg, out / name.replace(".png", "_matches.png"))
            written.add(name.replace(".png", "_matches.png"))
        items.append((s, name, r["path"], caption))
    for old in out.glob("*.png"):
        if old.name not in written:
            old.unlink()
    return atomic_write_text(out / PAGE, _page(run, items, len(rows)))


def _page(run: Path, items: list, n_test: int) -> str:
    parts = [f"<h1>Predictions of {html.escape(run.name)}</h1>",
             f"<p>{len(items)} of {n_test} test photos. Each image: the query (left, its answer's error and "
             f"confidence) and its nearest database photos, best first, with their distance from the true "
             f"position: <span style='color:{GREEN}'>green within {NEAR_M:g} m</span>, "
             f"<span style='color:{RED}'>red beyond</span>.</p>"]
    for label, title in LABELS.items():
        group = [it for it in items if it[0].label == label]
        if not group:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for s, name, path, caption in group:
            matches = name.replace(".png", "_matches.png")
            extra = (f" <a href='{matches}'>matched local features</a>" if (Run(run).predictions_dir / matches).is_file()
                     else "")
            parts.append(f"<figure><a href='{name}'><img src='{name}' alt='{html.escape(label)} {s.rank}'></a>"
                         f"<figcaption><b>{html.escape(label)} #{s.rank}</b> {html.escape(Path(path).name)}: "
                         f"{html.escape(caption)}{extra}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>Predictions of {html.escape(run.name)}</title><style>"
            "body{font:14px sans-serif;margin:16px;color:#222} figure{margin:0 0 18px}"
            "img{max-width:100%;border:1px solid #ddd} figcaption{color:#444}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
