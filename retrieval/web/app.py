"""The web app behind `geoloc serve` (Flask): the page, the city's map, located uploads as JSON (each
photo on its own, or several as one route along the streets), and thumbnails of the database photos the
answers name.

The Locator is loaded once. Flask's server answers each request on its own thread, so uploads are read
and decoded in parallel, the model runs one batch at a time under a lock, and past MAX_WAITING requests
waiting for it a new one is refused at once with 503 rather than queued without bound.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import socket
import threading
from pathlib import Path

import numpy as np
from tqdm import tqdm
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from retrieval import GeolocError
from retrieval.answering.locator import Locator
from retrieval.answering.route import NAT, Route, name_key
from retrieval.data.manifests import load_rgb
from retrieval.run import Run
from retrieval.web.city_map import city_geojson
from retrieval.web.page import page_html
from retrieval.web.uploads import MAX_PIXELS, Upload, UploadError, read_upload, with_truth

MAX_UPLOAD_MB = 20.0  # one request's body, all its photos together
MAX_WAITING = 64  # requests holding decoded photos while they wait for the model
MAX_K = 100
THUMB_PX = 240
BUSY = "the server is busy locating other photos: try again in a moment"
IMAGE_N = re.compile(r"<image (\d+)>")  # how the Locator names the images it is given in memory


def _error(status: int, message: str):
    return jsonify({"error": message}), status


def _k(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise UploadError(400, f"k={text!r}: expected a whole number of neighbours from 1 to {MAX_K}")
    return int(text)


def _read_files(files, max_pixels: int) -> list[tuple[str, Upload | UploadError]]:
    """Each uploaded file by its name (only ever used in messages), read, or refused with why."""
    out = []
    for i, f in enumerate(files):
        name = Path(f.filename or "").name or f"photo {i + 1}"
        try:
            out.append((name, read_upload(name, f.read(), max_pixels)))
        except UploadError as exc:
            out.append((name, exc))
    return out


def _route_photos(read: list[tuple[str, Upload | UploadError]]) -> tuple[list[str], list, np.ndarray, str]:
    """The uploads as Locator.locate_route takes them, in the order they were taken: names, photos (an
    UploadError stands for an unreadable one, which the Locator skips and names in its notes), capture
    times, and how they were ordered. As `geoloc query --route` orders files: by EXIF capture time when
    every photo has one (an unreadable photo has none), else by file name in natural order."""
    times = np.array([u.taken if isinstance(u, Upload) else NAT for _, u in read], dtype="datetime64[s]")
    if not np.isnat(times).any():
        order, how = np.argsort(times, kind="stable").tolist(), "capture time"
    else:
        order, how = sorted(range(len(read)), key=lambda i: name_key(read[i][0])), "file name"
    photos = [u.image if isinstance(u, Upload) else u for _, u in read]
    return [read[i][0] for i in order], [photos[i] for i in order], times[order], how


def _as_uploaded(r: Route, names: list[str], how: str) -> Route:
    """The route with its photos and notes named as uploaded (the Locator names the images it is given in
    memory <image N>), its order told as `how` (it keeps such images as given unless all have times)."""
    def named(text: str) -> str:
        return IMAGE_N.sub(lambda m: names[int(m.group(1))], text)

    for pt in r.points:
        pt.source = named(pt.source)
    r.notes = [named(n) for n in r.notes]
    if how != r.order:
        missing = sum(pt.time == "" for pt in r.points)
        r.order, r.notes = how, [f"{missing} of {len(r.points)} photos have no capture time: ordered by file name, "
                                 "steps without times expected at route.step_m"] + r.notes
    return r


class _Model:
    """The Locator shared by the request threads: one batch at a time under a lock, and at most
    max_waiting requests holding decoded photos (past that a request is refused at once, unread)."""

    def __init__(self, loc: Locator, max_waiting: int, max_pixels: int, public: dict[str, str]):
        self.loc, self.max_pixels, self.public = loc, max_pixels, public
        self.lock, self.slots = threading.Lock(), threading.BoundedSemaphore(max_waiting)

    @contextlib.contextmanager
    def slot(self):
        """Yields the files reader, or None when every slot is taken (answer 503)."""
        if not self.slots.acquire(blocking=False):
            yield None
            return
        try:
            yield functools.partial(_read_files, max_pixels=self.max_pixels)
        finally:
            self.slots.release()

    def locate(self, files, k: int | None):
        """Each uploaded `photo` field answered as `geoloc query --json` answers a file (`path`: the
        uploaded name), plus `truth` where the photo carries EXIF GPS. Like `geoloc query`, a photo that
        cannot be located gets its own `error` and the others are answered; the status is then the
        first failure's 4xx."""
        with self.slot() as read_files:
            if read_files is None:
                return _error(503, BUSY)
            read = read_files(files)
            results = [{"path": name, "error": str(u)} if isinstance(u, UploadError) else None for name, u in read]
            statuses = [u.status for _, u in read if isinstance(u, UploadError)]
            good = [i for i, (_, u) in enumerate(read) if isinstance(u, Upload)]
            if good:
                with self.lock:
                    answers = self.loc.locate([read[i][1].image for i in good], k)
                for i, a in zip(good, answers):
                    name, u = read[i]
                    a.source, a.warning = name, u.warning  # named as uploaded, not "<image N>"
                    for n in a.neighbours:
                        n.path = self.public[n.path]
                    results[i] = with_truth(a.to_dict(), u.truth)
                    statuses += [400] if a.error else []
        return jsonify(results), (statuses[0] if statuses else 200)

    def route(self, files):
        """The uploaded `photo` fields located together as one route (Locator.locate_route): its GeoJSON
        (Route.geojson) with Route.to_dict's fields, photos named as uploaded. As in locate, an
        unreadable photo is named, skipped, and its 4xx is the status; the route goes on without it."""
        with self.slot() as read_files:
            if read_files is None:
                return _error(503, BUSY)
            read = read_files(files)
            bad = [u for _, u in read if isinstance(u, UploadError)]
            if len(read) - len(bad) < 2:
                return _error(400, f"a route needs 2 or more readable photos, {len(read) - len(bad)} of "
                                   f"{len(read)} could be read ({bad[0]})")
            names, photos, times, how = _route_photos(read)
            try:
                with self.lock:
                    r = self.loc.locate_route(photos, times=times)
            except GeolocError as exc:  # the server's setting, not the upload: e.g. geodesic steps without streets
                tqdm.write(f"POST /api/route: {exc}")  # the whole message for the server's log; the page gets
                public = str(exc).replace(str(self.loc.run), self.loc.run.name)  # no server paths
                return _error(500, f"cannot decode a route: {public}")
        r = _as_uploaded(r, names, how)
        # The status says a photo failed (as /api/locate's); the body still holds the route, and says why.
        error = {"error": f"{len(bad)} of {len(read)} photos could not be read and were left out of the route: "
                          + "; ".join(map(str, bad))} if bad else {}
        return jsonify({**error, **r.geojson(), **r.to_dict()}), (bad[0].status if bad else 200)


