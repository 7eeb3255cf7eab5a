// menet's dashboard: reads GET /config (every few seconds, and after each change) and the
// traffic the node samples each second as server-sent events (GET /events), drawn as charts of
// the last 15 minutes; it changes the node through the admin API (the seed's own routes).
// Everything shown is inserted as text or SVG attributes, never as HTML: names come from peers.
// The admin token, when the node has one, is asked for once and kept for this tab only.
"use strict";

const POLL_MS = 1000;
/// Polling GET /config while the events flow: the traffic comes by itself.
const POLL_LIVE_MS = 3000;
/// Seconds of traffic drawn.
const WINDOW_S = 15 * 60;
const SVG = "http://www.w3.org/2000/svg";
/// Object key (`tunnel:NAME`, `service:SIDE:NAME`) -> [[t, in, out], ...], oldest first.
const series = new Map();
let lastSample = 0; // unix seconds of the newest sample
let firstSample = 0; // unix seconds of the oldest sample kept
let eventsLive = false;
let selected = null; // the tunnel drawn large
window.menetEvents = 0; // samples received (the browser test reads it)
let token = sessionStorage.getItem("menet-token") || "";
let previous = null; // { at, tunnels: {name: {sent, received}} } for the rates

const $ = (sel) => document.querySelector(sel);

