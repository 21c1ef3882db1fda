"""Geotagged photo manifests: the Manifest, reading and checking one, writing one, and decoding its images.

A manifest is a CSV with columns path,lat,lon and optional heading,date,split. Relative paths are relative
to the manifest's own folder, so a data folder can be moved as a whole.
"""
from __future__ import annotations

import csv
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval import GeolocError
from retrieval.files import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val", "test")
FAR_FROM_SET_M = 30_000.0  # `data check`: a photo this far from the set's median is a wrong coordinate


@dataclass
class Manifest:
    paths: list[Path]  # absolute
    lat: np.ndarray
    lon: np.ndarray
    heading: np.ndarray | None = None  # degrees clockwise from north, NaN where unknown
    date: np.ndarray | None = None  # capture time, datetime64[s], NaT where unknown
    split: list[str] | None = None
    source: Path | None = None
    rows: list[int] = field(default_factory=list)  # CSV row number of each photo, for messages
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx) -> "Manifest":
        idx = np.asarray(idx, dtype=np.int64)
        return Manifest(
            paths=[self.paths[i] for i in idx], lat=self.lat[idx], lon=self.lon[idx],
            heading=None if self.heading is None else self.heading[idx],
            date=None if self.date is None else self.date[idx],
            split=None if self.split is None else [self.split[i] for i in idx],
            source=self.source, rows=[self.rows[i] for i in idx] if self.rows else [],
        )

    def where_split(self, name: str) -> "Manifest":
        if self.split is None:
            raise GeolocError(f"{self.source}: no 'split' column; cannot select split '{name}'")
        return self.subset([i for i, s in enumerate(self.split) if s == name])

    def describe(self, i: int) -> str:
        row = f"row {self.rows[i]}: " if self.rows else ""
        return f"{self.source}: {row}{self.paths[i]}"


def concat_manifests(parts: list[Manifest]) -> Manifest:
    """One manifest of several (e.g. train + val); headings and dates are kept only if every part has them."""
    if not parts:
        raise ValueError("concat_manifests: nothing to concatenate")
    heading = date = None
    if all(p.heading is not None for p in parts):
        heading = np.concatenate([p.heading for p in parts])
    if all(p.date is not None for p in parts):
        date = np.concatenate([p.date for p in parts])
    return Manifest(paths=[x for p in parts for x in p.paths], lat=np.concatenate([p.lat for p in parts]),
                    lon=np.concatenate([p.lon for p in parts]), heading=heading, date=date, source=parts[0].source,
                    rows=[r for p in parts for r in p.rows] if all(p.rows for p in parts) else [])


# --- image checks ----------------------------------------------------------------------------------

# What decoding a bad image raises: unreadable or truncated files, and images too large to decode
# (PIL refuses more than 2 x Image.MAX_IMAGE_PIXELS pixels as a possible decompression bomb).
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_problem(exc: BaseException) -> str:
    """One line saying why an image could not be decoded."""
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode ({exc})".replace(", could be decompression bomb DOS attack.", "")
    if isinstance(exc, UnidentifiedImageError):  # its message repeats the file's path, which the caller names
        return "corrupt or truncated image (no image format recognised)"
    return f"corrupt or truncated image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def _check_image(path: Path) -> str | None:
    """Fully decode the image; returns the problem, or None when it is readable."""
    try:
        with Image.open(path) as im:
            im.load()
    except IMAGE_ERRORS as exc:
        return image_problem(exc)
    return None


DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M:%S")


def parse_date(text: str) -> np.datetime64:
    """A capture time: ISO 8601 (2024-05-01, 2024-05-01T14:03:07) or EXIF's 2024:05:01 14:03:07; a
    time-zone suffix is ignored (times of one city share it). ValueError says what was expected."""
    core = re.sub(r"(Z|[+-]\d\d:?\d\d)$", "", text.strip())
    for fmt in DATE_FORMATS:
        try:
            return np.datetime64(datetime.strptime(core, fmt), "s")
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a date (write 2024-05-01 or 2024-05-01T14:03:07)")


# --- reading a manifest ----------------------------------------------------------------------------

def read_manifest(path: str | Path, skip_bad: bool = False, check_files: bool = True,
                  check_images: bool | None = None, check_far: bool = False) -> Manifest:
    """Read and check a manifest. A bad row raises GeolocError naming file, row and problem;
    with skip_bad it is skipped with a warning and counted in Manifest.skipped. check_images (default:
    skip_bad) decodes every image, so that with skip_bad a corrupt image is skipped here rather than
    stopping training when the images are decoded. check_far flags rows more than FAR_FROM_SET_M from
    the median position of the set (lat/lon swapped, a photo from another city)."""
    path = Path(path)
    if not path.is_file():
        raise GeolocError(f"{path}: manifest not found")
    bad = _BadRows(path, skip_bad)
    cols, photos = _read_rows(path, bad, check_files, skip_bad if check_images is None else check_images)
    if check_far and len(photos) > 2:
        far = set(_far_rows(np.array([p.lat for p in photos]), np.array([p.lon for p in photos]),
                            [p.row for p in photos], bad))
        photos = [p for i, p in enumerate(photos) if i not in far]
    if not photos:
        raise GeolocError(f"{path}: no usable rows")
    if bad.count:
        warnings.warn(f"{path}: skipped {bad.count} bad row(s)", stacklevel=2)
    return _assemble(path, cols, photos, bad.count)


