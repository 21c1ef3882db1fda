"""Files written safely: atomic writes (a kill never leaves half a file), a full disk as one clear error,
preallocated .npy files, stale temporary files, run logs and records, and what produced a run."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from retrieval import GeolocError


# A write that failed for want of room: disk or quota full, or past the file-size limit (ulimit -f).
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# How torch.save and faiss.write_index report a failed write (a RuntimeError, not an OSError).
_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "fwrite", "write error",
                   "No space left")

STALE_TMP_S = 30.0  # a temporary file untouched this long is no live process's (a write takes seconds)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _WRITE_FAILURES)


def disk_full_message(path: str | Path, exc: BaseException, atomic: bool = True) -> str:
    why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else "write failed (disk full?)"
    return f"{path}: cannot write: {why}; free some space" + (" (nothing half-written was kept)" if atomic else "")


def os_error_message(exc: OSError, path: str | Path | None = None) -> str:
    """One line for a failed file operation at a user's path: the path, what went wrong, what to do."""
    path = path or exc.filename or "a file"
    if exc.errno in FULL_ERRNOS:
        return disk_full_message(path, exc, atomic=False)
    hint = {errno.EROFS: "read-only file system; write somewhere else (e.g. another --out)",
            errno.EACCES: "permission denied; choose a location you can write to",
            errno.EPERM: "permission denied; choose a location you can write to",
            errno.EEXIST: "exists and is not a folder; choose another --out",
            errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
            errno.EISDIR: "is a folder; name the file to write"}.get(exc.errno)
    return f"{path}: {hint or exc.strerror or type(exc).__name__}"


def tmp_prefix(path: str | Path) -> str:
    """The name prefix of atomic_write's temporary files for `path` (".NAME." ... ".tmp")."""
    return f".{Path(path).name}."


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call writer(tmp_path) and rename the result over path, so a kill never leaves half a file.
    A full disk raises GeolocError naming the path; the old file, if any, stays as it was."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix(path), suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp)
        writer(tmp_path)
        # mkstemp makes the file owner-only; give it the mode an ordinary open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise GeolocError(disk_full_message(path, exc)) from None
        if isinstance(exc, OSError) and exc.errno is not None:
            # the error may name the temporary file or the folder: name the file the user asked for
            raise GeolocError(os_error_message(exc, path)) from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()
    return path


def remove_stale_tmp(folder: str | Path, names, min_age_s: float = 0.0) -> list[Path]:
    """Delete the temporary files atomic_write leaves behind when killed (".NAME.xxxx.tmp" for each
    NAME in names) in folder; returns those removed. Only files of our own naming are touched."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for name in names:
        for p in folder.glob(f"{tmp_prefix(name)}*.tmp"):
            try:
                if now - p.stat().st_mtime >= min_age_s:
                    p.unlink()
                    removed.append(p)
            except OSError:
                pass
    return removed


def create_npy(path: str | Path, shape: tuple[int, ...], dtype="float32") -> Path:
    """An .npy file of zeros with every block allocated on disk (not a sparse file: writing through a
    memory map into a sparse file on a full disk kills the process with SIGBUS, with no message).
    A full disk raises GeolocError naming the path, and the file is removed."""
    import numpy as np  # only this function needs numpy: the rest of this module stays light
    from numpy.lib.format import open_memmap

    path = Path(path)
    try:
        arr = open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
        header, size = arr.offset, arr.offset + arr.nbytes
        del arr
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except (AttributeError, OSError) as exc:  # no fallocate here, or the file system refuses it
                if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
                    raise
                f.seek(header)  # write the zeros
                zeros, left = bytes(1 << 20), size - header
                while left > 0:
                    left -= f.write(zeros[: min(left, len(zeros))])
                f.flush()
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in FULL_ERRNOS:
            raise GeolocError(disk_full_message(path, exc)) from None
        raise
    return path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def matching_record(path: str | Path, key: dict, valid: Callable[[dict], bool]) -> dict | None:
    """A JSON record written earlier (a choice made once per checkpoint, say) if it holds every field of
    key with the same value and passes valid; None if it is missing, unreadable or stale."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(rec, dict) and all(rec.get(f) == v for f, v in key.items()) and valid(rec):
        return rec
    return None
