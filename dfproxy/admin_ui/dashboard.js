// dfproxy live dashboard: polls the admin's JSON endpoints and draws them. No libraries.
// Everything a request controls (paths, hosts, user agents) is put in the page as text
// (textContent), never as HTML.
"use strict";

const POLL_MS = 1000; // stats, rate series, recent requests
const SLOW_EVERY = 2; // DNS cache, clusters, config and server info every 2nd poll
const WINDOW_S = 300; // the chart shows the last 5 minutes
const CLASSES = [
  ["2xx", "--c2xx"],
  ["3xx", "--c3xx"],
  ["4xx", "--c4xx"],
  ["5xx", "--c5xx"],
  ["1xx", "--c1xx"],
];

const state = {
  tick: 0,
  busy: false,
  stats: {},
  histograms: [],
  quantiles: [],
  series: null,
  clusters: [],
  concurrency: 1,
};

function $(id) {
  return document.getElementById(id);
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

async function getJSON(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

function fmtInt(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return "–";
  return Math.round(n).toLocaleString("en-US");
}

function fmtMs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 10) return v.toFixed(2);
  if (v < 100) return v.toFixed(1);
  return Math.round(v).toLocaleString("en-US");
}

function fmtAgo(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.abs(seconds);
  let text;
  if (s < 1) text = `${Math.round(s * 1000)} ms`;
  else if (s < 120) text = `${s.toFixed(s < 10 ? 1 : 0)} s`;
  else if (s < 7200) text = `${Math.round(s / 60)} min`;
  else text = `${(s / 3600).toFixed(1)} h`;
  return text;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined || text === "" ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fillTable(id, rows, columns, emptyText) {
  const tbody = $(id).querySelector("tbody");
  const frag = document.createDocumentFragment();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, emptyText);
    td.colSpan = columns;
    frag.appendChild(tr);
  }
  for (const build of rows) {
    const tr = document.createElement("tr");
    build(tr);
    frag.appendChild(tr);
  }
  tbody.replaceChildren(frag);
}

// Sum of every stat named prefix.<name>.suffix (e.g. over all listeners).
function sumStats(prefix, suffix) {
  let total = 0;
  let seen = false;
  for (const [name, value] of Object.entries(state.stats)) {
    if (name.startsWith(prefix + ".") && name.endsWith("." + suffix)) {
      total += value;
      seen = true;
    }
  }
  return seen ? total : null;
}

// -- polling --------------------------------------------------------------------------------

async function poll() {
  if (state.busy) return;
  state.busy = true;
  const slow = state.tick % SLOW_EVERY === 0;
  state.tick += 1;
  try {
    const jobs = [
      getJSON("/stats?format=json").then(onStats),
      getJSON("/stats/history").then(onSeries),
      getJSON("/access_log?limit=50").then(onLog),
    ];
    if (slow) {
      jobs.push(getJSON("/server_info").then(onServerInfo));
      jobs.push(getJSON("/config_status").then(onConfig));
      jobs.push(getJSON("/clusters?format=json").then(onClusters));
      jobs.push(getJSON("/dns_cache").then(onDns));
    }
    const results = await Promise.allSettled(jobs);
    const failed = results.filter((r) => r.status === "rejected");
    $("updated").textContent = failed.length
      ? `admin unreachable (${failed.length} failed)`
      : `updated ${new Date().toLocaleTimeString("en-GB")}`;
    renderTiles();
    renderBreakers();
  } finally {
    state.busy = false;
  }
}

function onStats(data) {
  const stats = {};
  let hist = null;
  for (const item of data.stats) {
    if (item.histograms) hist = item.histograms;
    else stats[item.name] = item.value;
  }
  state.stats = stats;
  state.quantiles = hist ? hist.supported_quantiles : [];
  state.histograms = hist ? hist.computed_quantiles : [];
  renderLatency();
}

function onSeries(data) {
  state.series = data;
  drawChart();
}

function onServerInfo(info) {
  $("version").textContent = info.version;
  $("uptime").textContent = info.uptime_current_epoch;
  const pill = $("state");
  pill.textContent = info.state;
  pill.className = "pill " + info.state;
  state.concurrency = (info.command_line_options && info.command_line_options.concurrency) || 1;
  $("workers").textContent = String(state.concurrency);
}

function onConfig(status) {
  const v = status.active && status.active.version;
  $("config-version").textContent = v || "–";
  $("config-version").title = status.last_rejected
    ? "last rejected: " + (status.last_rejected.errors || []).join("; ")
    : "";
}

