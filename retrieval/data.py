"""Geotagged photo manifests: reading and checking them, importers, the image Dataset, spatial splits.

A manifest is a CSV with columns path,lat,lon and optional heading,split. Relative paths are relative
to the manifest's own folder, so a data folder can be moved as a whole.
"""
from __future__ import annotations

import csv
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval import GeolocError

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


# What decoding a bad image raises: unreadable or truncated files, and images too large to decode
# (PIL refuses more than 2 x Image.MAX_IMAGE_PIXELS pixels as a possible decompression bomb).
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_problem(exc: BaseException) -> str:
    """One line saying why an image could not be decoded."""
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode ({exc})".replace(", could be decompression bomb DOS attack.", "")
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
    from datetime import datetime

    core = re.sub(r"(Z|[+-]\d\d:?\d\d)$", "", text.strip())
    for fmt in DATE_FORMATS:
        try:
            return np.datetime64(datetime.strptime(core, fmt), "s")
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a date (write 2024-05-01 or 2024-05-01T14:03:07)")


def read_manifest(path: str | Path, skip_bad: bool = False, check_files: bool = True,
                  check_images: bool | None = None, check_far: bool = False) -> Manifest:
    """Read and check a manifest. A bad row raises GeolocError naming file, row and problem;
    with skip_bad it is skipped with a warning and counted in Manifest.skipped. check_images (default:
    skip_bad) decodes every image, so that with skip_bad a corrupt image is skipped here rather than
    stopping training when the images are decoded. check_far flags rows more than FAR_FROM_SET_M from
    the median position of the set (lat/lon swapped, a photo from another city)."""
    path = Path(path)
    if check_images is None:
        check_images = skip_bad
    if not path.is_file():
        raise GeolocError(f"{path}: manifest not found")
    base = path.parent
    paths: list[Path] = []
    lats: list[float] = []
    lons: list[float] = []
    headings: list[float] = []
    dates: list[np.datetime64] = []
    splits: list[str] = []
    rows: list[int] = []
    seen: dict[Path, int] = {}
    skipped = 0

    def bad(row_no: int, problem: str) -> None:
        nonlocal skipped
        msg = f"{path}: row {row_no}: {problem}"
        if not skip_bad:
            raise GeolocError(msg)
        warnings.warn(msg, stacklevel=3)
        skipped += 1

    try:
        # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte order mark
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in ("path", "lat", "lon") if c not in cols]
            if missing:
                raise GeolocError(f"{path}: missing column(s) {', '.join(missing)} (header is {','.join(cols)})")
            reader.fieldnames = cols
            has_heading, has_split, has_date = "heading" in cols, "split" in cols, "date" in cols
            for row_no, row in enumerate(reader, start=2):
                raw_path = (row.get("path") or "").strip()
                if not raw_path:
                    bad(row_no, "empty path")
                    continue
                p = Path(raw_path)
                p = (p if p.is_absolute() else base / p).resolve()
                values = {}
                problem = None
                for name, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0)):
                    text = (row.get(name) or "").strip()
                    try:
                        v = float(text)
                    except ValueError:
                        problem = f"{name} {text!r} is not a number"
                        break
                    if not math.isfinite(v) or not lo <= v <= hi:
                        problem = f"{name} {text} is out of range [{lo:g}, {hi:g}]"
                        break
                    values[name] = v
                heading = math.nan
                text = (row.get("heading") or "").strip() if has_heading else ""
                if problem is None and text:
                    try:
                        heading = float(text)
                    except ValueError:
                        problem = f"heading {text!r} is not a number"
                    else:
                        if math.isfinite(heading):
                            heading %= 360.0
                        else:
                            problem = f"heading {text!r} is not a finite number (leave it empty when unknown)"
                date = np.datetime64("NaT", "s")
                text = (row.get("date") or "").strip() if has_date else ""
                if problem is None and text:
                    try:
                        date = parse_date(text)
                    except ValueError as exc:
                        problem = f"date {exc}"
                split = (row.get("split") or "").strip() if has_split else ""
                if problem is None and split and split not in SPLITS:
                    problem = f"split {split!r} is not one of {', '.join(SPLITS)}"
                if problem is None and p in seen:
                    problem = f"duplicate path {raw_path} (first on row {seen[p]})"
                if problem is None and check_files and not p.is_file():
                    problem = f"image file not found: {raw_path}"
                if problem is None and check_images:
                    problem = _check_image(p)
                    problem = problem and f"{raw_path}: {problem}"
                if problem is not None:
                    bad(row_no, problem)
                    continue
                seen[p] = row_no
                paths.append(p)
                lats.append(values["lat"])
                lons.append(values["lon"])
                headings.append(heading)
                dates.append(date)
                splits.append(split)
                rows.append(row_no)
    except UnicodeDecodeError:
        raise GeolocError(f"{path}: {_not_utf8(path)}; save the manifest as UTF-8 CSV") from None
    except csv.Error as exc:
        raise GeolocError(f"{path}: not a readable CSV ({exc})") from None
    if check_far and len(paths) > 2:
        far = set(_far_rows(path, np.array(lats), np.array(lons), rows, bad))
        if far:
            keep = [i for i in range(len(paths)) if i not in far]
            paths, lats, lons = [paths[i] for i in keep], [lats[i] for i in keep], [lons[i] for i in keep]
            headings, splits, rows = [headings[i] for i in keep], [splits[i] for i in keep], [rows[i] for i in keep]
            dates = [dates[i] for i in keep]
    if not paths:
        raise GeolocError(f"{path}: no usable rows")
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} bad row(s)", stacklevel=2)
    return Manifest(
        paths=paths, lat=np.array(lats), lon=np.array(lons),
        heading=np.array(headings) if has_heading else None,
        date=np.array(dates, dtype="datetime64[s]") if has_date else None,
        split=splits if has_split else None, source=path, rows=rows, skipped=skipped,
    )


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8, for the message (the decoder's own offset is within a chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}, e.g. Latin-1 or another code page)"
    return "not UTF-8 text"


def _far_rows(path: Path, lat: np.ndarray, lon: np.ndarray, rows: list[int], bad) -> list[int]:
    """Photos farther than FAR_FROM_SET_M from the set's median position are bad rows; returns their
    indices (reached only with skip_bad, as bad() raises otherwise)."""
    from retrieval.geo import haversine_m

    lat0, lon0 = float(np.median(lat)), float(np.median(lon))
    d = haversine_m(lat0, lon0, lat, lon)
    far = np.flatnonzero(d > FAR_FROM_SET_M)
    for i in far:
        swapped = abs(lon[i]) <= 90 and haversine_m(lat0, lon0, lon[i], lat[i]) < FAR_FROM_SET_M
        bad(rows[i], f"lat {lat[i]:.6f}, lon {lon[i]:.6f} lies {d[i] / 1000:.0f} km from the rest of the set "
                     f"(median {lat0:.4f}, {lon0:.4f}; more than {FAR_FROM_SET_M / 1000:.0f} km)"
                     + ("; lat and lon swapped?" if swapped else ""))
    return far.tolist()


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """Write atomically, with paths relative to the manifest's folder where possible."""
    from retrieval.util import atomic_write

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


# --- importers -------------------------------------------------------------------------------------

_NUM = r"[-+]?\d+(?:\.\d+)?"
_SEED_RE = re.compile(rf"^({_NUM})_({_NUM})$")


def _image_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise GeolocError(f"{src}: no such file or folder")
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GeolocError(f"{src}: no .jpg/.jpeg/.png files found")
    return files


def parse_seed_name(name: str) -> tuple[float, float]:
    """The seed study's '<lat>_<lon>.jpg'."""
    m = _SEED_RE.match(Path(name).stem)
    if not m:
        raise ValueError("file name is not <lat>_<lon>.jpg")
    return float(m.group(1)), float(m.group(2))


def parse_vpr_name(name: str) -> tuple[float, float, float]:
    """The VPR convention '@utm_east@utm_north@zone@band@lat@lon@pano@tile@heading@...@.jpg'.

    Returns lat, lon, heading (NaN if absent). Empty lat/lon fields are derived from the UTM fields.
    """
    fields = Path(name).name.split("@")
    if len(fields) < 7 or fields[0] != "":
        raise ValueError("file name is not @utm_east@utm_north@zone@band@lat@lon@...@.jpg")
    east, north, zone, band, lat, lon = fields[1:7]
    heading = math.nan
    if len(fields) > 9 and fields[9].strip():
        try:
            heading = float(fields[9]) % 360.0
        except ValueError:
            pass
    if lat.strip() and lon.strip():
        return float(lat), float(lon), heading
    from pyproj import CRS, Transformer

    try:
        zone_no = int(zone)
    except ValueError:
        raise ValueError(f"UTM zone {zone!r} is not a number") from None
    if not 1 <= zone_no <= 60:
        raise ValueError(f"UTM zone {zone_no} is out of range [1, 60]")
    band = band.strip().upper()
    if band and (len(band) != 1 or band not in "CDEFGHJKLMNPQRSTUVWX"):
        raise ValueError(f"UTM latitude band {band!r} is not one of C-X")
    try:
        e, n = float(east), float(north)
    except ValueError:
        raise ValueError(f"UTM easting/northing {east!r}, {north!r} are not numbers") from None
    south = band < "N"
    crs = CRS.from_dict({"proj": "utm", "zone": zone_no, "south": south})
    lon_v, lat_v = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(e, n)
    if not (math.isfinite(lat_v) and math.isfinite(lon_v)):
        raise ValueError(f"UTM position {east}, {north} in zone {zone_no}{band} is not on the Earth")
    return float(lat_v), float(lon_v), heading


def _rational(v) -> float:
    if isinstance(v, tuple):
        return float(v[0]) / float(v[1])
    return float(v)


def read_exif_gps(path: str | Path, exif: Image.Exif | None = None) -> tuple[float, float, float]:
    """lat, lon and heading (GPSImgDirection, NaN if absent) from a JPEG's EXIF GPS block (or from
    `exif`, already read from it)."""
    if exif is None:
        with Image.open(path) as im:
            exif = im.getexif()
    gps = exif.get_ifd(0x8825)
    if not gps or 2 not in gps or 4 not in gps:
        raise ValueError("no GPS position in EXIF")

    def dms(values, ref) -> float:
        d, m, s = (_rational(v) for v in values)
        deg = d + m / 60.0 + s / 3600.0
        return -deg if str(ref).strip().upper() in ("S", "W") else deg

    lat = dms(gps[2], gps.get(1, "N"))
    lon = dms(gps[4], gps.get(3, "E"))
    if lat == 0 and lon == 0:  # what a camera without a GPS fix writes
        raise ValueError("EXIF GPS position is exactly 0, 0: no position")
    heading = _rational(gps[17]) % 360.0 if 17 in gps else math.nan
    return lat, lon, heading


def read_exif_date(exif: Image.Exif) -> np.datetime64:
    """Capture time from a photo's EXIF (DateTimeOriginal, else DateTime); NaT when absent or unreadable."""
    text = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
    try:
        return parse_date(str(text)) if text else np.datetime64("NaT", "s")
    except ValueError:
        return np.datetime64("NaT", "s")


def _exif_fields(path: Path) -> tuple[float, float, float, np.datetime64]:
    with Image.open(path) as im:
        exif = im.getexif()
    return (*read_exif_gps(path, exif), read_exif_date(exif))


def import_photos(src: str | Path, fmt: str, skip_bad: bool = False) -> Manifest:
    """Build a manifest from a folder (or single file) of photos in one of the known conventions."""
    src = Path(src)
    no_date = np.datetime64("NaT", "s")
    parsers = {  # each gives lat, lon, heading, capture time
        "seed": lambda p: (*parse_seed_name(p.name), math.nan, no_date),
        "vpr": lambda p: (*parse_vpr_name(p.name), no_date),
        "exif": _exif_fields,
    }
    if fmt not in parsers:
        raise GeolocError(f"unknown import format {fmt!r} (choose seed, vpr or exif)")
    paths, lats, lons, heads, dates = [], [], [], [], []
    skipped = 0
    for p in _image_files(src):
        try:
            lat, lon, heading, date = parsers[fmt](p)
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"coordinate out of range ({lat}, {lon})")
        except (*IMAGE_ERRORS, KeyError, ZeroDivisionError) as exc:
            msg = f"{p}: {exc}"
            if not skip_bad:
                raise GeolocError(msg) from None
            warnings.warn(msg, stacklevel=2)
            skipped += 1
            continue
        paths.append(p.resolve())
        lats.append(lat)
        lons.append(lon)
        heads.append(heading)
        dates.append(date)
    if not paths:
        raise GeolocError(f"{src}: no photo could be imported as {fmt}")
    heading, date = np.array(heads), np.array(dates, dtype="datetime64[s]")
    return Manifest(paths=paths, lat=np.array(lats), lon=np.array(lons),
                    heading=None if np.isnan(heading).all() else heading,
                    date=None if np.isnat(date).all() else date, skipped=skipped)


