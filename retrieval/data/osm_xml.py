"""OpenStreetMap XML as geoloc reads it: opened plain, gzip or bzip2; checked before OSMnx sees it
(one-line errors for what is not OSM); copied without references to nodes the extract lacks (a clipped
extract); and which ways count as streets, for both the street graph and the renderer."""
from __future__ import annotations

import bz2
import gzip
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from retrieval import GeolocError
from retrieval.geo import haversine_m

MAX_CITY_RADIUS_M = 30_000.0  # a node farther than this from the extract's median is a broken coordinate

def _open(path: Path):
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


# highway=* values of ways that are no streets: not built (yet, or any more), areas by convention, race
# tracks, and public-transport platforms, stops and lifts mapped as ways. OSMnx's own exclusions for
# network_type="all" (so a downloaded graph and a local extract agree), and bus_stop and elevator.
NOT_STREETS = frozenset({"abandoned", "bus_stop", "construction", "elevator", "no", "planned", "platform", "proposed",
                         "raceway", "razed", "rest_area", "services"})


def is_street(tags) -> bool:
    """Is an OSM way with these tags a street? The one rule for the renderer's streets (check_osm_xml)
    and for the street graph (retrieval.data.streets): a highway=* way, not an area (area=yes: the outline of
    a pedestrian square is no street) and not of a kind in NOT_STREETS. tags: the way's tags, or an
    OSMnx edge's attributes (which carry its way's highway and area tags)."""
    highway = tags.get("highway")
    return isinstance(highway, str) and highway not in NOT_STREETS and tags.get("area") != "yes"


