"""An uploaded photo, checked before the model sees it: every refusal is an UploadError carrying the
HTTP status and one line that names the file and what is wrong with it. What its EXIF tells (the true
position, the capture time) is read from the same header."""
from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from retrieval import GeolocError
from retrieval.answering.locator import check_shape
from retrieval.data.manifests import IMAGE_ERRORS, image_problem, load_rgb
from retrieval.data.photo_import import read_exif_date, read_exif_gps
from retrieval.geo import haversine_m

# A 50-megapixel photo decodes to 150 MB of RGB: larger ones are refused from their header, before any
# pixel is decoded (PIL's own limit, 179 Mpx, lets a server take 0.5 GB per upload).
MAX_PIXELS = 50_000_000
# What reading a malformed EXIF block can raise: the photo is still located, without a truth or a time.
_EXIF_ERRORS = (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OSError, SyntaxError)


class UploadError(GeolocError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Upload(NamedTuple):
    image: Image.Image  # upright RGB, decoded as `geoloc query` decodes a file
    warning: str | None  # what the Locator says of an elongated one
    truth: dict | None  # its EXIF GPS position ({lat, lon})
    taken: np.datetime64  # its EXIF capture time, NaT when unknown


def read_upload(name: str, data: bytes, max_pixels: int = MAX_PIXELS) -> Upload:
    """The photo, or an UploadError saying why it cannot be located."""
    if not data:
        raise UploadError(400, f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            exif = im.getexif()
    except Image.DecompressionBombError as exc:
        raise UploadError(413, f"{name}: {image_problem(exc)}") from None
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image (expected a JPEG or PNG photo)") from None
    except IMAGE_ERRORS as exc:
        raise UploadError(400, f"{name}: cannot read image: {image_problem(exc)}") from None
    if w * h > max_pixels:
        raise UploadError(413, f"{name}: image is {w} x {h} px ({w * h / 1e6:.0f} Mpx), too large to decode: "
                               f"this server decodes at most {max_pixels / 1e6:.0f} Mpx")
    try:
        image = load_rgb(io.BytesIO(data), where=name)
        warning = check_shape(image, name)
    except GeolocError as exc:
        raise UploadError(400, str(exc)) from None
    return Upload(image, warning, _exif_position(exif), _exif_time(exif))


def _exif_position(exif: Image.Exif) -> dict | None:
    try:
        lat, lon, _ = read_exif_gps("", exif)
    except _EXIF_ERRORS:
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return {"lat": lat, "lon": lon}


def _exif_time(exif: Image.Exif) -> np.datetime64:
    try:
        return read_exif_date(exif)
    except _EXIF_ERRORS:
        return np.datetime64("NaT", "s")


def with_truth(answer: dict, truth: dict | None) -> dict:
    """The answer with `truth` (the photo's EXIF position and the answer's distance from it) when known."""
    if truth is None or "error" in answer:
        return answer
    error_m = float(haversine_m(answer["lat"], answer["lon"], truth["lat"], truth["lon"]))
    return {**answer, "truth": {**truth, "error_m": round(error_m, 1)}}
