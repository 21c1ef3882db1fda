"""Panoramax (GeoVisio) and any STAC API: an item search over an area, each item turned into a Picture.

Panoramax is federated street-level imagery under open licences, with no account needed. A picture is a
STAC item: its point geometry, `properties.datetime`, `view:azimuth` (the heading), `license`,
`pers:interior_orientation.field_of_view` (360 for an equirectangular panorama), `collection` (its
sequence), `providers` (the producer: its author) and `assets` hd/sd/thumb (the image at three sizes).
"""
from __future__ import annotations

import math
from typing import Iterator

from retrieval import GeolocError
from retrieval.data.fetch import RETRY_STATUSES, Picture, Unreachable, _short, search_boxes

DEFAULT_API = "https://api.panoramax.xyz/api"  # the meta-catalogue of every Panoramax instance
# The EXIF/XMP tags a camera states its direction in (what GeoVisio's reader, geopic-tag-reader, reads). A
# picture without any gets its view:azimuth from GeoVisio along its sequence's path (0 for a lone picture):
# a guess, which we leave out (an empty heading) rather than train on.
DIRECTION_TAGS = ("Exif.GPSInfo.GPSImgDirection", "Exif.GPSInfo.GPSTrack", "Xmp.GPano.PoseHeadingDegrees",
                  "Xmp.Camera.Yaw")
PER_REQUEST = 1000  # pictures asked in one search (GeoVisio answers up to 10000)


def picture_of(item: dict, size: str) -> Picture:
    """Our Picture of one STAC item (a dict, as the API returns it)."""
    props = item.get("properties") or {}
    coords = (item.get("geometry") or {}).get("coordinates") or []
    lon, lat = (float(coords[0]), float(coords[1])) if len(coords) >= 2 else (None, None)
    azimuth = props.get("view:azimuth") if _has_direction(props) else None
    fov = (props.get("pers:interior_orientation") or {}).get("field_of_view")
    assets = item.get("assets") or {}
    asset = assets.get(size) or assets.get("sd") or assets.get("hd") or {}
    return Picture(
        source_id=str(item["id"]), lat=lat, lon=lon,
        heading=float(azimuth) if isinstance(azimuth, (int, float)) and math.isfinite(azimuth) else None,
        date=str(props.get("datetime") or ""), sequence=str(item.get("collection") or ""),
        licence=str(props.get("license") or _licence_link(item)), author=_author(item, props),
        url=str(asset.get("href") or ""),
        pano=None if fov is None else float(fov) >= 360)


def _has_direction(props: dict) -> bool:
    """Whether view:azimuth is the camera's own: its EXIF states one, or the API shows no EXIF to tell."""
    exif = props.get("exif")
    if not isinstance(exif, dict) or not exif:
        return True
    return any(tag in exif for tag in DIRECTION_TAGS) or "MAPCompassHeading" in str(exif.get("Exif.Image.ImageDescription"))


def _author(item: dict, props: dict) -> str:
    producers = [p.get("name") for p in item.get("providers") or props.get("providers") or []
                 if "producer" in (p.get("roles") or [])]
    return str(producers[-1] if producers else props.get("geovisio:producer") or "")


def _licence_link(item: dict) -> str:
    return next((link.get("title") or link.get("href") or "" for link in item.get("links") or []
                 if link.get("rel") == "license"), "")


def search(api: str, bbox: tuple[float, float, float, float], size: str, session, timeout_s: float = 30.0,
           per_request: int = PER_REQUEST) -> Iterator[Picture]:
    """Every picture in bbox (W, S, E, N), as they come, through pystac-client, which follows the API's
    `next` links. GeoVisio answers a search with the `limit` pictures nearest the box's centre and no next
    link: a box whose answer is full that way is split in four until none is (retrieval.data.fetch.search_boxes).
    session: retrieval.data.fetch.http_session (retries, backoff)."""
    import requests
    from pystac import STACError
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    stac_io = StacApiIO(timeout=timeout_s)
    stac_io.session = session  # our retries and backoff, and one connection pool

    def query(box):
        pages = list(client.search(bbox=list(box), limit=per_request).pages_as_dicts())
        last = pages[-1] if pages else {}
        full = len(last.get("features") or []) >= per_request and not any(
            link.get("rel") == "next" for link in last.get("links") or [])
        return [f for page in pages for f in page.get("features") or []], full

    try:
        client = Client.open(api.rstrip("/"), stac_io=stac_io)
        client.add_conforms_to("ITEM_SEARCH")  # some Panoramax instances do not declare it, and all serve /search
        # a picture still being processed has no image yet
        items = (item for item in search_boxes(bbox, query, "panoramax") if item.get("assets"))
        yield from (picture_of(item, size) for item in items)
    except requests.RequestException as exc:
        raise Unreachable(f"{api}: {_short(exc)}") from None
    except APIError as exc:  # pystac-client's for a refusal, and for a connection that failed (no status)
        status = getattr(exc, "status_code", None)
        if status is None or status in RETRY_STATUSES:
            raise Unreachable(f"{api}: {'HTTP %s' % status if status else ' '.join(str(exc).split())[:200]}") from None
        raise GeolocError(f"{api}: the STAC search was refused (HTTP {status}: {' '.join(str(exc).split())[:200]})") from None
    except (ValueError, KeyError, STACError) as exc:  # an answer that is not a STAC API's
        raise GeolocError(f"{api}: not a STAC API ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                          "--api takes a Panoramax/GeoVisio API such as https://api.panoramax.xyz/api") from None
