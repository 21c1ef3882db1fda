"""Mapillary (CC BY-SA 4.0, a free token) through its Graph API v4: the images of an area, each a Picture.

`GET {api}/images?bbox=W,S,E,N&fields=...&limit=N` answers {"data": [image, ...]} (a `paging.next` link
where it pages), at most `limit` images per request (2000), for a bbox of at most 0.01 square degrees: a
larger area is asked box by box, and a box that fills a request is split in four until none does. An image
carries `computed_geometry` (the position after structure from motion) and `geometry` (the GPS's),
`computed_compass_angle`/`compass_angle`, `captured_at` (Unix milliseconds), `sequence`, `is_pano`,
`creator.username` and thumbnail URLs that expire: a 403 on one asks
`GET {api}/{id}?fields=thumb_..._url` for a fresh one. The token goes in the Authorization header of API
requests only (never in a URL, a file or a message; the thumbnails are fetched without it).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Iterator

from retrieval import GeolocError
from retrieval.data.fetch import Picture, Skipped, get_json, search_boxes

DEFAULT_API = "https://graph.mapillary.com"
LICENCE = "CC-BY-SA-4.0"
PER_REQUEST = 2000  # the images search's cap on one answer
MAX_AREA_DEG2 = 0.01  # the images search refuses a larger bbox (square degrees)
THUMBS = {"thumb": "thumb_256_url", "sd": "thumb_1024_url", "hd": "thumb_2048_url"}
FIELDS = ("id", "computed_geometry", "geometry", "computed_compass_angle", "compass_angle", "captured_at",
          "sequence", "is_pano", "creator")
TOKEN_ENV = "MAPILLARY_TOKEN"


def picture_of(image: dict, size: str) -> Picture:
    """Our Picture of one image of the Graph API's answer."""
    point = image.get("computed_geometry") or image.get("geometry") or {}
    coords = point.get("coordinates") or []
    lon, lat = (float(coords[0]), float(coords[1])) if len(coords) >= 2 else (None, None)
    heading = image.get("computed_compass_angle", image.get("compass_angle"))
    if not isinstance(heading, (int, float)) or not math.isfinite(heading):
        heading = None
    ms = image.get("captured_at")
    date = (datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            if isinstance(ms, (int, float)) else "")
    sequence = image.get("sequence")
    if isinstance(sequence, dict):  # {"id": ...} where the field is expanded
        sequence = sequence.get("id")
    return Picture(source_id=str(image["id"]), lat=lat, lon=lon, heading=heading, date=date,
                   sequence=str(sequence or ""), licence=LICENCE,
                   author=str((image.get("creator") or {}).get("username") or ""),
                   url=str(image.get(THUMBS[size]) or ""), pano=bool(image.get("is_pano")))


class Mapillary:
    """The images of areas, and fresh thumbnail URLs, through one API session holding the token."""

    def __init__(self, api: str, token: str, size: str, session, timeout_s: float = 30.0,
                 per_request: int = PER_REQUEST):
        if not token:
            raise GeolocError(f"mapillary: no token: pass --token or set {TOKEN_ENV} (a free client token from "
                              "https://www.mapillary.com/dashboard/developers)")
        self.api, self.size, self.timeout_s, self.per_request = api.rstrip("/"), size, timeout_s, per_request
        self.session = session
        session.headers["Authorization"] = f"OAuth {token}"

    def _get(self, url: str, what: str, params: dict | None = None) -> dict:
        try:
            return get_json(self.session, url, what, self.timeout_s, params=params)
        except GeolocError as exc:
            if " HTTP 401 " in f" {exc} " or "OAuth" in str(exc):
                raise GeolocError(f"mapillary: the token was refused ({exc}); check --token or {TOKEN_ENV}") from None
            raise

    def _box(self, bbox) -> list[dict]:
        """Every image of one box, following `paging.next` where the answer pages."""
        params = {"bbox": ",".join(f"{v:.7f}" for v in bbox), "limit": self.per_request,
                  "fields": ",".join((*FIELDS, THUMBS[self.size]))}
        answer = self._get(f"{self.api}/images", f"mapillary images in {params['bbox']}", params)
        images = list(answer.get("data") or [])
        while (answer.get("paging") or {}).get("next") and len(images) < self.per_request:
            answer = self._get(answer["paging"]["next"], f"mapillary images in {params['bbox']} (next page)")
            images += answer.get("data") or []
        return images

    def search(self, bbox) -> Iterator[Picture]:
        """The pictures of bbox (W, S, E, N), box by box: a box that fills a request is split in four."""
        def query(box):
            images = self._box(box)
            return images, len(images) >= self.per_request

        images = search_boxes(bbox, query, "mapillary", MAX_AREA_DEG2)
        return (picture_of(image, self.size) for image in images)

    def refresh(self, pic: Picture) -> str:
        """A fresh thumbnail URL for a picture whose URL expired (403)."""
        field = THUMBS[self.size]
        answer = self._get(f"{self.api}/{pic.source_id}", f"mapillary image {pic.source_id}", {"fields": field})
        url = answer.get(field)
        if not url:
            raise Skipped(f"{pic.source_id}: its URL expired and the API gives no new {field}")
        return str(url)
