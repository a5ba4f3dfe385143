// The ragvid retrieval UI: plain JS over the service's JSON API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
let indexes = {};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({ error: { message: `HTTP ${resp.status}` } }));
  if (!resp.ok) throw new Error(data.error ? `${data.error.kind || resp.status}: ${data.error.message}` : `HTTP ${resp.status}`);
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

const base = () => `/api/indexes/${encodeURIComponent($("index").value)}`;
const media = (what, id) => `${base()}/video/${what}?id=${encodeURIComponent(id)}`;

async function loadIndexes() {
  const data = await api("/api/indexes");
  const sel = $("index");
  sel.replaceChildren();
  for (const info of data.indexes) {
    indexes[info.name] = info;
    sel.append(el("option", { value: info.name }, `${info.name} (${info.version}, ${info.videos} videos)`));
  }
  $("status").textContent = `${data.indexes.length} index(es) served`;
  $("k").max = data.limits.max_k;
  onIndexChange();
}

function onIndexChange() {
  const info = indexes[$("index").value];
  if (!info) return;
  for (const opt of $("mode").options) opt.disabled = !info.text_modes.includes(opt.value);
  if ($("mode").selectedOptions[0]?.disabled) {
    const first = [...$("mode").options].find((o) => !o.disabled);
    if (first) $("mode").value = first.value;
  }
  onKindChange();
  loadHistogram();
}

