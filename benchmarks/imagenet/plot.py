"""The ImageNet benchmark as one picture: R@1 within 25 m on each rendered city, per start and budget, beside
the thumbnail floor (benchmarks/imagenet/*.json, written by zeroshot.sh, finetune.sh and pretrain_imagenet.sh).
    .venv/bin/python benchmarks/imagenet/plot.py      # -> benchmarks/imagenet/imagenet.png"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
BARS = [  # file stem (without _<city>), label, colour
    ("zs_efficientnet_lite0_gem_128", "ImageNet, no training", "#90caf9"),
    ("zs_pre10_imagenet", "ImageNet + 10 min on other\nrendered cities, zero-shot", "#64b5f6"),
    ("ft5_scratch", "random weights, 5 min", "#ffcc80"),
    ("ft5_imagenet", "ImageNet, 5 min", "#1e88e5"),
    ("ft10_imagenet", "ImageNet, 10 min", "#0d47a1"),
    ("ft30_scratch", "random weights, 30 min", "#fb8c00"),
]


def main() -> None:
    cities = ["london", "monaco"]
    fig, axes = plt.subplots(1, len(cities), figsize=(11, 4.2), sharey=True)
    for ax, city in zip(axes, cities):
        rows = [(x, label, colour, json.loads((HERE / f"{stem}_{city}.json").read_text()))
                for x, (stem, label, colour) in enumerate(BARS) if (HERE / f"{stem}_{city}.json").is_file()]
        for x, label, colour, m in rows:
            r1 = 100 * m["recall@1_25m"]
            ax.bar(x, r1, color=colour)
            ax.text(x, r1 + 1, f"{r1:.1f}%\n{m['median_error_m']:.0f} m", ha="center", fontsize=8)
        thumb = 100 * rows[0][3]["floors"]["thumbnail_knn"]["recall@1_25m"] if rows else 0
        ax.axhline(thumb, color="0.4", ls="--", lw=1)
        ax.text(-0.55, thumb - 3.5, f"thumbnail k-NN {thumb:.1f}%", ha="left", fontsize=8, color="0.3")
        ax.set_xticks([r[0] for r in rows], [r[1] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(BARS) - 0.4)
        ax.set_title(f"{city.title()} render, 500 test views", fontsize=10)
        ax.set_ylim(0, 75)
    axes[0].set_ylabel("R@1 within 25 m (%), median error below")
    fig.suptitle("EfficientNet-Lite0 from ImageNet (offline) vs ResNet-18 from random weights, "
                 "one 2-core AVX512 CPU (AMD EPYC)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "imagenet.png", dpi=110)


if __name__ == "__main__":
    main()
