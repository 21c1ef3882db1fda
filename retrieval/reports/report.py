"""The comparison report: a markdown table, an error CDF, a map of errors and the study's interactive
"neighbourhood similarity" page. Everything here draws what it is given; nothing trains or evaluates."""
from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retrieval.files import atomic_write, atomic_write_text  # noqa: E402

COLUMNS = [
    ("method", "method", "{}"),
    ("backbone", "backbone", "{}"),
    ("mean_error_m", "mean err (m)", "{:.0f}"),
    ("median_error_m", "median err (m)", "{:.0f}"),
    ("acc@25m", "acc@25m", "{:.1%}"),
    ("acc@100m", "acc@100m", "{:.1%}"),
    ("acc@250m", "acc@250m", "{:.1%}"),
    ("acc@1000m", "acc@1km", "{:.1%}"),
    ("recall@1_25m", "R@1 25m", "{:.1%}"),
    ("recall@5_25m", "R@5 25m", "{:.1%}"),
    ("recall@10_25m", "R@10 25m", "{:.1%}"),
    ("facing_25m_45deg", "view within 25 m / 45°", "{:.1%}"),
    ("train_seconds", "train time (s)", "{:.0f}"),
    ("train_images_per_s", "train img/s", "{:.1f}"),
    ("model_mb", "model (MB)", "{:.1f}"),
    ("query_ms", "query (ms/img)", "{:.1f}"),
]


FLOORS = [  # metrics.json["floors"] key -> report row name
    ("constant_guess", "floor: constant guess (mean training position)"),
    ("thumbnail_knn", "floor: 16x16 thumbnail k-NN"),
    ("untrained_knn", "floor: untrained network k-NN (random weights)"),
    ("start_knn", "start: its starting weights' k-NN, before training"),
    ("oracle", "oracle: nearest training view"),
]


def floor_rows(floors: dict) -> list[dict]:
    """Report rows of the floors and the oracle (metrics.json["floors"] of any run on these test views)."""
    rows = []
    for key, name in FLOORS:
        if key in floors:
            f = floors[key]
            backbone = f"{f['arch']} ({f['weights']} weights)" if key in ("untrained_knn", "start_knn") else ""
            rows.append({"method": name, **f, "backbone": backbone})
    return rows


def versus_floors(row: dict, floors: dict) -> str:
    """One sentence: how far a method is from the floors (recall@1 against the thumbnail k-NN, or the
    share within 25 m for methods without neighbours; median error against the constant guess)."""
    thumb, const = floors["thumbnail_knn"], floors["constant_guess"]
    key = "recall@1_25m" if "recall@1_25m" in row else "acc@25m"
    ours, base = row[key], thumb["recall@1_25m"]
    ratio = f"{ours / base:.1f}x" if base > 0 else "n/a (the floor is 0)"
    what = "R@1 within 25 m" if key == "recall@1_25m" else "within 25 m"
    gain = 1 - row["median_error_m"] / const["median_error_m"]
    untrained = "".join(f"{name} {floors[k]['recall@1_25m']:.1%}, " for k, name in
                        (("untrained_knn", "untrained network"), ("start_knn", "its start")) if k in floors)
    return (f"**{row['method']}**: {what} {ours:.1%}, {ratio} the thumbnail k-NN's {base:.1%} "
            f"({untrained}oracle {floors['oracle']['recall@1_25m']:.1%}); median error "
            f"{row['median_error_m']:.0f} m, "
            f"{abs(gain):.0%} {'below' if gain >= 0 else 'above'} the constant guess's "
            f"{const['median_error_m']:.0f} m.")


