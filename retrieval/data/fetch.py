"""Street-level photos of an area from open imagery, into a data folder geoloc trains on.

A source (retrieval.data.panoramax, retrieval.data.mapillary) turns its API's answers into Pictures; this module
downloads them a few at a time, cuts panoramas into perspective views, and writes:

  DIR/images/            the photos (a panorama's views are ID_cK.jpg)
  DIR/photos.csv         path,lat,lon,heading,date,sequence,source,source_id,licence,author
  DIR/ATTRIBUTION.txt    each licence with its authors
  DIR/fetch.json         what was asked (source, API, area, size, panorama settings): a resume asks the same
  DIR/fetch-state.jsonl  one line per picture done, appended once its files are in place

A killed fetch resumes from the state file; a file under its final name is always whole (written to a
temporary name, then renamed), so a picture whose files are all there is never downloaded again.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
import warnings
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from retrieval import GeolocError, __version__
from retrieval.data.panorama import crop_offsets, crop_side, is_equirectangular, perspective_crop
from retrieval.files import atomic_write, atomic_write_json, atomic_write_text
from retrieval.locks import folder_lock

MANIFEST_COLUMNS = ("path", "lat", "lon", "heading", "date", "sequence", "source", "source_id", "licence", "author")
MANIFEST, STATE, SETTINGS, ATTRIBUTION = "photos.csv", "fetch-state.jsonl", "fetch.json", "ATTRIBUTION.txt"
IMAGES, PANORAMAS = "images", ".panoramas"  # a panorama waits in .panoramas/ until all its views are cut
SIZES = ("thumb", "sd", "hd")
# what a resume must ask exactly as the first run did (the files it already holds depend on them)
SETTINGS_KEYS = ("source", "api", "bbox", "size", "pano_crops", "fov")
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER_S = 120.0  # a server asking to wait longer is treated as down: run again later


@dataclass
class Picture:
    """One picture a search found, in the source's own terms turned into ours."""
    source_id: str
    lat: float | None  # None: no position (skipped and counted)
    lon: float | None
    heading: float | None  # degrees clockwise from north; None when the picture has no direction
    date: str  # capture time, ISO 8601; "" when unknown
    sequence: str
    licence: str
    author: str
    url: str  # the image at the chosen size
    pano: bool | None = None  # declared 360-degree panorama; None: judged from the image's 2:1 shape


@dataclass
class Options:
    out: Path
    source: str
    api: str
    bbox: tuple[float, float, float, float]  # west, south, east, north
    size: str = "sd"
    pano_crops: int = 8  # 0: panoramas kept whole
    fov: float = 90.0
    concurrency: int = 8
    max_pictures: int | None = None
    timeout_s: float = 30.0
    retries: int = 5  # per request, on connection errors and RETRY_STATUSES (with backoff, Retry-After)
    attempts: int = 3  # per picture, on a corrupt or truncated download

    def settings(self) -> dict:
        d = asdict(self)
        return {k: (list(d[k]) if k == "bbox" else d[k]) for k in SETTINGS_KEYS}


class Unreachable(Exception):
    """The server stopped answering (after the retries): the fetch stops, and a rerun resumes it."""


class Skipped(Exception):
    """One picture that cannot be had (gone, refused, corrupt after every attempt): named, and left out."""


@dataclass
class Summary:
    pictures: int = 0  # found by the search, with a position
    fetched: int = 0  # downloaded (or finished) by this run
    already: int = 0  # done by an earlier run
    panoramas: int = 0  # of those fetched, cut into views
    no_position: int = 0
    no_heading: int = 0
    failed: list[str] = field(default_factory=list)
    rows: int = 0  # manifest rows written
    seconds: float = 0.0


# --- HTTP ------------------------------------------------------------------------------------------