function onClusters(data) {
  state.clusters = data.cluster_statuses || [];
}

// -- tiles, latency, breakers ---------------------------------------------------------------

function lastRate() {
  const s = state.series;
  if (!s || s.samples.length === 0) return null;
  return s.samples[s.samples.length - 1][s.columns.indexOf("rq")];
}

function renderTiles() {
  $("k-rps").textContent = fmtInt(lastRate());
  $("k-cx").textContent = fmtInt(sumStats("http", "downstream_cx_active"));
  $("k-tunnels").textContent = fmtInt(sumStats("http", "downstream_cx_upgrades_active"));
  $("k-rq").textContent = fmtInt(sumStats("http", "downstream_rq_active"));
  $("k-ucx").textContent = fmtInt(sumStats("cluster", "upstream_cx_active"));
  $("k-total").textContent = fmtInt(sumStats("http", "downstream_rq_total"));
}

function renderLatency() {
  const idx = (q) => state.quantiles.indexOf(q);
  const rows = state.histograms
    .filter((h) => h.name.endsWith("_rq_time"))
    .map((h) => (tr) => {
      cell(tr, h.name, "mono");
      for (const q of [50, 90, 99]) {
        const v = idx(q) >= 0 ? h.values[idx(q)].cumulative : null;
        cell(tr, fmtMs(v), "num");
      }
    });
  fillTable("latency", rows, 4, "no requests yet");
}

const BREAKERS = [
  ["connections", "max_connections", "upstream_cx_active", "cx_open"],
  ["pending requests", "max_pending_requests", "upstream_rq_pending_active", "rq_pending_open"],
  ["requests", "max_requests", "upstream_rq_active", "rq_open"],
  ["retries", "max_retries", null, "rq_retry_open"],
];

function renderBreakers() {
  const box = $("breakers");
  const frag = document.createDocumentFragment();
  if (state.clusters.length === 0) {
    const div = document.createElement("div");
    div.className = "muted";
    div.textContent = "no cluster";
    frag.appendChild(div);
  }
  for (const c of state.clusters) {
    const wrap = document.createElement("div");
    wrap.className = "cb-cluster";
    const name = document.createElement("div");
    name.className = "cb-name";
    name.textContent =
      c.name + (state.concurrency > 1 ? `  (limits per worker × ${state.concurrency})` : "");
    wrap.appendChild(name);
    const limits =
      (c.circuit_breakers.thresholds || []).find((t) => (t.priority || "DEFAULT") === "DEFAULT") ||
      {};
    for (const [label, limitKey, activeStat, openStat] of BREAKERS) {
      const limit = (limits[limitKey] || 0) * state.concurrency;
      const open = state.stats[`cluster.${c.name}.circuit_breakers.default.${openStat}`] || 0;
      const used = activeStat === null ? null : state.stats[`cluster.${c.name}.${activeStat}`] || 0;
      const row = document.createElement("div");
      row.className = "cb-row";
      const l = document.createElement("div");
      l.textContent = label;
      const bar = document.createElement("div");
      const frac = used === null || !limit ? 0 : Math.min(1, used / limit);
      bar.className = "bar" + (open ? " open" : frac > 0.8 ? " warn" : "");
      const fill = document.createElement("div");
      fill.style.width = `${Math.max(frac * 100, used ? 1 : 0)}%`;
      bar.appendChild(fill);
      const v = document.createElement("div");
      v.className = "cb-val";
      if (open) {
        v.textContent = "OPEN";
        v.classList.add("flag-open");
      } else if (used === null) {
        v.textContent = `closed · max ${fmtInt(limit)}`;
      } else {
        v.textContent = `${fmtInt(used)} / ${fmtInt(limit)} · ${fmtInt(limit - used)} left`;
      }
      row.append(l, bar, v);
      wrap.appendChild(row);
    }
    frag.appendChild(wrap);
  }
  box.replaceChildren(frag);
}

// -- DNS cache and recent requests -----------------------------------------------------------

