# python benchmarks/pretrain/crop_osm.py SRC.osm.bz2 DST.osm HALF_SIDE_M
"""Crop an OSM extract to a square around its median node, as a simple extract tool does (nodes inside;
every way and relation with a member inside, whole)."""
import bz2, sys, math, statistics
import xml.etree.ElementTree as ET
src, dst, half_m = sys.argv[1], sys.argv[2], float(sys.argv[3])
root = ET.parse(bz2.open(src)).getroot()
lat = [float(n.get("lat")) for n in root.iter("node")]; lon = [float(n.get("lon")) for n in root.iter("node")]
clat, clon = statistics.median(lat), statistics.median(lon)
dlat, dlon = half_m / 111_320, half_m / (111_320 * math.cos(math.radians(clat)))
out = ET.Element("osm", root.attrib); nodes, ways = set(), set()
for el in root:
    if el.tag == "node" and abs(float(el.get("lat")) - clat) <= dlat and abs(float(el.get("lon")) - clon) <= dlon:
        nodes.add(el.get("id")); out.append(el)
    elif el.tag == "way" and any(nd.get("ref") in nodes for nd in el.findall("nd")):
        ways.add(el.get("id")); out.append(el)
    elif el.tag == "relation" and any(m.get("ref") in (nodes if m.get("type") == "node" else ways) for m in el.findall("member")):
        out.append(el)
ET.ElementTree(out).write(dst, encoding="utf-8", xml_declaration=True)
print(dst, len(nodes), "nodes", len(ways), "ways; centre", clat, clon)