def http_session(concurrency: int = 8, retries: int = 5, backoff_s: float = 0.5, headers: dict | None = None):
    """A requests session that retries connection errors and 429/5xx answers with exponential backoff,
    waiting as long as a Retry-After header asks (up to MAX_RETRY_AFTER_S): urllib3's Retry does it."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        def get_retry_after(self, response):
            after = super().get_retry_after(response)
            return None if after is None else min(after, MAX_RETRY_AFTER_S)

    retry = CappedRetry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff_s,
                        status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET", "POST"}),
                        respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=max(concurrency, 4))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"geoloc/{__version__} (street-level photo geolocation)"
    session.headers.update(headers or {})
    return session


def get_json(session, url: str, what: str, timeout_s: float, **kw) -> dict:
    """GET a JSON answer; Unreachable when the server is down, GeolocError naming the URL when it refuses."""
    import requests

    try:
        r = session.get(url, timeout=timeout_s, **kw)
    except requests.RequestException as exc:
        raise Unreachable(f"{what}: {_short(exc)}") from None
    if r.status_code in RETRY_STATUSES:
        raise Unreachable(f"{what}: HTTP {r.status_code} after {len(r.raw.retries.history) if r.raw.retries else 0} retries")
    if r.status_code != 200:
        raise GeolocError(f"{what}: HTTP {r.status_code} ({_body(r)})")
    try:
        return r.json()
    except ValueError:
        raise GeolocError(f"{what}: the answer is not JSON ({_body(r)})") from None


def _short(exc: BaseException) -> str:
    """One line of a requests/urllib3 exception (they nest the whole retry history)."""
    text = str(exc)
    m = re.search(r"\(Caused by (\w+)\(", text)
    return (f"{type(exc).__name__} ({m.group(1)})" if m else f"{type(exc).__name__}: {text}")[:200]


def _body(r) -> str:
    return " ".join(r.text.split())[:160] or "empty"


# --- searching an area ----------------------------------------------------------------------------

MIN_SPAN_DEG = 1e-5  # about a metre: a box this small whose answer is still full is taken as it is


def search_boxes(bbox, query: Callable, what: str, max_area_deg2: float | None = None) -> Iterator:
    """Every item query(box) answers in bbox, where query returns (items, full): an answer that reached the
    API's cap on one answer (full) has its box split in four, until none does. An API that refuses boxes
    over an area is asked box by box of a grid within it (max_area_deg2). An item on the line between two
    boxes comes twice (fetch keeps the first)."""
    boxes = list(reversed(_grid(tuple(bbox), max_area_deg2)))  # popped from the end: the grid's order
    while boxes:
        box = boxes.pop()
        items, full = query(box)
        w, s, e, n = box
        if full:
            if e - w > MIN_SPAN_DEG and n - s > MIN_SPAN_DEG:
                cx, cy = (w + e) / 2, (s + n) / 2
                boxes += [(cx, cy, e, n), (w, cy, cx, n), (cx, s, e, cy), (w, s, cx, cy)]
                continue
            warnings.warn(f"{what}: {len(items)} pictures in a box {e - w:.1e} degrees across ({w},{s},{e},{n}) "
                          "fill an answer: taken as answered, more may be there", stacklevel=2)
        yield from items


def _grid(bbox, max_area_deg2: float | None) -> list[tuple]:
    """bbox cut into equal boxes of at most max_area_deg2 each, row by row from the south-west."""
    w, s, e, n = bbox
    if not max_area_deg2 or (e - w) * (n - s) <= max_area_deg2:
        return [bbox]
    side = math.sqrt(max_area_deg2)
    nx, ny = math.ceil((e - w) / side), math.ceil((n - s) / side)
    xs = [w + (e - w) * i / nx for i in range(nx)] + [e]
    ys = [s + (n - s) * j / ny for j in range(ny)] + [n]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(ny) for i in range(nx)]


# --- one picture -----------------------------------------------------------------------------------

def safe_name(source_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source_id)[:120]


def _decode(data: bytes):
    """The downloaded image as RGB PIL, or the problem (a truncated or corrupt file) as a string."""
    from PIL import Image

    from retrieval.data.manifests import IMAGE_ERRORS, image_problem

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except IMAGE_ERRORS as exc:
        return image_problem(exc)


def download(pic: Picture, session, opts: Options, refresh: Callable[[Picture], str] | None = None):
    """The picture's bytes and decoded image. A corrupt or truncated download is tried again (up to
    opts.attempts); a 403 asks refresh() for a new URL (Mapillary's expire); other refusals skip it."""
    import requests

    url, problem = pic.url, ""
    if not url:
        raise Skipped(f"{pic.source_id}: the API gives no image URL at size {opts.size}")
    for _ in range(opts.attempts):
        try:
            r = session.get(url, timeout=opts.timeout_s)
            data = r.content
        except requests.exceptions.ChunkedEncodingError as exc:  # the body ended early
            problem = f"truncated download ({_short(exc)})"
            continue
        except requests.RequestException as exc:
            raise Unreachable(f"{pic.source_id}: {_short(exc)}") from None
        if r.status_code in RETRY_STATUSES:
            raise Unreachable(f"{pic.source_id}: HTTP {r.status_code}, still after the retries")
        if r.status_code == 403 and refresh is not None:
            problem, url = "HTTP 403 (expired URL?)", refresh(pic)
            continue
        if r.status_code != 200:
            raise Skipped(f"{pic.source_id}: HTTP {r.status_code} ({_body(r)})")
        image = _decode(data)
        if not isinstance(image, str):
            return data, image
        problem = image
    raise Skipped(f"{pic.source_id}: {problem}, {opts.attempts} times")


def _row(pic: Picture, path: Path, out: Path, heading: float | None, source: str) -> dict:
    return {"path": path.relative_to(out).as_posix(), "lat": f"{pic.lat:.7f}", "lon": f"{pic.lon:.7f}",
            "heading": "" if heading is None else f"{heading % 360.0:.1f}", "date": pic.date,
            "sequence": pic.sequence, "source": source, "source_id": pic.source_id, "licence": pic.licence,
            "author": pic.author}


def _view_paths(out: Path, name: str, n: int) -> list[Path]:
    return [out / IMAGES / f"{name}_c{k}.jpg" for k in range(n)]


def fetch_picture(pic: Picture, session, opts: Options, refresh=None) -> tuple[list[dict], bool]:
    """The manifest rows of one picture (one per view of a panorama), and whether it was a panorama.
    Files already whole under their final names are kept, not downloaded again."""
    out, name = opts.out, safe_name(pic.source_id)
    flat = out / IMAGES / f"{name}.jpg"
    if flat.is_file():
        return [_row(pic, flat, out, pic.heading, opts.source)], False
    views = _view_paths(out, name, opts.pano_crops) if pic.pano is not False else []
    offsets = crop_offsets(len(views)) if views else []
    rows = [_row(pic, p, out, None if pic.heading is None else pic.heading + o, opts.source)
            for p, o in zip(views, offsets)]
    if views and all(p.is_file() for p in views):
        return rows, True
    raw = out / PANORAMAS / f"{name}.jpg"
    data = raw.read_bytes() if raw.is_file() else b""  # downloaded whole by a run killed while cutting it
    image = _decode(data) if data else "absent"
    if isinstance(image, str):
        data, image = download(pic, session, opts, refresh)
    if not views or not is_equirectangular(*image.size):
        atomic_write(flat, lambda p: p.write_bytes(data))
        return [_row(pic, flat, out, pic.heading, opts.source)], False
    if not raw.is_file():
        atomic_write(raw, lambda p: p.write_bytes(data))
    pano, side = np.asarray(image), crop_side(image.size[0], opts.fov)
    for path, offset in zip(views, offsets):
        if not path.is_file():
            view = perspective_crop(pano, offset, opts.fov, side)
            atomic_write(path, lambda p: _save_jpeg(view, p))
    raw.unlink()
    return rows, True


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="JPEG", quality=90)


