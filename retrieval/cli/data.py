"""`geoloc data` (import, check, split, fetch) and `geoloc synth` (city, render, sheet): photos and
rendered views in. None of them loads torch."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from retrieval import GeolocError
from retrieval.cli.apps import RandomizeOption, data_app, synth_app


# --- data ------------------------------------------------------------------------------------------

@data_app.command("import")
def data_import(
    src: Path = typer.Argument(..., help="Folder (searched recursively) or single image."),
    fmt: str = typer.Option(..., "--format", help="seed (<lat>_<lon>.jpg) | vpr (@utm...@lat@lon@...) | exif"),
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Warn about and skip unreadable photos."),
):
    """Make a manifest (path,lat,lon[,heading]) from photos in a known naming or EXIF convention."""
    from retrieval.data.manifests import write_manifest
    from retrieval.data.photo_import import import_photos

    m = import_photos(src, fmt, skip_bad=skip_bad)
    write_manifest(out, m)
    typer.echo(f"wrote {out}: {len(m)} photos" + (f", skipped {m.skipped}" if m.skipped else ""))


@data_app.command("check")
def data_check(
    manifest: Path,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Report bad rows as warnings and count them."),
):
    """Check every row of a manifest: coordinates, duplicates, files, and that each image decodes."""
    from retrieval.data.manifests import read_manifest
    from retrieval.data.sequences import DUPLICATE_M, cross_split_duplicates, extra_columns

    m = read_manifest(manifest, skip_bad=skip_bad, check_images=True, check_far=True)
    typer.echo(f"{manifest}: {len(m)} good photos" + (f", {m.skipped} bad rows skipped" if m.skipped else ""))
    twins = cross_split_duplicates(m, extra_columns(m, ("author",)).get("author"))
    if twins:  # a near-copy of a test photo in training answers the test for it
        shown = ", ".join(f"rows {m.rows[i]} ({m.split[i]}) and {m.rows[j]} ({m.split[j]})" for i, j in twins[:5])
        typer.echo(f"{manifest}: {len(twins)} pairs of near-duplicate photos across splits (the same author, within "
                   f"{DUPLICATE_M:g} m and a minute): {shown}{', ...' if len(twins) > 5 else ''}; "
                   "split with --mode sequence to keep them on one side")


@data_app.command("split")
def data_split(
    manifest: Path,
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write, with a split column."),
    mode: str = typer.Option("place", "--mode", help="place: every held-out photo has a training photo within "
                             "--radius-m, taken on an earlier day where the manifest has a date column (place "
                             "recognition: the embedding's question) | spatial: whole blocks, "
                             "nothing within --gap-m (unseen streets) | random: the seed study's protocol | "
                             "sequence: whole sequences, twin drives kept together (a fetched manifest)."),
    val: float = typer.Option(0.1, help="Fraction of photos for validation."),
    test: float = typer.Option(0.1, help="Fraction of photos for test."),
    radius_m: float = typer.Option(25.0, help="place: a training photo within this distance of each held-out one."),
    gap_m: float = typer.Option(25.0, help="spatial: no held-out photo within this distance of a training photo."),
    block_m: float = typer.Option(250.0, help="spatial: side of the blocks assigned whole to one split."),
    seed: int = typer.Option(0),
):
    """Split a manifest into train/val/test (see --mode), so nothing is asked that the task does not ask."""
    from retrieval.data.manifests import read_manifest, write_manifest
    from retrieval.data.sequences import extra_columns, keep_columns
    from retrieval.data.splits import split_counts, split_photos

    if block_m <= 0 or gap_m < 0 or radius_m <= 0:
        raise GeolocError(f"data split: --block-m ({block_m:g}) and --radius-m ({radius_m:g}) must be > 0 "
                          f"and --gap-m ({gap_m:g}) >= 0")
    m = read_manifest(manifest)
    extra = extra_columns(m, ("sequence", "source", "source_id", "licence", "author"))  # a fetched manifest's
    split = split_photos(mode, m.lat, m.lon, val, test, gap_m, block_m, radius_m, seed, m.date,
                         extra.get("sequence"), extra.get("author"))
    counts = split_counts(split, str(manifest))
    keep = [i for i, s in enumerate(split) if s]
    m.split = list(split)
    write_manifest(out, m.subset(keep))
    keep_columns(out, extra, keep)
    dropped = f", dropped {int((split == '').sum())} within {gap_m:g} m of train" if mode == "spatial" else ""
    typer.echo(f"wrote {out} ({mode}): " + ", ".join(f"{k} {v}" for k, v in counts.items()) + dropped)


# --- data fetch ------------------------------------------------------------------------------------

fetch_app = typer.Typer(help="Fetch an area's street-level photos from open imagery (Panoramax, Mapillary).",
                        no_args_is_help=True)
data_app.add_typer(fetch_app, name="fetch")
BboxOption = typer.Option(None, "--bbox", help="The area: W,S,E,N in degrees.")
PlaceOption = typer.Option(None, "--place", help="The area: a place name, geocoded by OpenStreetMap (internet).")
FetchOutOption = typer.Option(..., "--out", help="Data folder: images/, photos.csv, ATTRIBUTION.txt, streets.graphml.")
SizeOption = typer.Option("sd", "--size", help="thumb | sd | hd")
MaxOption = typer.Option(None, "--max", help="At most this many pictures.")
CropsOption = typer.Option(8, "--pano-crops", help="Views cut from each 360-degree panorama (0: keep it whole).")
FovOption = typer.Option(90.0, "--fov", help="Field of view of a panorama's views, degrees.")
ConcurrencyOption = typer.Option(8, "--concurrency", help="Downloads at a time.")
StreetsOption = typer.Option(None, "--streets", help="OSM extract (.osm/.osm.bz2) for streets.graphml, offline "
                             "(default: downloaded through OSMnx for the bbox).")
NoStreetsOption = typer.Option(False, "--no-streets", help="Write no streets.graphml.")
RetriesOption = typer.Option(5, "--retries", help="Retries of a request on a connection error, 429 or 5xx.")


def _fetch(source: str, out: Path, concurrency: int, **kw) -> None:
    from retrieval.data.fetch_area import describe, fetch_area

    summary = fetch_area(source, out, concurrency=concurrency, progress=sys.stderr.isatty(), **kw)
    typer.echo(describe(out, summary, concurrency))


@fetch_app.command("panoramax")
def data_fetch_panoramax(
    out: Path = FetchOutOption, bbox: Optional[str] = BboxOption, place: Optional[str] = PlaceOption,
    api: Optional[str] = typer.Option(None, "--api", help="A Panoramax/GeoVisio or STAC API (default: the "
                                      "Panoramax meta-catalogue, https://api.panoramax.xyz/api)."),
    size: str = SizeOption, max_pictures: Optional[int] = MaxOption, pano_crops: int = CropsOption,
    fov: float = FovOption, concurrency: int = ConcurrencyOption, streets: Optional[Path] = StreetsOption,
    no_streets: bool = NoStreetsOption, retries: int = RetriesOption,
    per_request: int = typer.Option(1000, "--per-request", help="Pictures asked in one search: a box whose answer "
                                    "is full without a next page (GeoVisio's way) is split in four."),
):
    """Panoramax pictures of an area (a STAC search), with a manifest, ATTRIBUTION.txt and streets.graphml."""
    _fetch("panoramax", out, concurrency, bbox=bbox, place=place, api=api, size=size, max_pictures=max_pictures,
           pano_crops=pano_crops, fov=fov, streets=streets, no_streets=no_streets, retries=retries,
           per_request=per_request)


@fetch_app.command("mapillary")
def data_fetch_mapillary(
    out: Path = FetchOutOption, bbox: Optional[str] = BboxOption, place: Optional[str] = PlaceOption,
    token: Optional[str] = typer.Option(None, "--token", help="Mapillary client token (default: $MAPILLARY_TOKEN); "
                                        "never written anywhere."),
    api: Optional[str] = typer.Option(None, "--api", help="Graph API base (default: https://graph.mapillary.com)."),
    size: str = SizeOption, max_pictures: Optional[int] = MaxOption, pano_crops: int = CropsOption,
    fov: float = FovOption, concurrency: int = ConcurrencyOption, streets: Optional[Path] = StreetsOption,
    no_streets: bool = NoStreetsOption, retries: int = RetriesOption,
    per_request: int = typer.Option(2000, "--per-request", help="The images search's cap on one answer: a box "
                                    "that fills it is split in four."),
):
    """Mapillary pictures of an area (Graph API v4, CC BY-SA 4.0), with a manifest, ATTRIBUTION.txt and streets."""
    _fetch("mapillary", out, concurrency, bbox=bbox, place=place, api=api, size=size, max_pictures=max_pictures,
           pano_crops=pano_crops, fov=fov, streets=streets, no_streets=no_streets, retries=retries, token=token,
           per_request=per_request)


# --- synth -----------------------------------------------------------------------------------------

@synth_app.command("city")
def synth_city(
    out: Path = typer.Option(..., "--out", help="OSM XML file to write (.osm or .osm.bz2)."),
    seed: int = typer.Option(0),
    size_m: float = typer.Option(1500.0, "--size-m", help="Side of the square city in metres."),
):
    """Write the procedural demo city (districts, river, bridges, parks) as an OSM XML file."""
    from retrieval.synth.city import write_demo_city

    if not 400 <= size_m <= 5000:
        raise GeolocError(f"--size-m {size_m:g}: choose 400 to 5000 m")
    write_demo_city(out, seed=seed, size_m=size_m)
    typer.echo(f"wrote {out}")




@synth_app.command("render")
def synth_render(
    out: Path = typer.Option(..., "--out", help="Data folder: images/, train.csv, test.csv, dataset.json."),
    osm: Optional[Path] = typer.Option(None, "--osm", help="OSM extract (.osm/.osm.bz2); default: the demo city."),
    train: Optional[int] = typer.Option(None, "--train", help="Training positions in all (default: one per --spacing-m)."),
    spacing_m: float = typer.Option(10.0, "--spacing-m", help="Metres of street per training view (without --train)."),
    test: int = typer.Option(100, "--test", help="Test views at independent random positions."),
    size: int = typer.Option(224, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0),
    shift: bool = typer.Option(False, "--shift", help="Render test views at dusk (a condition shift)."),
    workers: int = typer.Option(2, "--workers", help="Rendering processes."),
    fov: float = typer.Option(90.0, "--fov", help="Horizontal field of view in degrees."),
    headings: int = typer.Option(1, "--headings", help="Views per training position, evenly spaced from the "
                                 "street's direction give or take half a step (4: a Street-View-like panorama); 1: one random heading."),
    val: int = typer.Option(0, "--val", help="Validation views, drawn like the test views (val.csv)."),
    routes: int = typer.Option(0, "--routes", help="Camera walks along the streets to render too (routes.csv, "
                               "with date and route columns: for `geoloc query --route`)."),
    route_len: int = typer.Option(10, "--route-len", help="Photos per walk."),
    route_step: float = typer.Option(10.0, "--route-step", help="Metres walked between two photos of a walk."),
    randomize: str = RandomizeOption,
):
    """Render street-level views of an OSM extract (or the demo city) with train/[val/]test manifests."""
    from retrieval.synth.cameras import render_dataset
    from retrieval.synth.city import write_demo_city
    from retrieval.synth.randomize import parse_knobs

    knobs = parse_knobs(randomize)

    if osm is None:
        osm = out / "city.osm"
        if not osm.is_file():
            write_demo_city(osm, seed=seed)
    info = render_dataset(osm, out, n_train=train, n_test=test, size=size, seed=seed,
                          test_condition_shift=shift, workers=workers,
                          spacing_m=None if train is not None else spacing_m, fov=fov, headings=headings,
                          n_val=val, n_routes=routes, route_len=route_len, route_step=route_step, knobs=knobs)
    walked = f", {info['routes']} routes of {route_len} (routes.csv)" if routes else ""
    typer.echo(f"wrote {out}: {info['train']} train, {info['val']} val, {info['test']} test views{walked}"
               + (f" ({info['images_per_s']} img/s)" if info["images_per_s"] else " (all already rendered)"))


@synth_app.command("sheet")
def synth_sheet(
    data: Path = typer.Argument(..., help="A rendered data folder, or a manifest CSV (e.g. real photos)."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    n: int = typer.Option(24, "--n", help="Number of views."),
    cols: int = typer.Option(6, "--cols"),
    split: str = typer.Option("train", "--split", help="train or test"),
    order: str = typer.Option("spread", "--order", help="spread | neighbours (pairs of nearby cameras)"),
    thumb: int = typer.Option(160, "--thumb", help="Side of each view on the sheet, pixels."),
):
    """A contact sheet of rendered views (or a manifest's photos), each labelled with its coordinates and heading."""
    from retrieval.synth.sheet import contact_sheet

    for name, value, least in (("--n", n, 1), ("--cols", cols, 1), ("--thumb", thumb, 16)):
        if value < least:
            raise GeolocError(f"synth sheet: {name} {value}: must be at least {least}")
    contact_sheet(data, out, n=n, cols=cols, split=split, order=order, thumb=thumb)
    typer.echo(f"wrote {out}")