function headers(extra) {
  const h = Object.assign({ "Content-Type": "application/json" }, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (res.status === 401) askToken();
  return { ok: res.ok, status: res.status, data };
}

function askToken() {
  $("#token-form").hidden = false;
  $("#token").focus();
}

function say(text, ok) {
  const m = $("#message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function bytes(n) {
  if (typeof n !== "number") return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function rate(n) {
  return typeof n === "number" ? bytes(n) + "/s" : "";
}

function endpoint(e) {
  if (Array.isArray(e) && Array.isArray(e[0])) return e.map(endpoint).join(", ");
  return Array.isArray(e) ? e[0] + ":" + e[1] : "";
}

/// What a service has beyond the seed's fields, as one short line.
function options(s) {
  const parts = [];
  if (s.proxy_protocol) parts.push("PROXY " + s.proxy_protocol);
  if (s.balance && Array.isArray(s.addr) && Array.isArray(s.addr[0])) parts.push(s.balance);
  if (s.health_check_ms) parts.push("check " + s.health_check_ms + " ms");
  if (s.bandwidth) parts.push(s.bandwidth + " B/s (throttled " + (s.throttled_seconds || 0).toFixed(1) + " s)");
  for (const b of s.backends || []) {
    if (b.state !== "up") parts.push(endpoint(b.addr) + " down");
  }
  if (s.datagrams) parts.push(s.datagrams.carried + " in / " + s.datagrams.delivered + " out / " + s.datagrams.dropped + " dropped");
  return parts.join("; ");
}

function deleteButton(row, label, action) {
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "delete";
  b.textContent = label;
  b.addEventListener("click", action);
  td.appendChild(b);
  row.appendChild(td);
}

async function change(method, path, body, done) {
  const r = await api(method, path, body);
  if (r.ok) {
    say(done, true);
  } else {
    const why = r.data && r.data.error ? r.data.error : "HTTP " + r.status;
    say(method + " " + path + " refused: " + why, false);
  }
  await refresh();
  return r.ok;
}

function fill(tbody, rows) {
  const body = $(tbody);
  body.replaceChildren(...rows);
}

function renderTunnels(config, now) {
  const rows = [];
  const seen = {};
  const dt = previous ? (now - previous.at) / 1000 : 0;
  for (const [name, t] of Object.entries(config.tunnels || {})) {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    const sent = t.bytes_sent, received = t.bytes_received;
    seen[name] = { sent, received };
    let up = null, down = null;
    const before = previous && previous.tunnels[name];
    const latest = latestRate("tunnel:" + name);
    if (eventsLive && latest) {
      down = latest[0];
      up = latest[1];
    } else if (before && dt > 0 && typeof sent === "number" && typeof before.sent === "number") {
      up = Math.max(0, (sent - before.sent) / dt);
      down = Math.max(0, (received - before.received) / dt);
    }
    cell(tr, name);
    cell(tr, t.state, "state state-" + t.state);
    cell(tr, t.role);
    cell(tr, t.peer || endpoint(t.dest));
    // The peer's pinned identity: the acceptor's for a dialled tunnel, the dialer's otherwise.
    const id = t.peer_identity ? t.peer_identity.slice(0, 16) : t.identity;
    cell(tr, id || "", "mono");
    cell(tr, t.transport || "");
    cell(tr, t.streams, "num");
    cell(tr, rate(up), "num");
    cell(tr, rate(down), "num");
    cell(tr, bytes(sent), "num");
    cell(tr, bytes(received), "num");
    chartCell(tr, "tunnel:" + name);
    cell(tr, t.last_error, "error");
    deleteButton(tr, "delete", () =>
      change("DELETE", "/tunnel", { name }, "tunnel " + name + " deleted"));
    tr.addEventListener("click", () => { selected = name; drawBig(); });
    rows.push(tr);
  }
  for (const [name, a] of Object.entries(config.accepted || {})) {
    if (config.tunnels && config.tunnels[name]) continue;
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    cell(tr, name);
    cell(tr, a.declared ? "declared" : "pinned", "state");
    cell(tr, "acceptor");
    cell(tr, "");
    cell(tr, a.identity ? a.identity.slice(0, 16) : "", "mono");
    for (let i = 0; i < 8; i++) cell(tr, "");
    deleteButton(tr, "forget", () =>
      change("DELETE", "/tunnel", { name }, "name " + name + " forgotten"));
    rows.push(tr);
  }
  fill("#tunnels tbody", rows);
  previous = { at: now, tunnels: seen };
}

function renderServices(config) {
  const rows = [];
  const services = config.services || {};
  for (const side of ["local", "remote"]) {
    for (const [name, s] of Object.entries(services[side] || {})) {
      const tr = document.createElement("tr");
      tr.dataset.name = name;
      tr.dataset.side = side;
      cell(tr, side);
      cell(tr, name);
      cell(tr, s.protocol || "tcp");
      cell(tr, endpoint(s.addr));
      cell(tr, side === "local" ? (s.listening || "no") : "");
      cell(tr, s.cipher || (s.key ? "" : "plaintext"));
      cell(tr, s.timeout, "num");
      const flows = s.datagrams ? s.datagrams.flows : (side === "local" ? s.connections : "");
      cell(tr, flows, "num");
      cell(tr, options(s));
      chartCell(tr, "service:" + side + ":" + name);
      cell(tr, s.last_error, "error");
      deleteButton(tr, "delete", () =>
        change("DELETE", "/service", { name, type: side }, side + " service " + name + " deleted"));
      rows.push(tr);
    }
  }
  fill("#services tbody", rows);
}

function renderBinds(config) {
  const rows = [];
  const binds = config.bind || {};
  for (const side of ["local", "remote"]) {
    for (const [service, tunnel] of Object.entries(binds[side] || {})) {
      const tr = document.createElement("tr");
      cell(tr, side);
      cell(tr, service);
      cell(tr, tunnel);
      deleteButton(tr, "unbind", () =>
        change("DELETE", "/bind", { tunnel, service, type: side }, "unbound " + service));
      rows.push(tr);
    }
  }
  fill("#binds tbody", rows);
}

function renderConnections(config) {
  const rows = [];
  for (const c of Object.values(config.connections || {})) {
    const tr = document.createElement("tr");
    cell(tr, c.tunnel);
    cell(tr, c.stream, "num");
    cell(tr, c.service);
    cell(tr, c.side);
    cell(tr, c.state);
    cell(tr, bytes(c.bytes_sent), "num");
    cell(tr, bytes(c.bytes_received), "num");
    cell(tr, bytes(c.window), "num");
    rows.push(tr);
  }
  fill("#connections tbody", rows);
}

async function refresh() {
  const live = $("#live");
  let r;
  try {
    r = await api("GET", "/config");
  } catch (e) {
    live.textContent = "node unreachable";
    live.className = "badge bad";
    return;
  }
  if (!r.ok || !r.data) {
    live.textContent = r.status === 401 ? "token needed" : "HTTP " + r.status;
    live.className = "badge bad";
    return;
  }
  live.textContent = "live";
  live.className = "badge ok";
  const config = r.data;
  if (config.security) $("#node").textContent = "identity " + config.security.public_identity;
  renderTunnels(config, Date.now());
  if (selected === null || !(config.tunnels || {})[selected]) {
    selected = Object.keys(config.tunnels || {})[0] || null;
  }
  drawBig();
  renderServices(config);
  renderBinds(config);
  renderConnections(config);
}

function port(value) {
  const v = String(value).trim();
  return /^\d+$/.test(v) ? Number(v) : v;
}

function setUp() {
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    sessionStorage.setItem("menet-token", token);
    $("#token-form").hidden = true;
    refresh();
  });
  $("#tunnel-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const body = { name: f.name.value.trim() };
    if (f.role.value === "acceptor") {
      body.role = "acceptor";
    } else {
      body.dest = [f.ip.value.trim(), port(f.port.value)];
    }
    if (f.secret.value) body.secret = f.secret.value;
    if (await change("POST", "/tunnel", body, "tunnel " + body.name + " added")) ev.target.reset();
  });
  $("#service-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const body = {
      name: f.name.value.trim(),
      type: f.type.value,
      addr: [f.ip.value.trim(), port(f.port.value)],
    };
    if (f.key.value) body.key = f.key.value;
    if (f.cipher.value) body.cipher = f.cipher.value;
    if (f.timeout.value.trim()) body.timeout = port(f.timeout.value);
    if (f.protocol.value) body.protocol = f.protocol.value;
    const more = f.more.value.split(",").map((a) => a.trim()).filter((a) => a);
    if (more.length) {
      body.addr = [body.addr].concat(more.map((a) => {
        const at = a.lastIndexOf(":");
        return [a.slice(0, at).replace(/^\[|\]$/g, ""), port(a.slice(at + 1))];
      }));
    }
    if (f.balance.value) body.balance = f.balance.value;
    if (f.health.value.trim()) body.health_check_ms = port(f.health.value);
    if (f.proxy.value) body.proxy_protocol = f.proxy.value;
    if (f.bandwidth.value.trim()) body.bandwidth = port(f.bandwidth.value);
    if (await change("POST", "/service", body, body.type + " service " + body.name + " added")) {
      ev.target.reset();
    }
  });
  $("#bind-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const body = { tunnel: f.tunnel.value.trim(), service: f.service.value.trim(), type: f.type.value };
    if (await change("POST", "/bind", body, "bound " + body.service + " to " + body.tunnel)) {
      ev.target.reset();
    }
  });
  refresh();
  startEvents();
  const poll = () => setTimeout(async () => { await refresh(); poll(); },
    eventsLive ? POLL_LIVE_MS : POLL_MS);
  poll();
}