# --- the folder: lock, settings, state, manifest, attribution ---------------------------------------

def check_settings(opts: Options) -> None:
    """Record what this fetch asks; a resume that asks otherwise is refused, naming what differs (a folder
    where nothing was fetched yet takes the new settings)."""
    path, state = opts.out / SETTINGS, opts.out / STATE
    now = opts.settings()
    if path.is_file() and state.is_file() and state.stat().st_size > 0:
        try:
            was = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise GeolocError(f"{path}: not valid JSON ({exc}); remove it to start this folder again") from None
        differ = [k for k in SETTINGS_KEYS if _norm(was.get(k)) != _norm(now[k])]
        if differ:
            listed = "; ".join(f"{k} {was.get(k)!r} -> {now[k]!r}" for k in differ)
            raise GeolocError(f"{opts.out}: holds a fetch with other settings ({listed}); choose another --out")
    atomic_write_json(path, now)


def _norm(v):
    return [round(float(x), 7) for x in v] if isinstance(v, (list, tuple)) else v


def read_state(path: Path) -> dict[str, list[dict]]:
    """source_id -> manifest rows of every picture done. A line cut short by a kill (the last) is dropped,
    and the file is cut back to whole lines so that appending goes on cleanly."""
    done: dict[str, list[dict]] = {}
    if not path.is_file():
        return done
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    for line in whole.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            done[rec["id"]] = rec["rows"]
        except (ValueError, KeyError, TypeError):
            continue
    if len(whole) != len(data):
        atomic_write(path, lambda p: p.write_bytes(whole))
    return done