def public_names(paths: list[str]) -> list[str]:
    """The database photos as a page for others names them: relative to the folder they all share, so
    that no answer shows the server's file system."""
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [Path(os.path.relpath(os.path.abspath(p), root)).as_posix() for p in paths]


def create_app(loc: Locator, city: dict, max_upload_mb: float = MAX_UPLOAD_MB, max_waiting: int = MAX_WAITING,
               max_pixels: int = MAX_PIXELS) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 2**20)  # Flask answers 413 past it, unread
    app.json.sort_keys = False  # the fields in `geoloc query --json`'s order
    names = public_names(loc.side.paths)
    model = _Model(loc, max_waiting, max_pixels, dict(zip(loc.side.paths, names)))
    row_of = {p: i for i, p in enumerate(names)}  # only the index's own photos are ever served
    page = page_html({"run": loc.run.name, "photos": len(row_of), "k": loc.cfg.index.k,
                      "vote": loc.mode, "vote_radius_m": loc.cfg.index.vote_radius_m,
                      "max_upload_bytes": app.config["MAX_CONTENT_LENGTH"]})

    @functools.lru_cache(maxsize=1024)
    def thumbnail(row: int) -> bytes:
        image = load_rgb(loc.side.paths[row])
        image.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            return _error(413, f"upload over the {max_upload_mb:g} MB limit of this server")
        return _error(exc.code or 500, f"{exc.name}: {exc.description}")

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/api/map")
    def city_map():
        return jsonify(city)

    @app.get("/thumb")
    def thumb():
        row = row_of.get(request.args.get("path", ""))
        if row is None:
            return _error(404, "not a photo of this run's index")
        try:
            return Response(thumbnail(row), mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})
        except GeolocError as exc:
            return _error(404, str(exc))

    @app.post("/api/locate")
    def locate():
        try:
            k = _k(request.args.get("k"))
        except UploadError as exc:
            return _error(exc.status, str(exc))
        files = request.files.getlist("photo")
        if not files:
            return _error(400, "no photo in the upload: send multipart/form-data with one or more 'photo' files")
        return model.locate(files, k)

    @app.post("/api/route")
    def route():
        files = request.files.getlist("photo")
        if len(files) < 2:
            return _error(400, f"a route needs 2 or more photos, got {len(files)}: send multipart/form-data "
                               "with several 'photo' files")
        return model.route(files)

    return app


def make_http_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """Flask's threaded server on host:port (0: a free port). The address is tried first: Werkzeug's
    server would print its own advice and exit."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            s.bind((host, port))
    except OSError as exc:
        raise GeolocError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None
    return make_server(host, port, app, threaded=True)


def load_app(run: str | Path | Run, **limits) -> Flask:
    """The app for a trained embedding run: its Locator and its city map, both loaded once."""
    loc = Locator.load(run)
    return create_app(loc, city_geojson(loc.cfg, loc.side.lat, loc.side.lon), **limits)
