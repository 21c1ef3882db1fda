"""Decoding photos for the image cache (retrieval.learning.transforms.decode_images): full JPEG decode then
resize, against the JPEG's own DCT scaling to no less than the cache's size (load_rgb's min_side).

    .venv/bin/python benchmarks/decode/draft.py

Lund's 29 real 1024 x 768 photos (../shared/data/photos/lund), and the same scaled to 2048 x 1536 (the size of
a Panoramax `sd` picture) and saved at JPEG quality 90; resize 146 (configs/finetune_cpu.yaml); one thread,
median of 5 passes over the photos; the mean absolute difference of the cached pixels (0-255).
"""
from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from retrieval.data.manifests import load_rgb  # noqa: E402
from retrieval.learning.transforms import to_cached  # noqa: E402

RESIZE = 146


def per_photo_ms(blobs: list[bytes], min_side: int | None) -> float:
    passes = []
    for _ in range(5):
        t = time.perf_counter()
        for b in blobs:
            to_cached(load_rgb(io.BytesIO(b), min_side=min_side), RESIZE)
        passes.append((time.perf_counter() - t) / len(blobs) * 1000)
    return statistics.median(passes)


def main():
    import torch

    torch.set_num_threads(1)
    photos = sorted((REPO.parent / "shared" / "data" / "photos" / "lund").glob("*.jpg"))
    if not photos:
        sys.exit("no Lund photos at ../shared/data/photos/lund")
    sets = {"1024 x 768 (as taken)": [p.read_bytes() for p in photos]}
    big = []
    for p in photos:
        buf = io.BytesIO()
        Image.open(p).resize((2048, 1536), Image.LANCZOS).save(buf, format="JPEG", quality=90)
        big.append(buf.getvalue())
    sets["2048 x 1536 (scaled up)"] = big
    print("| photos | full decode + resize | DCT-scaled decode + resize | ratio | mean abs pixel difference |")
    print("|---|---:|---:|---:|---:|")
    for name, blobs in sets.items():
        full, draft = per_photo_ms(blobs, None), per_photo_ms(blobs, RESIZE)
        diff = statistics.mean(
            (to_cached(load_rgb(io.BytesIO(b)), RESIZE).float()
             - to_cached(load_rgb(io.BytesIO(b), min_side=RESIZE), RESIZE).float()).abs().mean().item() for b in blobs)
        print(f"| {name} | {full:.1f} ms | {draft:.1f} ms | {full / draft:.1f}x | {diff:.2f} |")


if __name__ == "__main__":
    main()