// --- Traffic: server-sent events and charts -------------------------------------------------

/// The newest [in, out] of `key`, if it moved in the last sample.
function latestRate(key) {
  const s = series.get(key);
  if (!s || !s.length) return null;
  const last = s[s.length - 1];
  return last[0] === lastSample ? [last[1], last[2]] : [0, 0];
}

function record(t, rates) {
  for (const [key, r] of Object.entries(rates)) {
    let s = series.get(key);
    if (!s) { s = []; series.set(key, s); }
    s.push([t, r[0], r[1]]);
    while (s.length && s[0][0] <= t - WINDOW_S) s.shift();
  }
  lastSample = Math.max(lastSample, t);
  if (!firstSample || t < firstSample) firstSample = t;
  firstSample = Math.max(firstSample, lastSample - WINDOW_S);
}

/// Reads GET /events (a fetch, so the token goes in a header), frame by frame.
async function startEvents() {
  for (;;) {
    try {
      const res = await fetch("/events", { headers: headers(), cache: "no-store" });
      if (res.status === 401) { askToken(); await sleep(2000); continue; }
      if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (_) { /* reconnect below */ }
    eventsLive = false;
    await sleep(2000);
  }
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function onEvent(frame) {
  let kind = "message", data = "";
  for (const line of frame.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  let body;
  try { body = JSON.parse(data); } catch (_) { return; }
  if (kind === "history") {
    for (const s of body.seconds || []) record(s.t, s.rates || {});
  } else if (kind === "sample") {
    record(body.t, body.rates || {});
    eventsLive = true;
    window.menetEvents++;
    redrawCharts();
  }
}

/// A small chart in a row, drawn again on every sample.
function chartCell(row, key) {
  const td = document.createElement("td");
  td.className = "chart";
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 96 24");
  svg.setAttribute("width", "96");
  svg.setAttribute("height", "24");
  svg.dataset.key = key;
  td.appendChild(svg);
  row.appendChild(td);
  draw(svg, key, 96, 24);
  return td;
}

/// Draws `key`'s last 15 minutes in `svg` (width x height): in and out as two lines.
function draw(svg, key, width, height) {
  const s = series.get(key) || [];
  const now = lastSample || Math.floor(Date.now() / 1000);
  let max = 1;
  for (const p of s) max = Math.max(max, p[1], p[2]);
  // Up to 15 minutes: the time sampled so far, at least a minute, fills the width.
  const span = Math.min(WINDOW_S, Math.max(60, now - (firstSample || now)));
  const x = (t) => Math.max(0, ((t - (now - span)) / span) * width);
  const y = (v) => height - 1 - (v / max) * (height - 2);
  const line = (i, cls) => {
    // Seconds without a sample for this key moved nothing: the line drops to zero there.
    const pts = [];
    let prev = null;
    for (const p of s) {
      if (prev === null) {
        // From zero the second before: even one sample draws a rise.
        pts.push(x(p[0] - 1).toFixed(1) + "," + y(0).toFixed(1));
      } else if (p[0] - prev > 1) {
        pts.push(x(prev + 1).toFixed(1) + "," + y(0).toFixed(1));
        pts.push(x(p[0] - 1).toFixed(1) + "," + y(0).toFixed(1));
      }
      pts.push(x(p[0]).toFixed(1) + "," + y(p[i]).toFixed(1));
      prev = p[0];
    }
    if (prev !== null && prev < now) {
      pts.push(x(prev + 1).toFixed(1) + "," + y(0).toFixed(1));
      pts.push(x(now).toFixed(1) + "," + y(0).toFixed(1));
    }
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("points", pts.join(" "));
    pl.setAttribute("class", cls);
    return pl;
  };
  const title = document.createElementNS(SVG, "title");
  title.textContent = key + ": peak " + rate(max);
  svg.replaceChildren(title, line(1, "in"), line(2, "out"));
  svg.dataset.peak = String(max > 1 ? max : 0);
}

function drawBig() {
  const svg = $("#big-chart");
  if (!svg) return;
  const key = selected === null ? "" : "tunnel:" + selected;
  $("#chart-title").textContent = selected === null ? "no tunnel" :
    selected + " (received, sent; up to the last 15 minutes)";
  draw(svg, key, 900, 160);
}

function redrawCharts() {
  for (const svg of document.querySelectorAll("td.chart svg")) draw(svg, svg.dataset.key, 96, 24);
  drawBig();
}

document.addEventListener("DOMContentLoaded", setUp);
