# ruff: noqa: E501  (the page is HTML and JavaScript)
"""The latent browser's page: one HTML file with inline CSS and JS, no
network. It reads data/meta.js and each SAE's data/S/list.js at once, and a
latent's data/S/chunk-NNNN.js when the latent is first opened (a script
element: pages from file:// may not fetch). Ids the tests use: #sae,
#search, #count, #list (rows .row, data-latent), #detail, #examples (.example,
highlighted tokens .tok), #histogram, #logits, #neighbours."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>actlab latents</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #222; display: flex; height: 100vh; }
#side { width: 430px; border-right: 1px solid #ddd; display: flex; flex-direction: column; }
#controls { padding: .6em; border-bottom: 1px solid #eee; } #controls input, #controls select { width: 100%; margin: .2em 0; }
#list { overflow-y: auto; flex: 1; } table { border-collapse: collapse; width: 100%; }
th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer; text-align: left; padding: .2em .4em; }
td { padding: .15em .4em; border-bottom: 1px solid #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.row { cursor: pointer; } tr.row:hover { background: #eef5ff; } tr.row.open { background: #dceaff; }
#pager { padding: .4em .6em; border-top: 1px solid #eee; } #detail { flex: 1; overflow-y: auto; padding: 0 1.2em 2em; }
.example { margin: .3em 0; padding: .3em .5em; background: #fafafa; font-family: ui-monospace, monospace;
  white-space: pre-wrap; word-break: break-word; font-size: 12.5px; } .meta { color: #666; font-size: 12px; }
.tok { border-radius: 2px; } .expl { font-size: 1.1em; background: #fffbe6; padding: .4em .6em; border-radius: 4px; }
.cols { display: flex; gap: 2em; flex-wrap: wrap; } .cols > div { min-width: 220px; } a.latent { cursor: pointer; color: #0645ad; }
</style></head>
<body>
<div id="side">
  <div id="controls">
    <select id="sae"></select>
    <input id="search" placeholder="search: latent id, or words of an explanation" autocomplete="off">
    <div class="meta"><span id="count"></span></div>
  </div>
  <div id="list"></div>
  <div id="pager"><button id="prev">&larr;</button> <span id="page"></span> <button id="next">&rarr;</button></div>
</div>
<div id="detail"><p class="meta">Pick a latent on the left.</p></div>
<script src="data/meta.js"></script>
<script>
"use strict";
const META = ACTLAB_META, PAGE_SIZE = 100;
const lists = {}, chunks = {}, waiting = {};
let sae = 0, rows = [], page = 0, sortKey = "frequency", sortDesc = true, openLatent = null;
function actlabData(kind, s, chunk, value) {
  const key = kind + ":" + s + ":" + chunk;
  if (kind === "list") lists[s] = value; else chunks[s + ":" + chunk] = value;
  (waiting[key] || []).forEach(f => f()); delete waiting[key];
}
function load(kind, s, chunk, then) {
  const have = kind === "list" ? lists[s] : chunks[s + ":" + chunk];
  if (have) { then(); return; }
  const key = kind + ":" + s + ":" + chunk;
  if (waiting[key]) { waiting[key].push(then); return; }
  waiting[key] = [then];
  const el = document.createElement("script");
  el.src = kind === "list" ? `data/${s}/list.js` : `data/${s}/chunk-${String(chunk).padStart(4, "0")}.js`;
  document.body.appendChild(el);
}
function esc(t) { return String(t).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
function fmt(v, pct) { return v === null || v === undefined ? "" : pct ? (100 * v).toPrecision(3) + "%" : (+v).toPrecision(4); }
function filterRows() {
  const L = lists[sae], q = document.getElementById("search").value.trim().toLowerCase();
  let idx = [...Array(L.count.length).keys()];
  if (q) {
    const asNumber = /^\d+$/.test(q) ? +q : null;
    idx = idx.filter(j => j === asNumber || (L.explanation[j] || "").toLowerCase().includes(q));
  }
  const v = sortKey === "latent" ? idx.map(j => j) : L[sortKey];
  idx.sort((a, b) => { const x = v[a] ?? -Infinity, y = v[b] ?? -Infinity;
    return x === y ? a - b : (sortDesc ? (x < y ? 1 : -1) : (x < y ? -1 : 1)); });
  rows = idx; page = 0; drawList();
}
function drawList() {
  const L = lists[sae], start = page * PAGE_SIZE, shown = rows.slice(start, start + PAGE_SIZE);
  const head = [["latent", "latent"], ["frequency", "freq."], ["max", "max"], ["explanation", "explanation"], ["score", "score"]]
    .map(([k, t]) => `<th data-key="${k}">${t}${k === sortKey ? (sortDesc ? " \u25be" : " \u25b4") : ""}</th>`).join("");
  const body = shown.map(j => `<tr class="row${j === openLatent ? " open" : ""}" data-latent="${j}"><td class="num">${j}</td>` +
    `<td class="num">${fmt(L.frequency[j], true)}</td><td class="num">${fmt(L.max[j])}</td>` +
    `<td>${esc(L.explanation[j] || "")}</td><td class="num">${fmt(L.score[j])}</td></tr>`).join("");
  document.getElementById("list").innerHTML = `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
  document.getElementById("count").textContent = `${rows.length} of ${L.count.length} latents`;
  document.getElementById("page").textContent = `${page + 1} / ${Math.max(1, Math.ceil(rows.length / PAGE_SIZE))}`;
}
function shade(v, max) { const a = Math.max(0, Math.min(1, v / (max || 1))); return `rgba(255,80,0,${(0.08 + 0.8 * a).toFixed(2)})`; }
function example(e, windows, max) {
  const [kind, key, value, position, positions, values, text, start] = e, tokens = windows[key] || [];
  const at = {}; positions.forEach((p, i) => at[p] = values[i]);
  const lo = Math.max(0, position - 24), hi = Math.min(tokens.length, position + 9);
  let html = "";
  for (let p = lo; p < hi; p++) {
    const v = at[p], style = v ? ` style="background:${shade(v, max)}"` : "";
    html += `<span class="tok${v ? " on" : ""}"${style} title="${v ? v : 0}">${esc(tokens[p])}</span>`;
  }
  return `<div class="example"><span class="meta">${kind} \u00b7 ${fmt(value)} \u00b7 text ${text}, token ${start + position - (META.has_bos ? 1 : 0)}</span>\n${html}</div>`;
}
function histogram(hist) {
  if (!hist.length) return "<p class='meta'>never active</p>";
  const lo = hist[0][0], hi = hist[hist.length - 1][0], top = Math.max(...hist.map(h => h[1]));
  const width = 420, height = 110, n = hi - lo + 1, w = width / n;
  const bars = hist.map(([b, c]) => `<rect x="${(b - lo) * w}" y="${height - 100 * c / top}" width="${Math.max(w - 1, 1)}" height="${100 * c / top}" fill="#e8590c"><title>${fmt(META.edges[b])} - ${fmt(META.edges[b + 1])}: ${c}</title></rect>`).join("");
  return `<svg width="${width}" height="${height + 16}">${bars}<text x="0" y="${height + 14}" font-size="11">${fmt(META.edges[lo])}</text>` +
    `<text x="${width}" y="${height + 14}" font-size="11" text-anchor="end">${fmt(META.edges[hi + 1])}</text></svg>`;
}
function links(pairs, label) {
  return `<table><tr><th>latent</th><th>${label}</th></tr>` + pairs.map(([o, v]) =>
    `<tr><td><a class="latent" data-latent="${o}">${o}</a></td><td class="num">${fmt(v)}</td></tr>`).join("") + "</table>";
}
function scores(s) {
  if (!s) return "";
  const num = v => v === null ? "n/a" : fmt(v);
  const pair = (a, b) => `detection AUROC ${num(a)}, fuzzing AUROC ${num(b)}`;
  return `<p class="meta" id="scores">${pair(s.score, s.fuzzing_auroc)}; baseline` +
    (s.baseline ? ` (${esc(s.baseline)})` : "") + `: ${pair(s.baseline_score, s.baseline_fuzzing_auroc)}</p>`;
}
function tokens(pairs) {
  return "<table>" + pairs.map(([t, v]) => `<tr><td><code>${esc(t)}</code></td><td class="num">${fmt(v)}</td></tr>`).join("") + "</table>";
}
function openDetail(j) {
  openLatent = j; location.hash = `${sae}/${j}`;
  const chunk = Math.floor(j / META.chunk);
  load("chunk", sae, chunk, () => {
    const C = chunks[sae + ":" + chunk], d = C.latents[j], L = lists[sae], info = META.saes[sae];
    const link = info.neuronpedia ? ` \u00b7 <a href="${info.neuronpedia}/${j}">Neuronpedia</a>` : "";
    document.getElementById("detail").innerHTML =
      `<h2>${esc(info.name)} \u00b7 latent ${j}</h2><p class="meta">${esc(info.hook)} \u00b7 active on ${fmt(L.frequency[j], true)} of tokens` +
      ` \u00b7 mean ${fmt(L.mean[j])} \u00b7 max ${fmt(L.max[j])}${link}</p>` +
      (d.explanation ? `<p class="expl">${esc(d.explanation)}</p>${scores(d.scores)}` : "") +
      `<div class="cols"><div><h3>Activations</h3><div id="histogram">${histogram(d.hist)}</div></div>` +
      `<div id="logits"><h3>Promotes</h3>${tokens(d.top_tokens)}</div><div><h3>Suppresses</h3>${tokens(d.bottom_tokens)}</div>` +
      `<div id="neighbours"><h3>Decoder neighbours</h3>${links(d.neighbours, "cosine")}</div>` +
      `<div><h3>Co-firing</h3>${links(d.cofiring, "Jaccard")}</div></div>` +
      `<h3>Examples</h3><div id="examples">${d.examples.map(e => example(e, C.windows, L.max[j])).join("") || "<p class='meta'>none</p>"}</div>`;
    drawList();
  });
}
function chooseSae(s) {
  sae = s; openLatent = null;
  load("list", s, 0, () => filterRows());
}
document.getElementById("sae").innerHTML = META.saes.map((s, i) => `<option value="${i}">${esc(s.name)} (${s.d_sae} latents)</option>`).join("");
document.getElementById("sae").onchange = e => chooseSae(+e.target.value);
document.getElementById("search").oninput = () => filterRows();
document.getElementById("prev").onclick = () => { if (page > 0) { page--; drawList(); } };
document.getElementById("next").onclick = () => { if ((page + 1) * PAGE_SIZE < rows.length) { page++; drawList(); } };
document.getElementById("list").onclick = e => {
  const th = e.target.closest("th"); if (th) { const k = th.dataset.key; sortDesc = k === sortKey ? !sortDesc : k !== "latent"; sortKey = k; filterRows(); return; }
  const tr = e.target.closest("tr.row"); if (tr) openDetail(+tr.dataset.latent);
};
document.getElementById("detail").onclick = e => { const a = e.target.closest("a.latent"); if (a) openDetail(+a.dataset.latent); };
const start = /^#(\d+)\/(\d+)$/.exec(location.hash);
if (start) { document.getElementById("sae").value = start[1]; sae = +start[1]; load("list", sae, 0, () => { filterRows(); openDetail(+start[2]); }); }
else chooseSae(0);
</script></body></html>
"""