class _Photo(NamedTuple):
    """One good manifest row."""
    row: int  # CSV row number
    raw_path: str  # as written in the manifest, for messages
    path: Path  # absolute
    lat: float
    lon: float
    heading: float  # NaN where unknown
    date: np.datetime64  # NaT where unknown
    split: str  # "" where none


class _BadRow(Exception):
    """What is wrong with one manifest row (the first problem found)."""


class _BadRows:
    """What read_manifest does with a bad row: raise GeolocError naming file, row and problem, or with
    skip_bad warn and count it."""

    def __init__(self, path: Path, skip_bad: bool):
        self.path, self.skip_bad, self.count = path, skip_bad, 0

    def __call__(self, row_no: int, problem: str) -> None:
        msg = f"{self.path}: row {row_no}: {problem}"
        if not self.skip_bad:
            raise GeolocError(msg)
        warnings.warn(msg, stacklevel=4)  # read_manifest's caller (via _read_rows or _far_rows)
        self.count += 1


def _read_rows(path: Path, bad: _BadRows, check_files: bool,
               check_images: bool) -> tuple[list[str], list[_Photo]]:
    """The header and the good rows of a manifest, in file order; each bad row goes to bad()."""
    photos: list[_Photo] = []
    seen: dict[Path, int] = {}  # first row of each path
    with _open_csv(path) as (cols, rows):
        _check_header(path, cols)
        for row_no, row in rows:
            try:
                photo = _parse_row(row_no, row, path.parent)
                _check_photo(photo, seen, check_files, check_images)
            except _BadRow as exc:
                bad(row_no, str(exc))
                continue
            seen[photo.path] = row_no
            photos.append(photo)
    return cols, photos