def write_manifest_rows(out: Path, done: dict[str, list[dict]]) -> int:
    """photos.csv of every picture done, in one order whatever order the downloads finished in."""
    rows = sorted((r for rs in done.values() for r in rs),
                  key=lambda r: (r["sequence"], r["date"], r["source_id"], r["path"]))

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / MANIFEST, write)
    return len(rows)


def write_attribution(out: Path, source_line: str, done: dict[str, list[dict]], streets: bool) -> None:
    """ATTRIBUTION.txt: where the photos come from, each licence with its authors (most photos first)."""
    by_licence: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rows in done.values():
        if rows:
            by_licence[rows[0]["licence"] or "licence not stated"][rows[0]["author"] or "unknown author"] += 1
    lines = [source_line, "Each photo's licence and author are in photos.csv (columns licence, author).", ""]
    for licence, authors in sorted(by_licence.items(), key=lambda kv: -sum(kv[1].values())):
        names = sorted(authors, key=lambda a: (-authors[a], a))
        lines.append(f"{licence} ({sum(authors.values())} pictures): " + ", ".join(names))
    if streets:
        lines += ["", "Streets (streets.graphml): (c) OpenStreetMap contributors, ODbL 1.0, "
                      "https://www.openstreetmap.org/copyright"]
    atomic_write_text(out / ATTRIBUTION, "\n".join(lines) + "\n")


def _clean_tmp(out: Path) -> None:
    """Temporary files a killed fetch left (atomic_write's .NAME.xxxx.tmp): no live writer, we hold the lock."""
    for folder in (out, out / IMAGES, out / PANORAMAS):
        for p in folder.glob(".*.tmp") if folder.is_dir() else ():
            p.unlink(missing_ok=True)


# --- the whole fetch -------------------------------------------------------------------------------

