"""Numeric precision on the CPU: bf16 where the processor computes it natively, else fp32."""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn



def bf16_supported() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str) -> str:
    """train.precision as it will run here: bf16 falls back to fp32 on a CPU without native bf16."""
    if precision == "bf16" and not bf16_supported():
        warnings.warn("train.precision=bf16: this CPU has no native bf16, using fp32", stacklevel=2)
        return "fp32"
    return precision


def autocast(precision: str, device_type: str = "cpu"):
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, precision: str) -> nn.Module:
    """The model in the memory format infer() and training feed it, for train.precision as configured
    (resolved here: a resolved precision resolves to itself)."""
    # oneDNN's bf16 convolutions are fastest on NHWC tensors.
    return model.to(memory_format=torch.channels_last) if resolve_precision(precision) == "bf16" else model


def prepare_images(images: torch.Tensor, precision: str) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if precision == "bf16" else images
