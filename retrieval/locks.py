"""One writer per folder: RUN/.lock, flock'ed for as long as the process that holds it lives. Its own module,
with nothing but the standard library, so that commands that need no training stack (`geoloc data fetch`)
take the same lock as the ones that do (retrieval.run)."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from retrieval import GeolocError

LOCK_FILE = ".lock"
_HELD: dict[str, object] = {}  # this process's open lock files, by folder: the kernel releases them at exit


def lock_run_dir(run_dir: str | Path, command: str) -> None:
    """Hold RUN/.lock for the rest of this process, so a second command writing into the same folder is
    refused instead of mixing its checkpoints and log with this one's. The kernel drops the lock when the
    process ends, however it ends (kill -9 too), so a lock file left by a dead process is free again."""
    key = str(Path(run_dir).resolve())
    if key not in _HELD:
        _HELD[key] = _acquire(Path(run_dir), command)


@contextmanager
def folder_lock(folder: str | Path, command: str):
    """The same lock, held only inside the with-block (a fetch called twice in one process, say)."""
    f = _acquire(Path(folder), command)
    try:
        yield
    finally:
        f.close()


def _acquire(run_dir: Path, command: str):
    if run_dir.exists() and not run_dir.is_dir():
        raise GeolocError(f"{run_dir}: exists and is not a folder; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise GeolocError(f"{run_dir}: in use by {holder}; wait for it to end or choose another folder") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} (geoloc {command})\n")
    f.flush()
    return f