function onKindChange() {
  const video = $("kind").value === "video";
  $("mode").disabled = video;
  $("q").placeholder = video ? "a video_id of the index" : "a red circle moving left";
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function buildRequest() {
  const body = { k: Number($("k").value) };
  const dmin = numberOrNull("dmin");
  if (dmin !== null) body.delta_min = dmin;
  const dd = numberOrNull("ddedup");
  if (dd !== null) body.delta_dedup = dd;
  const exclude = $("exclude").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (exclude.length) body.exclude_ids = exclude;
  if ($("exclude-dups").checked) body.exclude_duplicates = true;
  const where = {};
  const lo = numberOrNull("dur-min"), hi = numberOrNull("dur-max");
  if (lo !== null) where.duration_min = lo;
  if (hi !== null) where.duration_max = hi;
  if ($("source").value.trim()) where.source = $("source").value.trim();
  if ($("split").value) where.split = $("split").value;
  const eq = $("equals").value.trim();
  if (eq.includes("=")) {
    const [col, ...rest] = eq.split("=");
    where.equals = { [col.trim()]: rest.join("=").trim() };
  }
  if (Object.keys(where).length) body.where = where;
  if ($("kind").value === "video") return ["video", { ...body, video_id: $("q").value.trim() }];
  return ["text", { ...body, text: $("q").value, mode: $("mode").value }];
}

async function search(event) {
  event.preventDefault();
  showError("");
  const [kind, body] = buildRequest();
  $("go").disabled = true;
  try {
    const res = await api(`${base()}/search/${kind}`, body);
    render(res);
  } catch (err) {
    showError(err.message);
  } finally {
    $("go").disabled = false;
  }
}

function tile(hit) {
  if (!hit.valid) {
    return el("figure", { class: "tile padded", "data-rank": hit.rank }, `#${hit.rank} — padded`);
  }
  const img = el("img", { class: "media", src: media("thumb", hit.video_id), alt: hit.video_id, title: "click to play" });
  img.addEventListener("error", () => { img.alt = "no frame"; });
  img.addEventListener("click", () => {
    const video = el("video", { class: "media", src: media("file", hit.video_id), controls: "", autoplay: "", muted: "", loop: "" });
    video.muted = true;
    img.replaceWith(video);
  });
  const cap = el("figcaption", {},
    el("span", { class: "score" }, `#${hit.rank}  ${hit.score.toFixed(4)}`), " ",
    el("code", {}, hit.video_id), el("br"), hit.caption || "");
  const meta = Object.entries(hit.meta || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  if (meta) cap.append(el("br"), el("span", { class: "meta" }, meta));
  if (hit.group_id !== null && hit.group_id !== undefined) {
    cap.append(el("br"), el("button", { class: "badge", type: "button", onclick: () => showGroup(hit.group_id) }, `duplicate group ${hit.group_id}`));
  }
  return el("figure", { class: "tile", "data-video-id": hit.video_id, "data-rank": hit.rank }, img, cap);
}

function render(res) {
  $("results").replaceChildren(...res.results.map(tile));
  const kept = res.mask.filter(Boolean).length;
  const dmin = res.delta_min === null ? "off" : res.delta_min;
  $("summary").textContent =
    `${kept} of ${res.k} kept · served from ${res.index} version ${res.version} · mode ${res.mode} ` +
    `(${res.score_kind}) · δ_min ${dmin} · ${res.candidates} candidates` +
    (res.widened ? `, widened ${res.widened}×` : "") + (res.exact_scan ? " · exact scan of the rows the predicates allow" : "") +
    ` · ${res.took_ms.toFixed(1)} ms`;
  const rows = res.filters.map((f) => el("tr", { "data-filter": f.name },
    el("td", {}, f.name), el("td", {}, f.detail), el("td", { class: "num" }, f.dropped), el("td", {}, f.scope)));
  $("filters").tBodies[0].replaceChildren(...rows);
  $("report").hidden = false;
}

async function showGroup(groupId) {
  try {
    const g = await api(`${base()}/groups/${groupId}`);
    $("group-id").textContent = `${g.group_id} (${g.size} videos)`;
    $("group-members").tBodies[0].replaceChildren(...g.members.map((m) => el("tr", {},
      el("td", {}, el("code", {}, m.video_id)), el("td", {}, m.is_canonical ? "yes" : ""),
      el("td", { class: "num" }, m.max_sim.toFixed(4)), el("td", {}, m.in_index ? "yes" : "no"))));
    $("group").hidden = false;
  } catch (err) {
    showError(err.message);
  }
}

async function loadHistogram() {
  try {
    drawHistogram(await api(`${base()}/histogram`));
  } catch (err) {
    $("hist-note").textContent = err.message;
  }
}

function drawHistogram(h) {
  const c = $("hist"), ctx = c.getContext("2d");
  const W = c.width, H = c.height, pad = 24;
  ctx.clearRect(0, 0, W, H);
  const lo = h.edges[0], hi = h.edges[h.edges.length - 1];
  const x = (v) => pad + ((v - lo) / (hi - lo)) * (W - 2 * pad);
  const top = Math.max(1, ...h.counts.map((n) => Math.log10(1 + n)));
  ctx.fillStyle = "#4C72B0";
  h.counts.forEach((n, i) => {
    const bh = (Math.log10(1 + n) / top) * (H - 2 * pad);
    ctx.fillRect(x(h.edges[i]) + 1, H - pad - bh, Math.max(1, x(h.edges[i + 1]) - x(h.edges[i]) - 2), bh);
  });
  ctx.fillStyle = "#444";
  ctx.font = "11px sans-serif";
  for (const t of [lo, (lo + hi) / 2, hi]) ctx.fillText(t.toFixed(2), x(t) - 10, H - 8);
  for (const [v, colour, name] of [[h.delta_dedup, "#C44E52", "δ_dedup"], [h.delta_min_video, "#55A868", "δ_min"]]) {
    ctx.strokeStyle = colour;
    ctx.setLineDash([4, 3]);
    ctx.beginPath(); ctx.moveTo(x(v), pad / 2); ctx.lineTo(x(v), H - pad); ctx.stroke();
    ctx.fillStyle = colour;
    ctx.fillText(`${name} ${v}`, x(v) - 60, pad / 2 + 8);
  }
  ctx.setLineDash([]);
  $("hist-note").textContent =
    `${h.what}; ${h.sample} of ${h.videos} videos, log scale; ${h.at_or_above_delta_dedup} at or above δ_dedup.` +
    (h.dedup_histogram_png ? " The dedup run's histogram: " : "");
  if (h.dedup_histogram_png) {
    $("hist-note").append(el("a", { href: `${base()}/histogram.png`, target: "_blank" }, "PNG"));
  }
}

$("query").addEventListener("submit", search);
$("index").addEventListener("change", onIndexChange);
$("kind").addEventListener("change", onKindChange);
loadIndexes().catch((err) => showError(err.message));
