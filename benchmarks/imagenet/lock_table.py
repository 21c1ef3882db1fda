"""The lock-factor sweep (benchmarks/imagenet/lock_sweep.sh) as a table and a picture: for each method and
lock factor, the last validation of its fixed-step run (the embedding's R@1 within 25 m, the cells' accuracy,
both runs' median error) and its training speed.
    .venv/bin/python benchmarks/imagenet/lock_table.py      # -> prints the table, writes lock.png"""
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
LOCKS = ("0.0", "0.3", "0.5", "0.7", "0.9")
METRIC = {"embedding": ("val_recall@1_25m", "R@1 within 25 m"), "cells": ("val_cell_acc", "cell accuracy")}


def last_validation(path: Path) -> dict:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_median_error_m")]
    return rows[-1]


def main(city: str = "london") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    print("| method | lock factor | validation metric | median error | train img/s |\n|---|---:|---:|---:|---:|")
    for ax, (method, (key, label)) in zip(axes, METRIC.items()):
        pts = []
        for lock in LOCKS:
            path = HERE / f"lock{lock}_{method}_{city}.csv"
            if not path.is_file():
                continue
            r = last_validation(path)
            pts.append((float(lock), 100 * float(r[key]), float(r["val_median_error_m"])))
            print(f"| {method} | {lock} | {100 * float(r[key]):.1f}% ({label}) | {float(r['val_median_error_m']):.0f} m | "
                  f"{float(r['images_per_s']):.0f} |")
        if pts:
            xs, ys, meds = zip(*pts)
            ax.plot(xs, ys, marker="o", color="#1e88e5")
            for x, y, m in pts:
                ax.annotate(f"{y:.1f}%\n{m:.0f} m", (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize=8)
        ax.set_xticks([float(x) for x in LOCKS])
        ax.set_xlabel("lock factor (share of layers frozen, from the input)")
        ax.set_ylabel(f"validation {label} (%)")
        ax.set_title(f"{method}, EfficientNet-Lite0 from ImageNet, 300 steps", fontsize=10)
        ax.set_ylim(0, max([p[1] for p in pts] + [10]) * 1.3)
        ax.grid(alpha=0.3)
    fig.suptitle(f"The seed study's lock-factor sweep on ImageNet weights ({city.title()} render, 200 validation views)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "lock.png", dpi=110)


if __name__ == "__main__":
    main()
