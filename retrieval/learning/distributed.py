"""Multi-process training under `torchrun`: the process group, which rank writes, and gathering a batch
from every rank so metric learning mines across the whole global batch.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process, so
the training code has a single path.
"""
from __future__ import annotations

import functools
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from retrieval import GeolocError

# Rank 0 runs validation alone while the others wait in a barrier; a long validation must not time out.
TIMEOUT = timedelta(hours=6)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) where CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init() -> int:
    """Join the process group torchrun set up (nccl on GPUs, gloo on CPUs); returns the world size."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return world_size()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise GeolocError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun")
    dev = device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    if not is_main():
        _quiet_progress()
    return world_size()


def _quiet_progress() -> None:
    """One set of progress bars and messages, from rank 0: the other ranks would repeat them (the same
    move as DETR's setup_for_distributed, for tqdm). Errors still reach stderr from every rank."""
    import tqdm

    init = tqdm.tqdm.__init__

    @functools.wraps(init)
    def silent_init(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    tqdm.tqdm.__init__ = silent_init
    tqdm.tqdm.write = classmethod(lambda cls, s, file=None, end="\n", nolock=False: None)


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (each rank gets the sums)."""
    t = torch.tensor(values, dtype=torch.float64)
    if active():
        t = t.to(device())
        dist.all_reduce(t)
    return t.cpu().tolist()


def gather_objects(obj) -> list:
    """obj from every rank, in rank order (rank 0 gets them all; small picklable values only)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: every rank's embeddings and labels concatenated in rank order.

    Ranks may hold different numbers of rows, so rows are padded to the largest count for all_gather
    and trimmed after. Gradients flow only into this rank's own rows; they are scaled by the world size
    because DistributedDataParallel averages gradients over ranks, while each rank computes the loss of
    the whole global batch: the average of world_size partial gradients, each world_size times its own
    rows' share, is the gradient of the global-batch loss, exactly as one process would compute it.
    """
    n = world_size()
    if n == 1:
        return embeddings, labels
    r = rank()
    counts = [int(c) for c in gather_counts(len(embeddings))]
    width = max(counts)

    def gather(x: torch.Tensor) -> list[torch.Tensor]:
        padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[:len(x)] = x.detach()
        parts = [torch.empty_like(padded) for _ in range(n)]
        dist.all_gather(parts, padded.contiguous())
        return [p[:c] for p, c in zip(parts, counts)]

    emb_parts, label_parts = gather(embeddings), gather(labels)
    emb_parts[r] = _ScaleGrad.apply(embeddings, float(n))
    label_parts[r] = labels
    return torch.cat(emb_parts), torch.cat(label_parts)


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def gather_counts(count: int) -> list[int]:
    if not active():
        return [count]
    t = torch.tensor([count], dtype=torch.int64, device=device())
    parts = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t)
    return [int(p.item()) for p in parts]
