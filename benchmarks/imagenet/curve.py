"""The fine-tuning curves (issue 37) as one picture: R@1 within 25 m against minutes of training on each
rendered city, from ImageNet (this benchmark's AVX512 runs) and from random weights (the same CPU), beside the
curves from random weights and from the 60-minute rendered pretraining (runs/pre60) measured on an AMX CPU in
sessions 19-20 (benchmarks/pretrain/), dashed: another CPU holds other images per minute.
    .venv/bin/python benchmarks/imagenet/curve.py      # -> benchmarks/imagenet/curve.png"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
PRE = HERE.parent / "pretrain"
ARMS = [  # folder, file stem, label per city, colour, dashed
    (HERE, "imagenet", {"london": "ImageNet Lite0 (AVX512)", "monaco": "ImageNet Lite0 (AVX512)"}, "#1e88e5", False),
    (HERE, "scratch", {"london": "random weights (AVX512)", "monaco": "random weights (AVX512)"}, "#fb8c00", False),
    (PRE, "scratch", {"london": "random weights (AMX)", "monaco": "random weights (AMX)"}, "#fb8c00", True),
    (PRE, "pre60", {"london": "runs/pre60 (AMX)"}, "#8e24aa", True),
    (PRE, "pre60_nomonaco", {"monaco": "runs/pre60_nomonaco (AMX)"}, "#8e24aa", True),
]


def main() -> None:
    cities = ["london", "monaco"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, city in zip(axes, cities):
        for folder, stem, labels, colour, dashed in ARMS:
            if city not in labels:
                continue
            pts = sorted((m, json.loads(f.read_text())["recall@1_25m"] * 100) for m in (2, 5, 10, 30)
                         if (f := folder / f"ft{m}_{stem}_{city}.json").is_file())
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "--" if dashed else "-", marker="o", color=colour, alpha=0.6 if dashed else 1.0,
                    label=labels[city])
            if not dashed:
                for x, y in pts:
                    ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([2, 5, 10, 30], ["2", "5", "10", "30"])
        ax.set_xlabel(f"minutes of training on {city.title()} (wall time, validation included)")
        ax.set_title(f"{city.title()} render, 500 test views", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("R@1 within 25 m (%)")
    axes[0].set_ylim(0, 75)
    fig.suptitle("Fine-tuning curves: where a run starts and how fast it climbs", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "curve.png", dpi=110)


if __name__ == "__main__":
    main()
