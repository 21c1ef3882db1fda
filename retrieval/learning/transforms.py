"""Image pipelines. Photos are decoded once, resized (shorter side = data.resize) into a uint8 cache;
the study's augmentation then runs on those small tensors, so a 2-core machine spends its time in the
model rather than in JPEG decoding.

Train: RandomPerspective -> CenterCrop(image_size) (or RandomCrop) -> ColorJitter [-> HorizontalFlip] -> Normalize.
(Hue jitter costs more than the rest together on a CPU: 1.2 of 1.7 ms per 73 px image.)
Test:  CenterCrop(image_size) -> Normalize.
The study applied RandomPerspective before Resize; the warp is defined relative to the image size, so
applying it after the (aspect-preserving) resize draws from the same distribution of distortions.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from retrieval.config import AugmentConfig, DataConfig
from retrieval.data.manifests import Manifest, load_rgb
from retrieval.learning import distributed
from retrieval.learning.backbones import IMAGENET_MEAN, IMAGENET_STD



def to_cached(image: Image.Image, resize: int) -> torch.Tensor:
    """Resize so the shorter side is `resize` (antialiased), as a uint8 CHW tensor."""
    return TF.pil_to_tensor(TF.resize(image, resize, antialias=True))


def decode_images(manifest: Manifest, resize: int, desc: str = "decode") -> list[torch.Tensor]:
    """Every photo of the manifest decoded once (EXIF-upright RGB) and resized: a list of uint8 tensors."""
    def one(i: int) -> torch.Tensor:
        return to_cached(load_rgb(manifest.paths[i], where=manifest.describe(i), min_side=resize), resize)

    # PIL releases the GIL while decoding, so threads overlap JPEG work on both cores.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(tqdm(pool.map(one, range(len(manifest))), total=len(manifest), desc=desc,
                         unit="img", leave=False))


def _normalize() -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(data: DataConfig, aug: AugmentConfig) -> v2.Compose:
    """Augmentation on a cached uint8 image (a no-op apart from crop and Normalize when disabled)."""
    if not aug.enabled:
        return test_transform(data)
    steps = []
    if aug.perspective > 0 and aug.perspective_p > 0:
        steps.append(v2.RandomPerspective(aug.perspective, p=aug.perspective_p))
    steps.append(v2.RandomCrop(data.image_size) if aug.random_crop else v2.CenterCrop(data.image_size))
    steps.append(v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _normalize())


def test_transform(data: DataConfig) -> v2.Compose:
    return v2.Compose([v2.CenterCrop(data.image_size), *_normalize()])


@contextlib.contextmanager
def one_thread():
    """Run small per-image tensor ops on one thread: on a busy 2-core machine, splitting a 150 px
    warp across two OpenMP threads measured 10-40x slower than one thread (the model keeps both)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class CachedImages(Dataset):
    """(image, target, index) over decoded images; `targets` is any tensor indexed by photo."""

    def __init__(self, images: list[torch.Tensor], targets: torch.Tensor, transform):
        if len(images) != len(targets):
            raise ValueError("CachedImages: images and targets differ in length")
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        with one_thread():
            return self.transform(self.images[i]), self.targets[i], i


def train_loader(images: list[torch.Tensor], targets: torch.Tensor, data: DataConfig, aug: AugmentConfig,
                 batch_size: int, seed: int = 0) -> DataLoader:
    """Shuffled batches of augmented training images; the last partial batch is dropped (a batch of
    one breaks BatchNorm) unless the whole set is smaller than one batch."""
    ds = CachedImages(images, targets, train_transform(data, aug))
    world = distributed.world_size()
    if world == 1:
        return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=len(ds) >= batch_size,
                          num_workers=data.num_workers, persistent_workers=data.num_workers > 0)
    # Under torchrun each rank takes its own share of a shuffle that all ranks draw alike (seed, epoch);
    # batch_size is per rank.
    sampler = DistributedSampler(ds, world, distributed.rank(), shuffle=True, seed=seed, drop_last=True)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=len(sampler) >= batch_size,
                      num_workers=data.num_workers, persistent_workers=data.num_workers > 0)
