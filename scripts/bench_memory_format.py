"""NCHW against channels_last (NHWC) for the embedding network: training and inference images/s.

Each round times, for every input size and both memory formats, a few training steps (forward,
a loss, backward, AdamW step) and a few inference batches on random images, after 2 warm-up steps
(oneDNN builds its kernels); a figure is the median step of its round. Rounds alternate the formats, so
a drifting machine moves both alike. Precision is the project's own choice for this CPU
(`retrieval.learning.precision.resolve_precision`: bf16 where the CPU has it natively, else fp32) unless --precision
forces one (bf16 on a CPU without it: what the fallback to fp32 avoids).

    .venv/bin/python scripts/bench_memory_format.py --sizes 64 48 --rounds 2
    .venv/bin/python scripts/bench_memory_format.py --precision bf16 --sizes 64 --rounds 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from retrieval.learning.models import embedding_net
from retrieval.learning.precision import autocast, resolve_precision


def images_per_s(arch: str, size: int, channels_last: bool, train: bool, precision: str, batch: int,
                 steps: int) -> float:
    torch.manual_seed(0)
    model = embedding_net("none", 512, arch=arch).train(train)
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        if train:
            with autocast(precision):
                loss = model(x).float().pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast(precision):
                model(x)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 48])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=49, help="49: what a 16 x 4 places batch holds on average")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    a = ap.parse_args()
    precision = resolve_precision("bf16") if a.precision == "auto" else a.precision
    print(f"{a.arch}, {precision}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print("| round | px | train NCHW | train channels_last | infer NCHW | infer channels_last |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in range(a.rounds):
        for size in a.sizes:
            row = [images_per_s(a.arch, size, cl, train, precision, a.batch if train else 64, a.steps)
                   for train in (True, False) for cl in (False, True)]
            print(f"| {r + 1} | {size} | " + " | ".join(f"{v:.0f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
