"""Local features of the database photos, for the geometric rerank (retrieval.answering.geometry): OpenCV's SIFT on
each photo's original file at rerank.size, at most rerank.keypoints per photo, stored compactly beside the
index in RUN/index/local/ (uint8 descriptors, float16 positions, memory-mapped) and extracted resumably a
chunk at a time, as the embeddings are.

Why SIFT: OpenCV ships it (no weights to fetch), it runs on a CPU in tens of milliseconds at 480 px, and its
descriptors fit in uint8 exactly (OpenCV scales them into 0-255 before returning them as float32).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm import tqdm

from retrieval import GeolocError
from retrieval.data.manifests import Manifest, load_rgb
from retrieval.files import atomic_write_json, create_npy

DESCRIPTORS, KEYPOINTS, COUNTS, PROGRESS = "descriptors.npy", "keypoints.npy", "counts.npy", "local.json"
DESCRIPTOR_BYTES = 128  # SIFT's
CHUNK = 256  # photos between two progress records: the most a killed extraction loses


def _sift(keypoints: int):
    import cv2  # one detector per call (not shared across threads) costs under a millisecond

    return cv2.SIFT_create(nfeatures=keypoints)


def matching_image(image: Image.Image, size: int) -> np.ndarray:
    """The grey image features are taken from: its longer side brought down to `size` (never up: enlarging
    adds no detail), as uint8."""
    w, h = image.size
    scale = min(1.0, size / max(w, h))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def extract(image: Image.Image, size: int = 480, keypoints: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """(positions (n, 2) float32 in the matching image's pixels, descriptors (n, 128) uint8), n <= keypoints,
    strongest first."""
    grey = matching_image(image, size)
    kps, desc = _sift(keypoints).detectAndCompute(grey, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    order = np.argsort([-k.response for k in kps], kind="stable")[:keypoints]
    xy = np.array([kps[i].pt for i in order], dtype=np.float32)
    return xy, np.clip(np.rint(desc[order]), 0, 255).astype(np.uint8)


class LocalStore:
    """RUN/index/local: photo i's features are descriptors[i, :counts[i]] and keypoints[i, :counts[i]]."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        try:
            self.record = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
            self.descriptors = np.load(folder / DESCRIPTORS, mmap_mode="r")
            self.keypoints = np.load(folder / KEYPOINTS, mmap_mode="r")
            self.counts = np.load(folder / COUNTS, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise GeolocError(f"{folder}: no local features ({exc}); rebuild with geoloc index build") from None
        if self.record.get("rows_done") != len(self.counts):
            raise GeolocError(f"{folder}: local features of {self.record.get('rows_done')} of {len(self.counts)} "
                              "photos; rerun geoloc index build to finish them")

    def __len__(self) -> int:
        return len(self.counts)

    def features(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.counts[i])
        return np.asarray(self.keypoints[i, :n], dtype=np.float32), np.asarray(self.descriptors[i, :n])

    @property
    def bytes_per_photo(self) -> int:
        return int(self.descriptors[0].nbytes + self.keypoints[0].nbytes + self.counts[0].nbytes) if len(self) else 0


def _key(db_sha: str, n: int, rr) -> dict:
    return {"photos_sha256": db_sha, "photos": n, "features": "sift", "size": rr.size, "keypoints": rr.keypoints}


def _resumable(folder: Path, key: dict) -> dict | None:
    try:
        state = json.loads((folder / PROGRESS).read_text(encoding="utf-8"))
        shape = np.load(folder / DESCRIPTORS, mmap_mode="r").shape
        counts = np.load(folder / COUNTS, mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    same = isinstance(state, dict) and all(state.get(k) == v for k, v in key.items())
    if not same or shape != (key["photos"], key["keypoints"], DESCRIPTOR_BYTES) \
            or counts != (key["photos"],) or not isinstance(state.get("rows_done"), int):
        return None
    return state


def extract_database(db: Manifest, db_sha: str, rr, folder: Path, chunk: int = CHUNK) -> dict:
    """Local features of db's photos (from their files) into folder, recording after each chunk the rows
    done: a killed extraction resumes after its last chunk, and a rebuild with the same photos and
    settings extracts nothing. Returns the record, with bytes per photo and ms per photo."""
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(db_sha, len(db), rr)
    state = _resumable(folder, key)
    if state is None:
        (folder / PROGRESS).unlink(missing_ok=True)  # before the files it describes are replaced
        create_npy(folder / DESCRIPTORS, (len(db), rr.keypoints, DESCRIPTOR_BYTES), "uint8")
        create_npy(folder / KEYPOINTS, (len(db), rr.keypoints, 2), "float16")
        create_npy(folder / COUNTS, (len(db),), "int16")
        state = {**key, "rows_done": 0, "seconds": 0.0}
        atomic_write_json(folder / PROGRESS, state)
    with tqdm(total=len(db), initial=state["rows_done"], desc="local features", unit="img") as bar:
        for start in range(state["rows_done"], len(db), chunk):
            stop = min(len(db), start + chunk)
            t0 = time.perf_counter()
            desc, kps, counts = (open_memmap(folder / f, mode="r+") for f in (DESCRIPTORS, KEYPOINTS, COUNTS))
            for i in range(start, stop):
                xy, d = extract(load_rgb(db.paths[i], db.describe(i)), rr.size, rr.keypoints)
                desc[i, :len(d)], kps[i, :len(xy)], counts[i] = d, xy, len(d)
                bar.update(1)
            for a in (desc, kps, counts):
                a.flush()
            del desc, kps, counts
            state = {**state, "rows_done": stop, "seconds": state["seconds"] + time.perf_counter() - t0}
            atomic_write_json(folder / PROGRESS, state)
    store = LocalStore(folder)
    return {**state, "bytes_per_photo": store.bytes_per_photo,
            "ms_per_photo": round(1000 * state["seconds"] / max(len(db), 1), 2)}