function onDns(data) {
  // One process: {dns_caches: [...]}; the --workers supervisor: {workers: [{worker, view}]}.
  const caches = [];
  if (data.workers) {
    for (const w of data.workers) {
      for (const c of (w.view && w.view.dns_caches) || []) caches.push([w.worker, c]);
    }
  } else {
    for (const c of data.dns_caches || []) caches.push([null, c]);
  }
  const rows = [];
  for (const [worker, cache] of caches) {
    const hosts = cache.hosts.slice().sort((a, b) => a.host.localeCompare(b.host));
    for (const h of hosts) {
      rows.push((tr) => {
        cell(tr, worker === null ? h.host : `${h.host}  (worker ${worker})`, "mono");
        cell(tr, (h.addresses || []).join(", "), "mono wrap");
        const ok = h.status === "success" || h.status === "empty";
        cell(tr, h.status, h.status === "resolving" ? "muted" : ok ? "s2" : "s5");
        cell(tr, fmtAgo(h.resolved_seconds_ago), "num");
        cell(tr, fmtAgo(h.last_used_seconds_ago), "num");
        cell(
          tr,
          h.next_refresh_in_seconds === null ? "–" : "in " + fmtAgo(h.next_refresh_in_seconds),
          "num",
        );
        cell(tr, h.failures, h.failures ? "num s5" : "num");
      });
    }
  }
  $("dns-count").textContent = `${rows.length} host${rows.length === 1 ? "" : "s"}`;
  fillTable("dns", rows, 7, "no host resolved yet");
}

function onLog(data) {
  const entries = data.entries.slice().reverse(); // newest first
  const rows = entries.map((e) => (tr) => {
    cell(tr, (e.start_time || "").replace("T", " ").replace("Z", ""), "mono");
    cell(tr, e.method);
    cell(tr, e.authority, "mono wrap");
    cell(tr, e.path, "mono wrap");
    const klass = Math.floor((e.response_code || 0) / 100);
    cell(tr, e.response_code || "–", `num status s${klass}`);
    cell(tr, e.response_flags);
    cell(tr, e.duration, "num");
    cell(tr, fmtInt(e.bytes_sent), "num");
    cell(tr, e.upstream_host, "mono");
  });
  $("log-count").textContent = `last ${entries.length}`;
  fillTable("log", rows, 9, "no request since the page opened");
}

// -- the chart: stacked bars, one per second ---------------------------------------------------

function niceMax(v) {
  if (v <= 5) return 5;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawChart() {
  const canvas = $("rps-chart");
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * dpr)) canvas.width = Math.round(width * dpr);
  if (canvas.height !== Math.round(height * dpr)) canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const s = state.series;
  const samples = s ? s.samples : [];
  const col = s ? Object.fromEntries(s.columns.map((c, i) => [c, i])) : {};
  const end = samples.length ? samples[samples.length - 1][0] : Math.floor(Date.now() / 1000);
  const byT = new Map(samples.map((row) => [row[0], row]));
  let peak = 0;
  for (const row of samples) if (row[0] > end - WINDOW_S) peak = Math.max(peak, row[col.rq]);
  const yMax = niceMax(peak);

  const left = 52;
  const right = 12;
  const top = 10;
  const bottom = 24;
  const plotW = width - left - right;
  const plotH = height - top - bottom;

  // grid and y labels
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = css("--muted");
  ctx.strokeStyle = css("--line");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, Math.round(y) + 0.5);
    ctx.lineTo(left + plotW, Math.round(y) + 0.5);
    ctx.stroke();
    const tick = (yMax * i) / 4;
    ctx.fillText(Number.isInteger(tick) ? fmtInt(tick) : tick.toFixed(1), left - 8, y);
  }
  // x labels: one a minute
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let m = 0; m <= WINDOW_S / 60; m++) {
    const x = left + plotW - (plotW * m * 60) / WINDOW_S;
    ctx.fillText(m === 0 ? "now" : `-${m} min`, x, top + plotH + 6);
  }

  // bars
  const slot = plotW / WINDOW_S;
  const barW = Math.max(1, slot - (slot > 3 ? 1 : 0));
  const colors = CLASSES.map(([, v]) => css(v));
  let drawn = 0;
  for (let i = 0; i < WINDOW_S; i++) {
    const row = byT.get(end - WINDOW_S + 1 + i);
    if (!row) continue;
    let y = top + plotH;
    CLASSES.forEach(([name], k) => {
      const n = row[col[name]] || 0;
      if (!n) return;
      const h = (n / yMax) * plotH;
      ctx.fillStyle = colors[k];
      ctx.fillRect(left + i * slot, y - h, barW, h);
      y -= h;
    });
    if (row[col.rq]) drawn += 1;
  }
  canvas.dataset.seconds = String(samples.length);
  canvas.dataset.bars = String(drawn);
}

function buildLegend() {
  const box = $("legend");
  for (const [name, v] of CLASSES) {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = `var(${v})`;
    span.append(swatch, document.createTextNode(name));
    box.appendChild(span);
  }
}

buildLegend();
window.addEventListener("resize", drawChart);
poll();
setInterval(poll, POLL_MS);
