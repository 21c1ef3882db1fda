"""Manifests from folders of photos: positions from file names (the seed study's <lat>_<lon>.jpg, the VPR
@utm_east@utm_north@...@.jpg convention) or from EXIF GPS tags, with heading and capture time where known."""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval import GeolocError
from retrieval.data.manifests import IMAGE_ERRORS, IMAGE_SUFFIXES, Manifest, parse_date

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
    from pyproj import CRS, Transformer  # lazy: only names without lat/lon need it, and it is slow to import

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
