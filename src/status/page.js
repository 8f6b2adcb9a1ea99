"use strict";
// Draws /stats every REFRESH_MS; rates come from the difference of two snapshots. Only
// textContent and SVG attributes are written: names from the config never become markup.
const REFRESH_MS = 2000;
const KEEP = 150; // five minutes of samples
const samples = [];
const $ = (id) => document.getElementById(id);
const num = (v) => (typeof v === "number" ? v : 0);
const fmt = (v) => Math.round(num(v)).toLocaleString("en");

function set(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}

function rows(tbody, data) {
  const body = $(tbody);
  body.replaceChildren();
  for (const cells of data) {
    const tr = document.createElement("tr");
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = String(c);
      if (typeof c === "number" && i > 0) td.className = "n";
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
}

function sorted(obj) {
  return Object.entries(obj || {}).sort((a, b) => num(b[1]) - num(a[1]));
}

function chart(id, values, max) {
  const svg = $(id);
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  for (const y of [0.5, 89.5]) {
    const l = document.createElementNS(ns, "line");
    l.setAttribute("x1", "0"); l.setAttribute("x2", "300");
    l.setAttribute("y1", String(y)); l.setAttribute("y2", String(y));
    svg.appendChild(l);
  }
  if (values.length < 2) return;
  const top = max > 0 ? max : 1;
  const step = 300 / (KEEP - 1);
  const x0 = 300 - step * (values.length - 1);
  const points = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(88 - (86 * v) / top).toFixed(1)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
}

function render(s) {
  const now = Date.now() / 1000;
  const total = num(s.requests.total);
  samples.push({ t: now, total, hits: num(s.cache.hits), reads: num(s.cache.reads) });
  while (samples.length > KEEP) samples.shift();
  const rps = [];
  const ratio = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = Math.max(b.t - a.t, 0.001);
    rps.push(Math.max(b.total - a.total, 0) / dt);
    const reads = b.reads - a.reads;
    ratio.push(reads > 0 ? (b.hits - a.hits) / reads : (ratio.length ? ratio[ratio.length - 1] : 0));
  }
  const last = rps.length ? rps[rps.length - 1] : 0;
  set("version", "v" + s.version + (s.draining ? " · draining" : ""));
  set("updated", "updated " + new Date().toLocaleTimeString("en-GB"));
  set("rps", last.toFixed(last < 10 ? 1 : 0));
  set("total", fmt(total) + " requests since start");
  set("hit-ratio", (num(s.cache.hit_ratio) * 100).toFixed(1) + "%", num(s.cache.hit_ratio));
  set("hits", fmt(s.cache.hits) + " hits of " + fmt(s.cache.reads) + " cached reads · " + fmt(s.cache.entries) + " accounts cached");
  const calls = s.realtime.calls || {};
  set("rt-forwarded", fmt(calls.forwarded), num(calls.forwarded));
  set("rt-collapsed", fmt(calls.collapsed), num(calls.collapsed));
  set("rt-limited", fmt(calls.rate_limited));
  if (typeof s.realtime.cost_per_call === "number") {
    set("saved", num(s.realtime.saved_cost).toFixed(2));
    set("saved-note", fmt(calls.collapsed) + " collapsed calls × " + s.realtime.cost_per_call + " per call");
  } else {
    set("saved", "–");
    set("saved-note", "set [realtime] cost_per_call to estimate it");
  }
  const ms = (v) => (typeof v === "number" ? v.toFixed(v < 10 ? 1 : 0) + " ms" : "–");
  set("p50", "p50 " + ms(s.upstream.p50_ms));
  set("p99", "p99 " + ms(s.upstream.p99_ms));
  set("jobs", fmt(s.jobs_in_flight));
  set("store", s.store.backend);
  const st = $("store");
  st.className = "big " + (String(s.store.status).startsWith("degraded") ? "degraded" : "ok");
  set("store-detail", s.store.status + " · " + fmt(s.store.errors) + " errors");
  chart("chart-rps", rps, Math.max(...rps, 1));
  chart("chart-hits", ratio, 1);
  set("chart-rps-range", rps.length ? "peak " + Math.max(...rps).toFixed(0) + " req/s over the last " + Math.round(now - samples[0].t) + " s" : "collecting…");
  set("chart-hits-range", ratio.length ? "last " + (ratio[ratio.length - 1] * 100).toFixed(1) + "%" : "collecting…");
  rows("routes", sorted(s.requests.by_route));
  rows("statuses", sorted(s.requests.by_status));
  rows("clients", Object.entries(s.clients || {}).map(([name, c]) => {
    const refused = Object.values(c.limited || {}).reduce((a, b) => a + num(b), 0);
    const l = c.limits || {};
    const parts = [];
    if (l.rate != null) parts.push(l.rate + "/s burst " + l.burst);
    if (l.max_concurrent_upstream != null) parts.push(l.max_concurrent_upstream + " upstream");
    if (l.quota != null) parts.push(l.quota);
    return [name, num(c.requests), refused, parts.join(", ") || "none"];
  }));
  rows("errors", (s.recent_errors || []).slice(0, 10).map((e) => [e.at, e.status, e.kind, e.route, e.client]));
}

// With [admin] token set, /stats needs it; the page asks once and keeps it for this tab only.
function headers() {
  const token = sessionStorage.getItem("mono-proxy-admin-token");
  return token ? { Authorization: "Bearer " + token } : {};
}
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("mono-proxy-admin-token", $("token").value.trim());
  $("login").hidden = true;
  clearTimeout(timer);
  refresh();
});

let timer;
async function refresh() {
  try {
    const r = await fetch("stats", { cache: "no-store", credentials: "same-origin", headers: headers() });
    if (r.status === 401) {
      $("login").hidden = false;
      throw new Error("the admin token is required");
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    set("error", "");
    document.body.dataset.loaded = "true";
  } catch (e) {
    set("error", "cannot read /stats: " + e.message);
  } finally {
    timer = setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