def fetch(pictures: Iterable[Picture], opts: Options, source_line: str, refresh=None,
          streets: Callable[[], bool] | None = None, progress: bool = True) -> Summary:
    """Download every picture of the search into opts.out (see the module's docstring), opts.concurrency at a
    time; pictures done by an earlier run are kept. streets() writes streets.graphml. A server that stops
    answering ends the fetch with GeolocError once the manifest of what was done is written."""
    opts.out = Path(opts.out)
    with folder_lock(opts.out, "data fetch"):  # a second fetch, or a training, into the folder is refused
        t0 = time.perf_counter()
        check_settings(opts)
        _clean_tmp(opts.out)
        done = read_state(opts.out / STATE)
        summary, todo = _plan(pictures, done, opts)
        aborted = _download_all(todo, opts, done, summary, refresh, progress)
        summary.rows = write_manifest_rows(opts.out, done)
        write_attribution(opts.out, source_line, done, (opts.out / "streets.graphml").is_file())
        if streets is not None and aborted is None:
            try:
                streets()
            except GeolocError as exc:
                raise GeolocError(f"{exc}; the photos are fetched ({opts.out / MANIFEST}): run again with "
                                  "--streets FILE.osm.bz2 (an extract of the area) or --no-streets") from None
            write_attribution(opts.out, source_line, done, True)
    summary.seconds = time.perf_counter() - t0
    if aborted is not None:
        left = len(todo) - summary.fetched - len(summary.failed)
        why = aborted if isinstance(aborted, GeolocError) else f"{opts.source}: the server stopped answering ({aborted})"
        raise GeolocError(f"{why}; {opts.out / MANIFEST} holds the {len(done)} pictures done, {left} are left: "
                          "run the same command again to resume")
    return summary


def _plan(pictures: Iterable[Picture], done: dict, opts: Options) -> tuple[Summary, list[Picture]]:
    """The search's pictures counted (without a position, without a heading, done before) and those to fetch."""
    summary, todo, seen = Summary(), [], set()
    try:
        for pic in pictures:  # the search goes on (box by box, page by page) only as far as we read
            if opts.max_pictures is not None and summary.pictures >= opts.max_pictures:
                break
            if pic.source_id in seen:  # a picture on the border of two searched boxes
                continue
            seen.add(pic.source_id)
            if pic.lat is None or pic.lon is None or not (math.isfinite(pic.lat) and math.isfinite(pic.lon)):
                summary.no_position += 1
                continue
            summary.pictures += 1
            summary.no_heading += pic.heading is None
            if pic.source_id in done:
                summary.already += 1
            else:
                todo.append(pic)
    except Unreachable as exc:
        raise GeolocError(f"{opts.source}: the search failed, the server does not answer ({exc}); "
                          "run the same command again later") from None
    if not summary.pictures:
        w, s, e, n = opts.bbox
        raise GeolocError(f"{opts.source}: {opts.api} has no picture with a position in the bbox {w},{s},{e},{n}"
                          + (f" ({summary.no_position} without one)" if summary.no_position else "")
                          + ": choose another area (--bbox W,S,E,N, degrees)")
    return summary, todo


def _download_all(todo: list[Picture], opts: Options, done: dict, summary: Summary, refresh, progress: bool):
    """fetch_picture on each, opts.concurrency at a time; each picture done is appended to the state file as it
    comes. Returns why the fetch stopped early (the server gone, or refusing us), None when it did not."""
    from tqdm import tqdm

    session, aborted = http_session(opts.concurrency, opts.retries), None
    with open(opts.out / STATE, "a", encoding="utf-8") as log, \
            ThreadPoolExecutor(max(opts.concurrency, 1)) as pool, \
            tqdm(total=len(todo), desc=f"fetch {opts.source}", unit="picture", disable=not progress) as bar:
        queue, running = iter(todo), {}

        def submit(n: int) -> None:
            for pic in (p for _, p in zip(range(n), queue)):
                running[pool.submit(fetch_picture, pic, session, opts, refresh)] = pic

        submit(2 * opts.concurrency)  # a bounded window: a million pictures are not a million futures
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                pic = running.pop(fut)
                try:
                    rows, was_pano = fut.result()
                except (Unreachable, GeolocError) as exc:  # the server is gone, or refuses us (a token)
                    aborted = aborted or exc
                    continue
                except Skipped as exc:
                    summary.failed.append(str(exc))
                    warnings.warn(f"{opts.source}: skipped picture {exc}", stacklevel=2)
                    continue
                done[pic.source_id] = rows
                log.write(json.dumps({"id": pic.source_id, "rows": rows}) + "\n")
                log.flush()
                summary.fetched, summary.panoramas = summary.fetched + 1, summary.panoramas + was_pano
                bar.update()
            if aborted is None:
                submit(len(finished))
    return aborted
