"""The knob table of issue 28 (RESULTS.md): zero-shot R@1 within 25 m of each 10-minute pretraining on the
held-out cities (x the thumbnail floor), and all six test sets pooled against the no-knob row with a 95%
normal interval (the test views are the same in every row, but only counts are stored, so the interval is
the unpaired, wider one). Rows of another seed (knobs.sh with SEED=, tags ..._s1) are compared with the no-knob
row of their own seed, and a knob run at several seeds gets a last row: all its seeds pooled against all the
no-knob seeds.  .venv/bin/python benchmarks/pretrain/knob_table.py"""
import json
import math
from pathlib import Path

from retrieval.synth.randomize import KNOBS

B, RUNS = Path(__file__).parent, Path(__file__).parents[2] / "runs"
SETS = ["london_city_day", "london_city_dusk", "new_york_lower_east_side_day", "new_york_lower_east_side_dusk",
        "baltimore_2km_day", "baltimore_2km_dusk"]
ROWS = {"none10": "pre_none10", "rand10": "pre_rand10"}  # the session-17 rows: no knobs, --randomize all


def row(tag: str) -> tuple[list[str], int, int]:
    cells, hits, n = [], 0, 0
    for s in SETS:
        path = B / f"{tag}_{s}.json"
        if not path.is_file():
            cells.append("")
            continue
        m = json.loads(path.read_text())
        r, floor = m["recall@1_25m"], m["floors"]["thumbnail_knn"]["recall@1_25m"]
        cells.append(f"{100 * r:.1f}% ({r / floor:.1f}x)")
        hits, n = hits + round(r * m["n"]), n + m["n"]
    return cells, hits, n


def speed(run: Path) -> str:
    path = run / "run.json"
    if not path.is_file():
        return ""
    t = json.loads(path.read_text())["train"]
    return f"{t['train_images'] / 1000:.0f}k at {t['train_images_per_s']:.0f} img/s"


def versus(h: int, n: int, h0: int, n0: int) -> str:
    p, p0 = h / n, h0 / n0
    half = 1.96 * math.sqrt(p * (1 - p) / n + p0 * (1 - p0) / n0)
    return f"{100 * (p - p0):+.1f} [{100 * (p - p0 - half):+.1f}, {100 * (p - p0 + half):+.1f}]"


def main() -> None:
    seeds = [""] + sorted(p.name[len("none10"):-len("_baltimore_2km_dusk.json")]
                          for p in B.glob("none10_s*_baltimore_2km_dusk.json"))
    print("| pretraining, 10 min | London day | London dusk | New York day | New York dusk | Baltimore day | "
          "Baltimore dusk | pooled | vs no knobs (95%) | images |")
    print("|---|" + "---:|" * 8 + "---|")
    pooled = {}  # knob -> [hits, n, no-knob hits, no-knob n, seeds] summed over its seeds
    for s in seeds:
        knobs = [k for k in KNOBS if (B / f"knob_{k}{s}_baltimore_2km_dusk.json").is_file()]
        tags = {t: (t, RUNS / r) for t, r in ROWS.items() if t == "none10" or not s}
        tags.update({k: (f"knob_{k}", RUNS / f"pre_knob_{k}") for k in knobs})
        _, h0, n0 = row(f"none10{s}")
        for name, (tag, run) in tags.items():
            cells, h, n = row(tag + s)
            diff = "" if tag == "none10" else versus(h, n, h0, n0)
            label = f"{name}, seed {s[2:]}" if s else name
            print(f"| {label} | " + " | ".join(cells) + f" | {100 * h / n:.1f}% | {diff} | {speed(Path(f'{run}{s}'))} |")
            acc = pooled.setdefault(name, [0, 0, 0, 0, 0])
            acc[:] = [acc[0] + h, acc[1] + n, acc[2] + h0, acc[3] + n0, acc[4] + 1]
    for name, (h, n, h0, n0, runs) in pooled.items():
        if runs > 1 and name != "none10":
            print(f"| {name}, {runs} seeds pooled |" + " |" * 6 + f" {100 * h / n:.1f}% | {versus(h, n, h0, n0)} | |")


if __name__ == "__main__":
    main()
