"""Raw training speed of the torchvision ResNets on this CPU: one AdamW step (bf16 autocast,
channels_last) on random images, images per second after warm-up, for each (arch, size, batch).

    .venv/bin/python scripts/bench_backbone.py --configs resnet18:64:128 resnet18:64:64 resnet50:64:128

The ceiling for geoloc's training throughput (which adds decoding-free augmentation and mining).
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision


def images_per_s(arch: str, size: int, batch: int, steps: int = 3, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["resnet18:64:128", "resnet18:64:64", "resnet34:64:128",
                                                     "resnet50:64:128"])
    for spec in p.parse_args().configs:
        arch, size, batch = spec.split(":")
        print(f"{arch} {size}px batch {batch}: {images_per_s(arch, int(size), int(batch)):.0f} img/s")


if __name__ == "__main__":
    main()