# --- images ----------------------------------------------------------------------------------------

def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG 'I;16', or 'I') as 8-bit 'L', scaled by 255/65535 (PIL's own convert would
    clip every value above 255 to white)."""
    a = np.asarray(im)
    a = np.clip(a.astype(np.float64) / 257.0, 0, 255)
    return Image.fromarray(np.round(a).astype(np.uint8))


def load_rgb(path: str | Path, where: str | None = None) -> Image.Image:
    """Decode an image upright (EXIF orientation applied) as RGB, whatever its mode."""
    try:
        with Image.open(path) as im:
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


class PhotoDataset:
    """torch Dataset over a manifest: (image tensor, index). Coordinates stay in the manifest."""

    def __init__(self, manifest: Manifest, transform=None):
        self.manifest = manifest
        self.transform = transform

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int):
        im = load_rgb(self.manifest.paths[i], where=self.manifest.describe(i))
        if self.transform is not None:
            im = self.transform(im)
        return im, i


# --- spatial split ---------------------------------------------------------------------------------

def spatial_split(lat, lon, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  gap_m: float = 25.0, block_m: float = 250.0, seed: int = 0) -> np.ndarray:
    """Assign each photo to 'train', 'val', 'test' or '' (dropped) without spatial leakage.

    Square blocks of block_m are given whole to one split (deterministic for a seed); then any
    held-out photo within gap_m of a training photo is dropped, so no test or validation photo has
    a training photo closer than gap_m.
    """
    from scipy.spatial import cKDTree

    from retrieval.geo import LocalProjection

    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if not 0 <= val_fraction + test_fraction < 1:
        raise GeolocError("split: val_fraction + test_fraction must be in [0, 1)")
    x, y = LocalProjection.for_points(lat, lon).to_xy(lat, lon)
    bx = np.floor((x - x.min()) / block_m).astype(np.int64)
    by = np.floor((y - y.min()) / block_m).astype(np.int64)
    blocks, block_of = np.unique(np.column_stack([bx, by]), axis=0, return_inverse=True)
    block_of = block_of.ravel()
    counts = np.bincount(block_of, minlength=len(blocks))
    order = np.random.default_rng(seed).permutation(len(blocks))
    # Fill test then val to their photo-count targets, in random block order; the rest is train.
    block_split = np.full(len(blocks), "train", dtype=object)
    targets = [("test", test_fraction * len(lat)), ("val", val_fraction * len(lat))]
    filled = {"test": 0, "val": 0}
    t = 0
    for b in order:
        while t < len(targets) and filled[targets[t][0]] >= targets[t][1]:
            t += 1
        if t == len(targets):
            break
        block_split[b] = targets[t][0]
        filled[targets[t][0]] += counts[b]
    split = block_split[block_of].astype(object)
    train = split == "train"
    if gap_m > 0 and train.any() and (~train).any():
        d, _ = cKDTree(np.column_stack([x[train], y[train]])).query(np.column_stack([x[~train], y[~train]]))
        held = np.flatnonzero(~train)
        split[held[d < gap_m]] = ""
    return split.astype(str)


def random_split(n: int, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Photos drawn at random for val and test, the rest train (the seed study's protocol)."""
    if not 0 <= val_fraction + test_fraction < 1:
        raise GeolocError("split: val_fraction + test_fraction must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    split = np.full(n, "train", dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return split.astype(str)


def place_split(lat, lon, val_fraction: float = 0.1, test_fraction: float = 0.1, radius_m: float = 25.0,
                seed: int = 0, date=None) -> np.ndarray:
    """Held-out photos of places the database covers (place recognition, as Pitts30k or MSLS): photos
    drawn at random, each kept out only if a training photo stays within radius_m of it (that photo is
    then never held out itself). Fewer than asked are held out where photos have no near neighbour.

    With capture dates (datetime64, NaT where unknown) the held-out photos are the latest ones whose
    partner was taken on an earlier day, so a query is a later visit to a place the database saw
    (as MSLS); photos without a date are never held out."""
    from scipy.spatial import cKDTree

    from retrieval.geo import LocalProjection

    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if not 0 <= val_fraction + test_fraction < 1:
        raise GeolocError("split: val_fraction + test_fraction must be in [0, 1)")
    xy = np.column_stack(LocalProjection.for_points(lat, lon).to_xy(lat, lon))
    near = cKDTree(xy).query_ball_point(xy, radius_m)
    rng = np.random.default_rng(seed)
    split = np.full(len(lat), "train", dtype=object)
    anchored = np.zeros(len(lat), dtype=bool)  # training photos some held-out photo relies on
    want = {"test": round(test_fraction * len(lat)), "val": round(val_fraction * len(lat))}
    order = rng.permutation(len(lat))
    day = None
    if date is not None and not np.isnat(date).all():
        day = np.asarray(date, dtype="datetime64[D]")
        dated = order[~np.isnat(day[order])]
        order = dated[np.argsort(-day[dated].astype(np.int64), kind="stable")]  # latest first, ties random
    for i in order:
        name = next((k for k, v in want.items() if v > 0), None)
        if name is None:
            break
        if anchored[i]:
            continue
        partners = [j for j in near[i] if j != i and split[j] == "train" and (day is None or day[j] < day[i])]
        if not partners:
            continue
        split[i] = name
        anchored[partners[rng.integers(len(partners))]] = True
        want[name] -= 1
    return split.astype(str)


SPLIT_MODES = ("place", "spatial", "random")


def split_photos(mode: str, lat, lon, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 gap_m: float = 25.0, block_m: float = 250.0, radius_m: float = 25.0, seed: int = 0,
                 date=None) -> np.ndarray:
    """'train'/'val'/'test' ('' dropped) per photo by `mode`: place (place_split: every held-out photo
    has a training photo within radius_m, taken on an earlier day where dates are known), spatial
    (spatial_split: unseen streets, nothing within gap_m) or random (random_split)."""
    if mode == "place":
        return place_split(lat, lon, val_fraction, test_fraction, radius_m, seed, date)
    if mode == "spatial":
        return spatial_split(lat, lon, val_fraction, test_fraction, gap_m, block_m, seed)
    if mode == "random":
        return random_split(len(lat), val_fraction, test_fraction, seed)
    raise GeolocError(f"split mode {mode!r}: choose one of {', '.join(SPLIT_MODES)}")


def split_counts(split, where: str) -> dict[str, int]:
    """Photos per split of a spatial_split result; a split that leaves no training photo is an error
    (nothing to learn from, nothing to index), naming the counts and what to change."""
    split = np.asarray(split)
    counts = {s: int((split == s).sum()) for s in SPLITS}
    if counts["train"] == 0:
        raise GeolocError(f"{where}: the split leaves no training photos (train 0, val {counts['val']}, "
                          f"test {counts['test']}, dropped {int((split == '').sum())}): use smaller blocks "
                          "(--block-m), a smaller --gap-m or smaller --val/--test fractions, or more photos")
    return counts


def load_splits(data: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.1,
                gap_m: float = 25.0, block_m: float = 250.0, seed: int = 0,
                skip_bad: bool = False, mode: str = "place", radius_m: float = 25.0) -> dict[str, Manifest]:
    """train/val/test manifests from a data folder (train.csv [val.csv] [test.csv], as the renderer
    writes) or from one manifest (its split column, else a split by `mode`). A missing val set is
    carved out of train by `mode` (see split_photos), so model selection never sees test photos and
    asks the kind of question the test asks."""
    data = Path(data)
    out: dict[str, Manifest] = {}
    if data.is_dir():
        if not (data / "train.csv").is_file():
            raise GeolocError(f"{data}: data folder has no train.csv")
        for name in SPLITS:
            if (data / f"{name}.csv").is_file():
                out[name] = read_manifest(data / f"{name}.csv", skip_bad=skip_bad)
        pool, carve_test = out.pop("train"), 0.0
    else:
        pool = read_manifest(data, skip_bad=skip_bad)
        if pool.split is not None:
            return {name: pool.where_split(name) for name in SPLITS if name in pool.split}
        carve_test = test_fraction
    want_val = "val" not in out and val_fraction > 0
    if not want_val and carve_test == 0:
        out["train"] = pool
        return out
    split = split_photos(mode, pool.lat, pool.lon, val_fraction if want_val else 0.0, carve_test,
                         gap_m, block_m, radius_m, seed, pool.date)
    split_counts(split, str(data))
    for name in SPLITS:
        idx = np.flatnonzero(split == name)
        if len(idx):
            out[name] = pool.subset(idx)
    return out