@contextmanager
def _open_csv(path: Path) -> Iterator[tuple[list[str], Iterator[tuple[int, dict]]]]:
    """The header (stripped column names) and the numbered rows of a CSV file. A file that is not UTF-8
    or not CSV raises GeolocError, whether that shows at the header or at any later row."""
    try:
        # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte order mark
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = cols
            yield cols, enumerate(reader, start=2)
    except UnicodeDecodeError:
        raise GeolocError(f"{path}: {_not_utf8(path)}; save the manifest as UTF-8 CSV") from None
    except csv.Error as exc:
        raise GeolocError(f"{path}: not a readable CSV ({exc})") from None


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8, for the message (the decoder's own offset is within a chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}, e.g. Latin-1 or another code page)"
    return "not UTF-8 text"


def _check_header(path: Path, cols: list[str]) -> None:
    missing = [c for c in ("path", "lat", "lon") if c not in cols]
    if missing:
        raise GeolocError(f"{path}: missing column(s) {', '.join(missing)} (header is {','.join(cols)})")


def _field(row: dict, name: str) -> str:
    """A row's value of a column, stripped; "" when empty or when the manifest has no such column."""
    return (row.get(name) or "").strip()


def _parse_row(row_no: int, row: dict, base: Path) -> _Photo:
    """One CSV row's values, checked in column order; _BadRow names the first problem."""
    raw_path = _field(row, "path")
    if not raw_path:
        raise _BadRow("empty path")
    p = Path(raw_path)
    p = (p if p.is_absolute() else base / p).resolve()
    lat = _coordinate(row, "lat", -90.0, 90.0)
    lon = _coordinate(row, "lon", -180.0, 180.0)
    heading = _heading(_field(row, "heading"))
    date = _date(_field(row, "date"))
    split = _field(row, "split")
    if split and split not in SPLITS:
        raise _BadRow(f"split {split!r} is not one of {', '.join(SPLITS)}")
    return _Photo(row_no, raw_path, p, lat, lon, heading, date, split)


def _coordinate(row: dict, name: str, lo: float, hi: float) -> float:
    text = _field(row, name)
    try:
        v = float(text)
    except ValueError:
        raise _BadRow(f"{name} {text!r} is not a number") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise _BadRow(f"{name} {text} is out of range [{lo:g}, {hi:g}]")
    return v


def _heading(text: str) -> float:
    """Degrees clockwise from north in [0, 360); NaN when empty."""
    if not text:
        return math.nan
    try:
        heading = float(text)
    except ValueError:
        raise _BadRow(f"heading {text!r} is not a number") from None
    if not math.isfinite(heading):
        raise _BadRow(f"heading {text!r} is not a finite number (leave it empty when unknown)")
    return heading % 360.0


def _date(text: str) -> np.datetime64:
    """A capture time; NaT when empty."""
    if not text:
        return np.datetime64("NaT", "s")
    try:
        return parse_date(text)
    except ValueError as exc:
        raise _BadRow(f"date {exc}") from None


def _check_photo(photo: _Photo, seen: dict[Path, int], check_files: bool, check_images: bool) -> None:
    """A row's image: not listed before, present (check_files), decodable (check_images)."""
    if photo.path in seen:
        raise _BadRow(f"duplicate path {photo.raw_path} (first on row {seen[photo.path]})")
    if check_files and not photo.path.is_file():
        raise _BadRow(f"image file not found: {photo.raw_path}")
    if check_images:
        problem = _check_image(photo.path)
        if problem:
            raise _BadRow(f"{photo.raw_path}: {problem}")


def _far_rows(lat: np.ndarray, lon: np.ndarray, rows: list[int], bad: _BadRows) -> list[int]:
    """Photos farther than FAR_FROM_SET_M from the set's median position are bad rows; returns their
    indices (reached only with skip_bad, as bad() raises otherwise)."""
    from retrieval.geo import haversine_m  # pyproj and shapely: only `data check` asks for this

    lat0, lon0 = float(np.median(lat)), float(np.median(lon))
    d = haversine_m(lat0, lon0, lat, lon)
    far = np.flatnonzero(d > FAR_FROM_SET_M)
    for i in far:
        swapped = abs(lon[i]) <= 90 and haversine_m(lat0, lon0, lon[i], lat[i]) < FAR_FROM_SET_M
        bad(rows[i], f"lat {lat[i]:.6f}, lon {lon[i]:.6f} lies {d[i] / 1000:.0f} km from the rest of the set "
                     f"(median {lat0:.4f}, {lon0:.4f}; more than {FAR_FROM_SET_M / 1000:.0f} km)"
                     + ("; lat and lon swapped?" if swapped else ""))
    return far.tolist()


def _assemble(path: Path, cols: list[str], photos: list[_Photo], skipped: int) -> Manifest:
    """The Manifest of the good rows; heading, date and split only where the header has the column."""
    return Manifest(
        paths=[p.path for p in photos], lat=np.array([p.lat for p in photos]),
        lon=np.array([p.lon for p in photos]),
        heading=np.array([p.heading for p in photos]) if "heading" in cols else None,
        date=np.array([p.date for p in photos], dtype="datetime64[s]") if "date" in cols else None,
        split=[p.split for p in photos] if "split" in cols else None,
        source=path, rows=[p.row for p in photos], skipped=skipped,
    )


# --- writing a manifest ----------------------------------------------------------------------------

def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """Write atomically, with paths relative to the manifest's folder where possible."""
    path = Path(path)
    base = path.parent.resolve()
    cols = ["path", "lat", "lon"]
    if manifest.heading is not None:
        cols.append("heading")
    if manifest.date is not None:
        cols.append("date")
    if manifest.split is not None:
        cols.append("split")

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for i, p in enumerate(manifest.paths):
                p = Path(p).resolve()
                try:
                    rel = os.path.relpath(p, base)
                except ValueError:  # another drive on Windows
                    rel = str(p)
                row = [rel, f"{manifest.lat[i]:.7f}", f"{manifest.lon[i]:.7f}"]
                if manifest.heading is not None:
                    h = manifest.heading[i]
                    row.append("" if math.isnan(h) else f"{h:.1f}")
                if manifest.date is not None:
                    t = manifest.date[i]
                    row.append("" if np.isnat(t) else str(t))
                if manifest.split is not None:
                    row.append(manifest.split[i])
                w.writerow(row)

    return atomic_write(path, write)


# --- decoding images -------------------------------------------------------------------------------

def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG 'I;16', or 'I') as 8-bit 'L', scaled by 255/65535 (PIL's own convert would
    clip every value above 255 to white)."""
    a = np.asarray(im)
    a = np.clip(a.astype(np.float64) / 257.0, 0, 255)
    return Image.fromarray(np.round(a).astype(np.uint8))


def load_rgb(path: str | Path, where: str | None = None, min_side: int | None = None) -> Image.Image:
    """Decode an image upright (EXIF orientation applied) as RGB, whatever its mode. min_side: a JPEG may
    come smaller, both sides still at least this (decoded at 1/2, 1/4 or 1/8 scale)."""
    try:
        with Image.open(path) as im:
            if min_side:  # the DCT's own downscaling: 7.5x faster for a 2048-px photo (benchmarks/decode)
                im.draft(None, (min_side, min_side))
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I"):
                im = _to_8bit(im)
            elif im.mode == "F":
                im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8))
            if im.mode in ("P", "LA", "PA") or (im.mode == "RGBA"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            return im.convert("RGB")
    except IMAGE_ERRORS as exc:
        raise GeolocError(f"{where or path}: cannot read image: {image_problem(exc)}") from None
