"""The web app behind `geoloc serve` (Flask): the page, the city's map, located uploads as JSON, and
thumbnails of the database photos the answers name.

The Locator is loaded once. Flask's server answers each request on its own thread, so uploads are read
and decoded in parallel, the model runs one batch at a time under a lock, and past MAX_WAITING requests
waiting for it a new one is refused at once with 503 rather than queued without bound.
"""
from __future__ import annotations

import functools
import io
import socket
import threading
from pathlib import Path

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from retrieval import GeolocError
from retrieval.api import Locator
from retrieval.manifests import load_rgb
from retrieval.web.city_map import city_geojson
from retrieval.web.page import page_html
from retrieval.web.uploads import MAX_PIXELS, UploadError, read_upload, with_truth

MAX_UPLOAD_MB = 20.0  # one request's body, all its photos together
MAX_WAITING = 64  # requests holding decoded photos while they wait for the model
MAX_K = 100
THUMB_PX = 240


def _error(status: int, message: str):
    return jsonify({"error": message}), status


def _k(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise UploadError(400, f"k={text!r}: expected a whole number of neighbours from 1 to {MAX_K}")
    return int(text)


def create_app(loc: Locator, city: dict, max_upload_mb: float = MAX_UPLOAD_MB, max_waiting: int = MAX_WAITING,
               max_pixels: int = MAX_PIXELS) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 2**20)  # Flask answers 413 past it, unread
    app.json.sort_keys = False  # the fields in `geoloc query --json`'s order
    model_lock, slots = threading.Lock(), threading.BoundedSemaphore(max_waiting)
    row_of = {p: i for i, p in enumerate(loc.side.paths)}  # only the index's own photos are ever served
    page = page_html({"run": Path(loc.run_dir).name, "photos": len(row_of), "k": loc.cfg.index.k,
                      "vote": loc.mode, "max_upload_bytes": app.config["MAX_CONTENT_LENGTH"]})

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
        """Each uploaded `photo` field answered as `geoloc query --json` answers a file (`path`: the
        uploaded name), plus `truth` where the photo carries EXIF GPS. Like `geoloc query`, a photo that
        cannot be located gets its own `error` and the others are answered; the status is then the
        first failure's 4xx."""
        try:
            k = _k(request.args.get("k"))
        except UploadError as exc:
            return _error(exc.status, str(exc))
        files = request.files.getlist("photo")
        if not files:
            return _error(400, "no photo in the upload: send multipart/form-data with one or more 'photo' files")
        if not slots.acquire(blocking=False):
            return _error(503, "the server is busy locating other photos: try again in a moment")
        try:
            results, statuses, good = [None] * len(files), [], []
            for i, f in enumerate(files):
                name = Path(f.filename or "").name or f"photo {i + 1}"  # only ever used in messages
                try:
                    good.append((i, name, *read_upload(name, f.read(), max_pixels)))
                except UploadError as exc:
                    results[i] = {"path": name, "error": str(exc)}
                    statuses.append(exc.status)
            if good:
                with model_lock:
                    answers = loc.locate([g[2] for g in good], k)
                for (i, name, _, warning, truth), a in zip(good, answers):
                    a.source, a.warning = name, warning  # named as uploaded, not "<image N>"
                    results[i] = with_truth(a.to_dict(), truth)
                    statuses += [400] if a.error else []
        finally:
            slots.release()
        return jsonify(results), (statuses[0] if statuses else 200)

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


def load_app(run_dir: str | Path, **limits) -> Flask:
    """The app for a trained embedding run: its Locator and its city map, both loaded once."""
    loc = Locator.load(run_dir)
    return create_app(loc, city_geojson(loc.cfg, loc.side.lat, loc.side.lon), **limits)
