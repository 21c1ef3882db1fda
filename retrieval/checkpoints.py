"""Training checkpoints: saved atomically, loaded with weights_only and a one-line error."""
from __future__ import annotations

from pathlib import Path

from retrieval import GeolocError
from retrieval.files import atomic_write


def trained_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a trained run answers with: best.pt, else last.pt."""
    run_dir = Path(run_dir)
    return run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"


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
    import torch

    path = Path(path)
    if not path.is_file():
        raise GeolocError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise GeolocError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