def check_osm_xml(path: str | Path) -> dict:
    """Stream through the file once: well-formed XML, nodes with sane coordinates, highways and
    buildings present. Returns counts and `streets_xml`, the extract cut down to its street ways
    (OSMnx's graph_from_xml turns every way, buildings included, into graph edges).
    Raises GeolocError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise GeolocError(f"{path}: OSM file not found")
    lats, lons, ids = [], [], []
    highways = buildings = 0
    root_tag = None
    generator = ""
    node_xml: dict[str, str] = {}
    street_ways: list[tuple[str, list[str], dict]] = []
    unseen_refs: list[str] = []  # way node refs not (yet) defined: dangling if never defined
    short_ways = 0  # ways of fewer than 2 nodes (a clip can keep one node of a way): OSMnx fails on them too
    try:
        with _open(path) as f:
            for event, el in ET.iterparse(f, events=("start", "end")):
                if event == "start":
                    if root_tag is None:
                        root_tag = el.tag
                        if root_tag != "osm":
                            raise GeolocError(f"{path}: not OSM XML (root element <{root_tag}>, expected <osm>)")
                        generator = el.get("generator", "")
                    continue
                if el.tag == "node":
                    nid = el.get("id")
                    try:
                        lat, lon = float(el.get("lat")), float(el.get("lon"))
                    except (TypeError, ValueError):
                        raise GeolocError(f"{path}: node {nid}: lat/lon missing or not a number") from None
                    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                        raise GeolocError(f"{path}: node {nid}: coordinate ({lat}, {lon}) is out of range")
                    lats.append(lat)
                    lons.append(lon)
                    ids.append(nid)
                    node_xml[nid] = f'<node id="{nid}" lat="{el.get("lat")}" lon="{el.get("lon")}"/>'
                    el.clear()
                elif el.tag == "way":
                    tags = {t.get("k"): t.get("v") for t in el.findall("tag")}
                    refs = [nd.get("ref") for nd in el.findall("nd")]
                    unseen_refs += [r for r in refs if r not in node_xml]
                    short_ways += len(refs) < 2
                    if is_street(tags):
                        highways += 1
                        street_ways.append((el.get("id"), [nd.get("ref") for nd in el.findall("nd")], tags))
                    buildings += "building" in tags
                    el.clear()
                elif el.tag == "relation":
                    keys = {t.get("k"): t.get("v") for t in el.findall("tag")}
                    buildings += "building" in keys and keys.get("type") == "multipolygon"
                    el.clear()
    except ET.ParseError as exc:
        raise GeolocError(f"{path}: malformed or truncated OSM XML ({exc})") from None
    except (OSError, EOFError, ValueError) as exc:
        raise GeolocError(f"{path}: cannot read ({exc})") from None
    if not lats:
        raise GeolocError(f"{path}: no nodes in the extract")
    lat, lon = np.array(lats), np.array(lons)
    d = haversine_m(np.median(lat), np.median(lon), lat, lon)
    far = int(np.argmax(d))
    if d[far] > MAX_CITY_RADIUS_M:
        raise GeolocError(f"{path}: node {ids[far]} at ({lat[far]:.5f}, {lon[far]:.5f}) lies {d[far] / 1000:.0f} km "
                          f"outside the extract (more than {MAX_CITY_RADIUS_M / 1000:.0f} km from its centre)")
    if highways == 0:
        raise GeolocError(f"{path}: no highway ways: the extract has no streets to place cameras on")
    if buildings == 0:
        raise GeolocError(f"{path}: no building ways: nothing to render")
    used = dict.fromkeys(r for _, refs, _ in street_ways for r in refs if r in node_xml)
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", '<osm version="0.6">', *(node_xml[r] for r in used)]
    for wid, refs, tags in street_ways:
        if sum(r in node_xml for r in refs) < 2:
            continue  # clipped to less than a segment
        lines.append(f'<way id="{wid}">' + "".join(f'<nd ref="{r}"/>' for r in refs if r in node_xml)
                     + "".join(f"<tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items()) + "</way>")
    lines.append("</osm>")
    return {"nodes": len(lats), "highways": highways, "buildings": buildings, "generator": generator,
            "dangling": sum(r not in node_xml for r in unseen_refs), "short_ways": short_ways, "streets_xml": "\n".join(lines)}


def write_without_dangling(path: str | Path, out: str | Path) -> dict:
    """Copy an OSM extract without references to what it does not hold (an extract clipped at a
    bounding box has ways running out of it): way nodes that are missing are dropped, then ways left
    with fewer than 2 nodes, then relation members that are missing. Returns the counts."""
    path, out = Path(path), Path(out)
    nodes: set[str] = set()
    ways: set[str] = set()
    try:
        with _open(path) as f:  # pass 1: what the file defines
            for _, el in ET.iterparse(f):
                if el.tag == "node":
                    nodes.add(el.get("id"))
                    el.clear()
                elif el.tag == "way":
                    if sum(nd.get("ref") in nodes for nd in el.findall("nd")) >= 2:
                        ways.add(el.get("id"))
                    el.clear()
        counts = {"refs": 0, "ways": 0, "members": 0}
        with _open(path) as f, out.open("w", encoding="utf-8") as w:  # pass 2: the copy
            depth = 0
            for event, el in ET.iterparse(f, events=("start", "end")):
                if event == "start":
                    if depth == 0:
                        w.write("<?xml version='1.0' encoding='UTF-8'?>\n<osm"
                                + "".join(f" {k}={quoteattr(v)}" for k, v in el.attrib.items()) + ">\n")
                    depth += 1
                    continue
                depth -= 1
                if depth != 1:
                    continue
                if el.tag == "way":
                    refs = el.findall("nd")
                    missing = [nd for nd in refs if nd.get("ref") not in nodes]
                    counts["refs"] += len(missing)
                    for nd in missing:
                        el.remove(nd)
                    if el.get("id") not in ways:
                        counts["ways"] += 1
                        el.clear()
                        continue
                elif el.tag == "relation":
                    gone = [m for m in el.findall("member")
                            if (m.get("type") == "node" and m.get("ref") not in nodes)
                            or (m.get("type") == "way" and m.get("ref") not in ways)]
                    counts["members"] += len(gone)
                    for m in gone:
                        el.remove(m)
                    if el.find("member") is None:
                        el.clear()
                        continue
                el.tail = "\n"
                w.write(ET.tostring(el, encoding="unicode"))
                el.clear()
            w.write("</osm>\n")
    except ET.ParseError as exc:
        raise GeolocError(f"{path}: malformed or truncated OSM XML ({exc})") from None
    except OSError as exc:
        raise GeolocError(f"{path}: cannot read or copy ({exc})") from None
    return counts


def clipped_message(path: Path, counts: dict) -> str:
    return (f"{path}: clipped extract: dropped {counts['refs']} reference(s) to nodes not in the file"
            + (f", {counts['ways']} way(s) left with fewer than 2 nodes" if counts["ways"] else "")
            + (f", {counts['members']} missing relation member(s)" if counts["members"] else ""))

def sort_merged_attributes(G) -> None:
    """OSMnx's simplification keeps the distinct tag values of merged ways as list(set(values)), whose
    order follows the per-process string hash (PYTHONHASHSEED): sort them, so that which value comes
    first (the street's kind and width) and the saved graph are the same in every run."""
    for _, _, d in G.edges(data=True):
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = sorted(v, key=lambda x: (type(x).__name__, str(x)))
