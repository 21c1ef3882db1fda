"""The page `geoloc serve` serves: one self-contained HTML file (style and script inline, no CDN, no map
tiles). The map is an SVG drawn in the page from the app's /api/map GeoJSON; photos are sent to
/api/locate one request each, so every photo gets its own answer or its own message. Several photos
dropped or picked at once are then also sent together to /api/route, and the route decoded from them is
drawn over the streets: its street path, each photo's place on it (numbered in the order they were
taken), a thin line from each photo's single-photo answer to that place, and the route's segment count
and notes under the map."""
from __future__ import annotations

import json

_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>geoloc: where was this photo taken?</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #f4f4f2; }
header { padding: 10px 16px; background: #263238; color: #fff; display: flex; gap: 16px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
header span { color: #b0bec5; font-size: 13px; }
main { display: flex; gap: 14px; padding: 14px; align-items: flex-start; }
#left { flex: 1 1 420px; min-width: 320px; }
/* the map takes what the legends below it leave of the window, a route's included */
#right { flex: 1 1 560px; position: sticky; top: 10px; display: flex; flex-direction: column; height: calc(100vh - 72px); }
#drop { border: 2px dashed #90a4ae; border-radius: 8px; padding: 22px; text-align: center; background: #fff; }
#drop.over { background: #e3f2fd; border-color: #1e88e5; }
#drop label { color: #1e88e5; cursor: pointer; text-decoration: underline; }
#pick { display: none; }
#status { min-height: 1.4em; margin: 6px 2px; color: #555; }
.result { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px; margin-bottom: 10px;
          display: grid; grid-template-columns: 120px 1fr; gap: 4px 12px; cursor: pointer; }
.result.selected { border-color: #e53935; box-shadow: 0 0 0 2px #ffcdd2; }
.result.bad { border-color: #e53935; background: #fff5f5; cursor: default; }
.result .query { width: 120px; height: 90px; object-fit: cover; border-radius: 4px; grid-row: span 4; background: #eee; }
.name { font-weight: 600; word-break: break-all; }
.answer { font-family: ui-monospace, monospace; }
.confidence b { color: #c62828; }
.truth { color: #2e7d32; }
.message { color: #c62828; font-weight: 600; }
.warning { color: #ef6c00; }
.neighbours { grid-column: 1 / -1; display: flex; flex-wrap: wrap; gap: 6px; margin-top: 4px; }
.neighbour { margin: 0; width: 92px; font-size: 10px; text-align: center; color: #555; white-space: nowrap; }
.neighbour img { width: 92px; height: 69px; object-fit: cover; border-radius: 3px; display: block; background: #eee; }
.neighbour.hover img { outline: 2px solid #1e88e5; }
svg { width: 100%; flex: 1 1 0; min-height: 300px; background: #fff; border: 1px solid #ccc; border-radius: 8px; }
.street { fill: none; stroke: #9e9e9e; stroke-width: 1; stroke-linecap: round; }
.photo-dot { fill: #bdbdbd; }
.answer-mark { fill: #e53935; fill-opacity: 0.25; stroke: #e53935; stroke-width: 3; }
.nb-mark circle { fill: #1e88e5; stroke: #fff; stroke-width: 1.5; }
.nb-mark.hover circle { fill: #ffb300; }
.nb-mark text { fill: #fff; font-size: 9px; font-weight: 700; text-anchor: middle; dominant-baseline: central; pointer-events: none; }
.truth-mark { fill: #43a047; stroke: #fff; stroke-width: 2; }
.truth-line { stroke: #43a047; stroke-width: 2; stroke-dasharray: 5 4; }
#legend { font-size: 12px; color: #555; margin-top: 4px; }
#legend i, #route-legend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin: 0 3px 0 10px; }
.route-path { fill: none; stroke: #8e24aa; stroke-width: 4; stroke-opacity: 0.7; stroke-linecap: round; stroke-linejoin: round; }
.route-move { stroke: #8e24aa; stroke-width: 1; stroke-dasharray: 3 2; }
.route-single { fill: #fff; stroke: #8e24aa; stroke-width: 1.5; }
.route-stop { cursor: pointer; }
.route-stop rect { fill: #6a1b9a; stroke: #fff; stroke-width: 1.5; }
.route-stop text { fill: #fff; font-size: 10px; font-weight: 700; text-anchor: middle; dominant-baseline: central; pointer-events: none; }
#route-legend { font-size: 12px; color: #555; margin-top: 4px; }
#route-legend .summary { color: #6a1b9a; font-weight: 600; }
#route-legend .note { color: #ef6c00; }
#route-legend .message { color: #c62828; }
.on-route { color: #6a1b9a; }
</style></head><body>
<header><h1>geoloc</h1><span id="run"></span></header>
<main>
<section id="left">
  <div id="drop">Drop street photos here, or <label for="pick">pick files</label>
    <input type="file" id="pick" multiple accept="image/jpeg,image/png"></div>
  <div id="status"></div>
  <div id="results"></div>
</section>
<section id="right">
  <svg id="map" viewBox="0 0 800 600"><g id="city"></g><g id="route"></g><g id="markers"></g></svg>
  <div id="legend"><i style="border:3px solid #e53935"></i>answer <i style="background:#1e88e5"></i>neighbours
    (numbered as in the list; caption: similarity · distance from the answer) <i style="background:#43a047"></i>true position (EXIF GPS)</div>
  <div id="route-legend"></div>
  <div id="legend-source" style="font-size:11px;color:#888"></div>
</section>
</main>
<script>
const CONFIG = __CONFIG__;
const SVG = "http://www.w3.org/2000/svg", W = 800, PAD = 16;
let project = null, bounds = null, selected = null;
const answers = [];

document.getElementById("run").textContent =
  `run ${CONFIG.run} · ${CONFIG.photos} database photos · ${CONFIG.k} neighbours vote (${CONFIG.vote})`;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function svgEl(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function metres(m) { return m >= 10000 ? `${(m / 1000).toFixed(0)} km` : m >= 1000 ? `${(m / 1000).toFixed(1)} km` : `${m.toFixed(0)} m`; }

// --- the city: an equirectangular projection of the served GeoJSON, fitted to the SVG ---------------
async function drawCity() {
  const geo = await (await fetch("api/map")).json();
  const pts = [];
  for (const f of geo.features) {
    const g = f.geometry;
    (g.type === "LineString" || g.type === "MultiPoint" ? g.coordinates : []).forEach(c => pts.push(c));
  }
  const lon0 = Math.min(...pts.map(p => p[0])), lon1 = Math.max(...pts.map(p => p[0]));
  const lat0 = Math.min(...pts.map(p => p[1])), lat1 = Math.max(...pts.map(p => p[1]));
  const kx = Math.cos((lat0 + lat1) / 2 * Math.PI / 180);
  const scale = (W - 2 * PAD) / Math.max((lon1 - lon0) * kx, 1e-9);
  const H = Math.min(Math.max(Math.round((lat1 - lat0) * scale + 2 * PAD), 200), 1200);
  const s = Math.min(scale, (H - 2 * PAD) / Math.max(lat1 - lat0, 1e-9));
  bounds = { lon0, lon1, lat0, lat1 };
  project = (lon, lat) => [PAD + (lon - lon0) * kx * s, PAD + (lat1 - lat) * s];
  document.getElementById("map").setAttribute("viewBox", `0 0 ${W} ${H}`);
  const city = document.getElementById("city");
  for (const f of geo.features) {
    const g = f.geometry;
    if (g.type === "LineString") {
      svgEl("polyline", { class: "street", points: linePoints(g.coordinates) }, city);
    } else if (g.type === "MultiPoint") {
      for (const c of g.coordinates) { const [x, y] = project(c[0], c[1]); svgEl("circle", { class: "photo-dot", cx: x.toFixed(1), cy: y.toFixed(1), r: 1.6 }, city); }
    }
  }
  document.getElementById("legend-source").textContent = `map: ${geo.source}`;
}
function linePoints(coords) { return coords.map(c => project(c[0], c[1]).map(v => v.toFixed(1)).join(",")).join(" "); }
function onMap(lat, lon) {
  const m = 0.02 * Math.max(bounds.lon1 - bounds.lon0, bounds.lat1 - bounds.lat0);
  return lat >= bounds.lat0 - m && lat <= bounds.lat1 + m && lon >= bounds.lon0 - m && lon <= bounds.lon1 + m;
}

// --- markers of the selected answer ----------------------------------------------------------------
function showOnMap(i) {
  selected = i;
  document.querySelectorAll(".result").forEach(r => r.classList.toggle("selected", Number(r.dataset.i) === i));
  const g = document.getElementById("markers");
  g.replaceChildren();
  const a = answers[i];
  if (!a || !project) return;
  const [ax, ay] = project(a.lon, a.lat);
  if (a.truth && onMap(a.truth.lat, a.truth.lon)) {
    const [tx, ty] = project(a.truth.lon, a.truth.lat);
    svgEl("line", { class: "truth-line", x1: tx, y1: ty, x2: ax, y2: ay }, g);
    svgEl("title", {}, svgEl("circle", { class: "truth-mark", cx: tx, cy: ty, r: 8 }, g)).textContent =
      `true position (EXIF GPS): error ${metres(a.truth.error_m)}`;
  }
  // the answer is a ring under the neighbours' marks: the first neighbour often stands right at it
  svgEl("title", {}, svgEl("circle", { class: "answer-mark", cx: ax, cy: ay, r: 13 }, g)).textContent =
    `answer ${a.lat.toFixed(6)}, ${a.lon.toFixed(6)}, confidence ${a.confidence.toFixed(2)}`;
  a.neighbours.forEach((n, j) => {
    const [x, y] = project(n.lon, n.lat);
    const m = svgEl("g", { class: "nb-mark", "data-j": j }, g);
    svgEl("circle", { cx: x, cy: y, r: 7 }, m);
    svgEl("text", { x: x, y: y }, m).textContent = j + 1;
    svgEl("title", {}, m).textContent = `#${j + 1} similarity ${n.similarity.toFixed(3)}, ${metres(n.distance_m)} from the answer` +
      (n.inliers >= 0 ? `, ${n.inliers} inliers` : "");
  });
}
function hover(j, on) {
  document.querySelectorAll(`.nb-mark[data-j="${j}"]`).forEach(m => m.classList.toggle("hover", on));
}

// --- uploads: one request per photo ----------------------------------------------------------------
function card(file) {
  const c = el("div", "result");
  const img = el("img", "query");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.onerror = () => img.replaceWith(el("div", "query"));  // not an image: an empty frame, not a broken icon
  c.append(img, el("div", "name", file.name), el("div", "message-slot", "locating…"));
  document.getElementById("results").prepend(c);
  return c;
}
function fail(c, message) {
  c.classList.add("bad");
  c.querySelector(".message-slot").replaceWith(el("div", "message", message));
}
function fill(c, a) {
  const i = answers.push(a) - 1;
  c.dataset.i = i;
  const rows = [el("div", "answer", `${a.lat.toFixed(6)}, ${a.lon.toFixed(6)}`)];
  const conf = el("div", "confidence", "confidence ");
  conf.appendChild(el("b", "", a.confidence.toFixed(2)));
  // What the number is, where it is shown: a share of the neighbours' similarity, not a probability.
  const share = a.vote === "pool" ? "the share of the neighbours' similarity in the winning group" :
    `the share of the neighbours' similarity within ${CONFIG.vote_radius_m} m of the answer`;
  conf.title = `confidence: ${share} (0: the neighbours disagree, 1: they all agree)`;
  conf.append(` (${share}) · ${a.vote} vote of ${a.neighbours.length} · ${a.ms.toFixed(0)} ms`);
  rows.push(conf);
  if (a.truth) {
    rows.push(el("div", "truth", `true position (EXIF GPS) ${a.truth.lat.toFixed(6)}, ${a.truth.lon.toFixed(6)}: ` +
      `error ${metres(a.truth.error_m)}` + (onMap(a.truth.lat, a.truth.lon) ? "" : " (outside this map)")));
  }
  if (a.warning) rows.push(el("div", "warning", a.warning));
  c.querySelector(".message-slot").replaceWith(...rows);
  const nbs = el("div", "neighbours");
  a.neighbours.forEach((n, j) => {
    const f = el("figure", "neighbour");
    const img = el("img");
    img.src = "thumb?path=" + encodeURIComponent(n.path);
    img.alt = n.path;
    img.title = `${n.path}\n${n.lat.toFixed(6)}, ${n.lon.toFixed(6)}`;
    // with the geometric rerank, how many local features matched under one geometry (the check's evidence)
    const checked = n.inliers >= 0 ? ` · ${n.inliers} inliers` : "";
    f.append(img, el("figcaption", "", `#${j + 1} ${n.similarity.toFixed(2)} · ${metres(n.distance_m)}${checked}`));
    f.onmouseenter = () => { f.classList.add("hover"); hover(j, true); };
    f.onmouseleave = () => { f.classList.remove("hover"); hover(j, false); };
    nbs.appendChild(f);
  });
  c.appendChild(nbs);
  c.onclick = () => showOnMap(i);
  showOnMap(i);
}
function mb(bytes) { return (bytes / 2 ** 20).toFixed(1); }
async function locate(file) {
  const c = card(file);
  if (file.size > CONFIG.max_upload_bytes) {  // the server would refuse it unread (413)
    fail(c, `${file.name}: ${mb(file.size)} MB, over the ${(CONFIG.max_upload_bytes / 2 ** 20).toFixed(0)} MB limit of this server`);
    return c;
  }
  const form = new FormData();
  form.append("photo", file, file.name);
  try {
    const res = await fetch("api/locate", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ error: `the server answered ${res.status} ${res.statusText}` }));
    const a = Array.isArray(body) ? body[0] : body;
    if (!res.ok || !a || a.error) fail(c, (a && a.error) || `the server answered ${res.status}`);
    else fill(c, a);
  } catch (e) {
    fail(c, `${file.name}: upload failed (${e.message}); is geoloc serve still running?`);
  }
  return c;
}

// --- a route: the photos dropped together, located together along the streets --------------------
function routeLegend(...rows) {
  document.getElementById("route-legend").replaceChildren(...rows);
}
function drawRoute(r, batch) {
  const stops = r.features.filter(f => f.properties.kind === "photo");
  const cardOf = matchCards(r.photos, batch);
  document.getElementById("route").replaceChildren();
  showOnMap(null);  // the last photo's own marks would hide the route: a click on a card or a stop brings them back
  if (project) routeOnMap(r, stops, cardOf);
  const key = el("div");
  key.innerHTML = '<i style="background:#8e24aa;border-radius:0;height:4px;width:18px;vertical-align:middle"></i>route ' +
    '<i style="background:#6a1b9a"></i>photos on it, in the order taken <i style="border:1.5px solid #8e24aa"></i>their single-photo answers';
  const skipped = r.photos.length - stops.length;
  const summary = el("div", "summary", `route of ${stops.length} photo(s), ordered by ${r.order}: ${r.segments} segment(s), ` +
    `${r.distance} steps` + (skipped ? `, ${skipped} skipped` : ""));
  routeLegend(summary, key, ...r.notes.map(n => el("div", "note", n)));
}
function routeOnMap(r, stops, cardOf) {
  const g = document.getElementById("route");
  for (const f of r.features.filter(f => f.geometry.type === "LineString")) {
    svgEl("title", {}, svgEl("polyline", { class: "route-path", points: linePoints(f.geometry.coordinates) }, g))
      .textContent = `route segment ${f.properties.segment + 1} of ${r.segments}`;
  }
  for (const f of stops) {  // drawn first, so that the numbered stops stay on top of every line
    const p = f.properties, [x, y] = project(...f.geometry.coordinates), [sx, sy] = project(p.single.lon, p.single.lat);
    svgEl("line", { class: "route-move", x1: sx, y1: sy, x2: x, y2: y }, g);
    svgEl("title", {}, svgEl("circle", { class: "route-single", cx: sx, cy: sy, r: 3 }, g)).textContent =
      `${p.number}. ${p.path}: its single-photo answer, ${metres(p.moved_m)} from its place on the route`;
  }
  for (const s of stopGroups(stops)) {
    const label = s.photos.map(p => p.number).join(","), w = Math.max(18, 6.5 * label.length + 8);
    const m = svgEl("g", { class: "route-stop" }, g);
    svgEl("rect", { x: s.x - w / 2, y: s.y - 9, width: w, height: 18, rx: 9 }, m);
    svgEl("text", { x: s.x, y: s.y }, m).textContent = label;
    svgEl("title", {}, m).textContent = s.photos.map(p => `${p.number}. ${p.path}${p.time ? ` (${p.time})` : ""}: ` +
      `on the route, confidence ${p.confidence.toFixed(2)}, moved ${metres(p.moved_m)} from its single-photo answer`).join("\n");
    const c = cardOf.get(s.photos[0].number);
    if (c && c.dataset.i !== undefined) m.onclick = () => showOnMap(Number(c.dataset.i));
  }
}
function stopGroups(stops) {
  // photos placed at one spot (a burst, or one database photo chosen twice) would hide each other's
  // numbers: they share one mark that lists them all
  const groups = [];
  for (const f of stops) {
    const [x, y] = project(...f.geometry.coordinates);
    const near = groups.find(q => Math.hypot(q.x - x, q.y - y) < 9);
    if (near) near.photos.push(f.properties);
    else groups.push({ x, y, photos: [f.properties] });
  }
  return groups;
}
function matchCards(photos, batch) {
  // by name, as the route reorders the photos: a name dropped twice takes its cards in turn
  const free = batch.slice(), out = new Map();
  photos.forEach((p, j) => {
    const k = free.findIndex(b => b.file.name === p.path);
    if (k < 0) return;
    const c = free.splice(k, 1)[0].card;
    out.set(j + 1, c);
    if (!p.error && !c.classList.contains("bad")) {
      c.insertBefore(el("div", "on-route", `route: photo ${j + 1} of ${photos.length}, segment ${p.segment + 1}, ` +
        `confidence ${p.confidence.toFixed(2)}, moved ${metres(p.moved_m)}`), c.querySelector(".neighbours"));
    }
  });
  return out;
}
async function locateRoute(batch) {
  const total = batch.reduce((s, b) => s + b.file.size, 0);
  if (total > CONFIG.max_upload_bytes) {
    routeLegend(el("div", "message", `route: the ${batch.length} photos together are ${mb(total)} MB, over the ` +
      `${(CONFIG.max_upload_bytes / 2 ** 20).toFixed(0)} MB limit of this server`));
    return;
  }
  const form = new FormData();
  batch.forEach(b => form.append("photo", b.file, b.file.name));
  try {
    const res = await fetch("api/route", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ error: `the server answered ${res.status} ${res.statusText}` }));
    // a photo the route skipped makes the status a 4xx: the route of the others is still drawn
    if (body && body.type === "FeatureCollection") drawRoute(body, batch);
    else routeLegend(el("div", "message", `route: ${(body && body.error) || `the server answered ${res.status}`}`));
  } catch (e) {
    routeLegend(el("div", "message", `route: upload failed (${e.message}); is geoloc serve still running?`));
  }
}
async function locateAll(files) {
  const list = Array.from(files), batch = [];
  const status = document.getElementById("status");
  for (let i = 0; i < list.length; i++) {
    status.textContent = `locating ${i + 1} of ${list.length}…`;
    batch.push({ file: list[i], card: await locate(list[i]) });
  }
  if (list.length > 1) {
    document.getElementById("route").replaceChildren();
    routeLegend(el("div", "", `locating the ${list.length} photos together as a route…`));
    status.textContent = `locating the ${list.length} photos together as a route…`;
    await locateRoute(batch);
  }
  status.textContent = list.length ? `${list.length} photo(s) done; click one to show it on the map` : "";
}

const drop = document.getElementById("drop"), pick = document.getElementById("pick");
pick.addEventListener("change", () => { locateAll(pick.files); pick.value = ""; });
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); locateAll(e.dataTransfer.files); });
drawCity().catch(e => { document.getElementById("legend-source").textContent = `map unavailable: ${e.message}`; });
</script>
</body></html>
"""


def page_html(config: dict) -> str:
    """The page with the run's facts (name, photos, k, vote, its radius, upload limit) for its script."""
    return _PAGE.replace("__CONFIG__", json.dumps(config).replace("</", "<\\/"))
