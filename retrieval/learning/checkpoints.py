"""Training checkpoints: saved atomically, loaded with weights_only and a one-line error."""
from __future__ import annotations

import re
from pathlib import Path

from retrieval import GeolocError
from retrieval.files import atomic_write
from retrieval.run import trained_checkpoint


def load_trained(model, run_dir: str | Path) -> dict:
    """Load best.pt (else last.pt) of a run into model (an nn.Module); returns the checkpoint."""
    path = trained_checkpoint(run_dir)
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise GeolocError(f"{path}: does not fit this model ({str(exc).splitlines()[0]})") from None
    return state


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write a checkpoint atomically: a kill mid-write leaves the previous one in place."""
    import torch  # lazy: importing this module does not load torch

    return atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """A checkpoint's state (tensors only, weights_only); a missing or unreadable file is a GeolocError."""
    path = Path(path)
    if not path.is_file():
        raise GeolocError(f"{path}: checkpoint not found")
    return load_tensors(path, "checkpoint", map_location)


# How torch names the code a pickle asks to run: "unsupported GLOBAL posix.system", "Unsupported global: GLOBAL x.y"
_GLOBAL = re.compile(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)")


def load_tensors(path: Path, what: str, map_location: str = "cpu"):
    """torch.load(weights_only=True) with a one-line error. A file that asks to run code is refused as
    such: torch's own advice (retry with weights_only=False) is the one thing not to do with it."""
    import torch  # lazy: importing this module does not load torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        code = _GLOBAL.search(str(exc))
        if code:
            raise GeolocError(f"{path} is not a geoloc {what}: it asks to run code ({code.group(1)}); "
                              "refusing to load it") from None
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise GeolocError(f"{path}: cannot load {what} ({type(exc).__name__}: {first})") from None