def _cell(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return fmt.format(v)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if k == "method" else "---:" for k, _, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def terminal_table(rows: list[dict]) -> str:
    cells = [[title for _, title, _ in COLUMNS]] + [[_cell(r, k, f) for k, _, f in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(c)))
             for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _save_fig(fig, path: Path) -> Path:
    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")

    atomic_write(path, write)
    plt.close(fig)
    return path


def error_cdf_png(errors: dict[str, np.ndarray], path: str | Path) -> Path:
    """Cumulative share of test photos located within a distance, one curve per method."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, e in errors.items():
        e = np.sort(np.maximum(np.asarray(e, dtype=float), 0.1))
        ax.step(e, np.arange(1, len(e) + 1) / len(e), where="post", label=f"{name} (median {np.median(e):.0f} m)")
    for t in (25, 100, 250, 1000):
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("error (m, log scale)")
    ax.set_ylabel("share of test photos within error")
    ax.set_ylim(0, 1)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Cumulative error distribution")
    return _save_fig(fig, Path(path))


def learning_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], floors: dict, path: str | Path) -> Path:
    """Validation R@1 within 25 m after each epoch against the training images seen so far, one curve
    per run ({name: (images, recall)}), beside the floors' R@1 on the test views: a user sees whether
    learning was still rising when the budget ended."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (images, recall) in curves.items():
        ax.plot(np.asarray(images) / 1000, 100 * np.asarray(recall), marker="o", label=f"{name} (validation)")
    for (key, label), style in zip(FLOORS, (":", "--", "-.", "-")):
        if key in floors and key != "oracle" and "recall@1_25m" in floors[key]:
            ax.axhline(100 * floors[key]["recall@1_25m"], color="0.4", ls=style, lw=1, label=f"{label} (test)")
    ax.set_xlabel("training images seen (thousands)")
    ax.set_ylabel("R@1 within 25 m (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside: curves fill the axes
    ax.set_title("Learning: R@1 within 25 m after each epoch")
    return _save_fig(fig, Path(path))


def map_png(street_lines: list[np.ndarray], true_lonlat: np.ndarray, pred_lonlat: np.ndarray,
            errors: np.ndarray, path: str | Path, title: str = "", arrows: int = 12) -> Path:
    """Streets in grey, test cameras coloured by error, and arrows from truth to prediction for the
    photos with the largest errors (they show where the method goes wrong)."""
    fig, ax = plt.subplots(figsize=(8, 8))
    for line in street_lines:
        ax.plot(line[:, 0], line[:, 1], color="0.6", lw=0.6, zorder=1)
    errors = np.asarray(errors, dtype=float)
    sc = ax.scatter(true_lonlat[:, 0], true_lonlat[:, 1], c=np.log10(np.maximum(errors, 1)), cmap="RdYlGn_r",
                    vmin=0, vmax=3.5, s=12, zorder=3, edgecolors="k", linewidths=0.2)
    cb = fig.colorbar(sc, ax=ax, shrink=0.7)
    ticks = [1, 10, 25, 100, 250, 1000, 3000]
    cb.set_ticks(np.log10(ticks))
    cb.set_ticklabels([f"{t} m" for t in ticks])
    cb.set_label("error")
    if arrows and len(errors):
        pick = np.argsort(errors)[::-1][: arrows // 2]
        rest = np.setdiff1d(np.arange(len(errors)), pick)
        pick = np.concatenate([pick, np.random.default_rng(0).choice(rest, min(len(rest), arrows - len(pick)),
                                                                     replace=False)])
        for i in pick:
            ax.annotate("", xy=pred_lonlat[i], xytext=true_lonlat[i], zorder=4,
                        arrowprops=dict(arrowstyle="->", color="tab:blue", lw=1.0))
    ax.set_aspect(1 / np.cos(np.radians(np.mean(true_lonlat[:, 1]))))
    ax.ticklabel_format(useOffset=False)
    ax.locator_params(axis="x", nbins=5)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title or "Test cameras coloured by error; arrows: truth -> prediction")
    return _save_fig(fig, Path(path))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px sans-serif; margin: 12px; color: #222; }}
svg {{ border: 1px solid #ccc; background: #fafafa; }}
.street {{ fill: none; stroke: #999; stroke-width: 0.8; }}
.cell {{ stroke: #333; stroke-width: 0.7; fill: #ddd; fill-opacity: 0.55; }}
.cell.hovered {{ stroke: #000; stroke-width: 2.5; }}
#info {{ margin: 6px 0; min-height: 1.4em; }}
#legend {{ display: flex; align-items: center; gap: 6px; }}
#bar {{ width: 200px; height: 12px; background: linear-gradient(to right, {grad}); }}
</style></head><body>
<h2>{title}</h2>
<p>Hover a cell: every cell is coloured by the average probability the model gave it for the test photos
taken in the hovered cell. Dark cells are the places it confuses with the hovered one.</p>
<div id="legend">0 <div id="bar"></div> <span id="vmax">max</span></div>
<div id="info">&nbsp;</div>
<svg id="map" width="{w}" height="{h}" viewBox="0 0 {w} {h}">
<g>{streets}</g><g>{cells}</g>
</svg>
<p style="font-size:11px;color:#666">{attribution}</p>
<script>
const M = {matrix};
const N = {counts};
const STOPS = {stops};
function colour(t) {{
  t = Math.max(0, Math.min(1, t));
  const x = t * (STOPS.length - 1), i = Math.min(Math.floor(x), STOPS.length - 2), f = x - i;
  const a = STOPS[i], b = STOPS[i + 1];
  return `rgb(${{a.map((v, k) => Math.round(v + f * (b[k] - v))).join(",")}})`;
}}
const cells = Array.from(document.querySelectorAll(".cell"));
function show(i) {{
  cells.forEach(c => c.classList.remove("hovered"));
  cells[i].classList.add("hovered");
  const info = document.getElementById("info");
  if (!M[i]) {{
    cells.forEach(c => {{ c.style.fill = "#ddd"; }});
    info.textContent = `cell ${{i}}: no test photos taken here`;
    return;
  }}
  const vmax = Math.max(...M[i]);
  document.getElementById("vmax").textContent = vmax.toFixed(2);
  cells.forEach((c, j) => {{ c.style.fill = colour(M[i][j] / (vmax || 1)); }});
  info.textContent = `cell ${{i}}: ${{N[i]}} test photo(s); probability kept in the cell itself ${{M[i][i].toFixed(2)}}`;
}}
cells.forEach((c, i) => c.addEventListener("mouseenter", () => show(i)));
// #<cell> in the address opens the page with that cell selected (links, screenshots).
if (/^#[0-9]+$/.test(location.hash)) show(parseInt(location.hash.slice(1)));
</script>
</body></html>
"""

# A perceptually ordered ramp (light yellow -> dark purple), fixed so the page needs no library.
_STOPS = [[255, 255, 204], [254, 217, 118], [253, 141, 60], [227, 26, 28], [128, 0, 38], [40, 0, 60]]


def neighbourhood_matrix(true_cell: np.ndarray, probs: np.ndarray, n_cells: int) -> list[list[float] | None]:
    """Row i: the mean predicted probability vector over test photos whose true cell is i (None if none)."""
    out: list[list[float] | None] = []
    for i in range(n_cells):
        sel = true_cell == i
        out.append(probs[sel].mean(axis=0).round(4).tolist() if sel.any() else None)
    return out


def neighbourhoods_html(cell_polygons: list[np.ndarray], street_lines: list[np.ndarray],
                        true_cell: np.ndarray, probs: np.ndarray, path: str | Path,
                        title: str = "Neighbourhood similarity", attribution: str = "",
                        width: int = 760) -> Path:
    """Self-contained page (inline SVG + script, no tiles, no CDN). Polygons and lines are lon/lat arrays."""
    pts = np.concatenate([p for p in cell_polygons] + [l for l in street_lines] if street_lines else cell_polygons)
    lon0, lat0 = pts.min(axis=0)
    lon1, lat1 = pts.max(axis=0)
    kx = np.cos(np.radians((lat0 + lat1) / 2))
    scale = (width - 20) / max((lon1 - lon0) * kx, 1e-12)
    height = int((lat1 - lat0) * scale) + 20

    def to_px(a: np.ndarray) -> str:
        x = 10 + (a[:, 0] - lon0) * kx * scale
        y = 10 + (lat1 - a[:, 1]) * scale
        return " ".join(f"{u:.1f},{v:.1f}" for u, v in zip(x, y))

    streets = "".join(f'<polyline class="street" points="{to_px(l)}"/>' for l in street_lines)
    cells = "".join(f'<polygon class="cell" data-i="{i}" points="{to_px(p)}"><title>cell {i}</title></polygon>'
                    for i, p in enumerate(cell_polygons))
    n = len(cell_polygons)
    counts = np.bincount(np.asarray(true_cell, dtype=int), minlength=n)[:n].tolist()
    grad = ", ".join(f"rgb({r},{g},{b})" for r, g, b in _STOPS)
    page = _HTML.format(title=html.escape(title), w=width, h=height, streets=streets, cells=cells,
                        matrix=json.dumps(neighbourhood_matrix(np.asarray(true_cell), np.asarray(probs), n)),
                        counts=json.dumps(counts), stops=json.dumps(_STOPS), grad=grad,
                        attribution=html.escape(attribution))
    return atomic_write_text(path, page)


def report_md(rows: list[dict], commands: list[str], config_text: str, notes: str = "",
              neighbourhoods: bool = True, learning: bool = False) -> str:
    """rows: the methods' metrics (each with its "floors"); the floors of the first are added as rows."""
    floors = rows[0].get("floors") if rows else None
    table = rows + (floor_rows(floors) if floors else [])
    parts = ["# geoloc comparison report", "", markdown_table(table), ""]
    if floors:
        parts += ["## Against the floors", "", *[f"- {versus_floors(r, floors)}" for r in rows], ""]
    if notes:
        parts += [notes, ""]
    parts += ["![error CDF](error_cdf.png)", "", "![map](map.png)", ""]
    if learning:
        parts += ["![learning](learning.png)", ""]
    if neighbourhoods:
        parts += ["[Neighbourhood similarity (interactive)](neighbourhoods.html)", ""]
    parts += ["## Commands", "", "```"]
    parts += commands + ["```", "", "## Config", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(parts)
