"""A fine-tuning curve of issue 28 as a RESULTS.md table, from finetune.sh's files
benchmarks/pretrain/ft<M>_<arm>_<city>.json (arm: the pretrained run's name, or scratch), and the floors (every
point is scored on the same test views).
  .venv/bin/python benchmarks/pretrain/curve_table.py monaco"""
import json
import re
import sys
from pathlib import Path

B = Path(__file__).parent


def floor(m: dict, name: str) -> str:
    f = m["floors"][name]
    return f"{100 * f['recall@1_25m']:.1f}% ({f['median_error_m']:.0f} m)"


def main(city: str) -> None:
    points = {}
    for path in B.glob(f"ft*_{city}.json"):
        minutes, arm = re.fullmatch(rf"ft(\d+)_(.+)_{city}\.json", path.name).groups()
        points[int(minutes), arm != "scratch", arm] = json.loads(path.read_text(encoding="utf-8"))
    if not points:
        sys.exit(f"no benchmarks/pretrain/ft*_{city}.json: run finetune.sh first")
    print("| M minutes | start | R@1 25m | R@5 25m | acc@100m | median | training images |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for (minutes, _, arm), m in sorted(points.items()):
        start = "random weights" if arm == "scratch" else f"`runs/{arm}`"
        images = m["train_images_per_s"] * m["train_seconds"] / 1000
        print(f"| {minutes} | {start} | {100 * m['recall@1_25m']:.1f}% | {100 * m['recall@5_25m']:.1f}% | "
              f"{100 * m['acc@100m']:.1f}% | {m['median_error_m']:.0f} m | {images:.0f}k |")

    # a run's "untrained" floor is k-NN on the network it starts from: random, or the pretrained one
    scratch = next((m for (_, pre, _), m in points.items() if not pre), None)
    pre = next((m for (_, p, _), m in points.items() if p), None)
    any_run = scratch or pre
    print(f"\nfloors (R@1 25m, median), {any_run['n']} test views of {any_run['data']}: constant "
          f"{floor(any_run, 'constant_guess')}, thumbnail {floor(any_run, 'thumbnail_knn')}, oracle "
          f"{floor(any_run, 'oracle')}" + (f", untrained {floor(scratch, 'untrained_knn')}" if scratch else "")
          + (f"; plain k-NN on the pretrained model {floor(pre, 'untrained_knn')}" if pre else ""))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "london")
