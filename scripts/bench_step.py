"""Which layout, batch and input size train the embedding fastest on this CPU? Raw training steps of the
embedding network (forward, a similarity loss, backward, AdamW step) on random images, for several
settings interleaved round by round, so a machine whose speed drifts slows every setting alike.

Each setting is `precision,channels_last,batch,size[,arch]`, e.g. `bf16,1,64,64`. Reports the median
images/s over the rounds, and each setting's ratio to the first one, round by round (median, min, max).

    .venv/bin/python scripts/bench_step.py bf16,1,64,64 bf16,0,64,64 bf16,1,128,64 bf16,1,64,48 --rounds 8
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from retrieval.models import embedding_net
from retrieval.train import autocast


def setting(text: str) -> dict:
    parts = text.split(",")
    if len(parts) not in (4, 5):
        raise SystemExit(f"{text!r}: expected precision,channels_last,batch,size[,arch]")
    return {"name": text, "precision": parts[0], "cl": parts[1] == "1", "batch": int(parts[2]),
            "size": int(parts[3]), "arch": parts[4] if len(parts) == 5 else "resnet18"}


def make(s: dict):
    model = embedding_net("none", 512, 0.0, s["arch"])
    x = torch.randn(s["batch"], 3, s["size"], s["size"])
    if s["cl"]:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x, torch.optim.AdamW(model.parameters(), 1e-3)


def steps(model, x, opt, precision: str, n: int) -> float:
    """Seconds per step over n steps."""
    t0 = time.perf_counter()
    for _ in range(n):
        with autocast(precision):
            y = model(x).float()
            loss = (y @ y.T).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", type=setting)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per setting per round")
    args = ap.parse_args()
    built = [(s, *make(s)) for s in args.settings]
    for s, model, x, opt in built:  # warm-up: oneDNN builds its kernels on the first steps
        steps(model, x, opt, s["precision"], 3)
    rates: dict[str, list[float]] = {s["name"]: [] for s in args.settings}
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for s, model, x, opt in built:
            rates[s["name"]].append(s["batch"] / steps(model, x, opt, s["precision"], args.steps))
    first = args.settings[0]["name"]
    print(f"{'setting':<24} {'img/s (median)':>15} {'ratio to first: median [min, max]':>36}")
    for name, r in rates.items():
        ratio = [a / b for a, b in zip(r, rates[first])]
        print(f"{name:<24} {statistics.median(r):>15.1f} {statistics.median(ratio):>14.2f} "
              f"[{min(ratio):.2f}, {max(ratio):.2f}]")


if __name__ == "__main__":
    main()
