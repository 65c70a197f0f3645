// verinfer status page: draws GET /v1/status, and checks a pasted receipt in the browser with
// receipt_check.js (never asking the server for a verdict). An ES module, no dependencies, no build step.
import { CannotCheck, Invalid, checkReceiptText } from "/static/receipt_check.js";

async function fetchJson(path, what) {
  const r = await fetch(path);
  if (!r.ok) throw new CannotCheck(`${what} could not be fetched (HTTP ${r.status})`);
  return r.json();
}


async function onVerify() {
  const verdict = $("verdict"), list = $("steps");
  const steps = [];
  verdict.dataset.state = "checking"; verdict.textContent = "checking…"; list.replaceChildren();
  let state, message;
  try {
    const own = $("own-keys").checked;
    await checkReceiptText($("receipt-input").value.trim(), {
      noteKeys: own ? $("note-keys").value.split(",").map((s) => s.trim()).filter(Boolean) : null,
      jwks: () => fetchJson("/.well-known/jwks.json", "the JWKS"),
      logKeys: () => fetchJson("/.well-known/verinfer-log.json", "the log keys"),
    }, steps);
    state = "valid"; message = "VALID: checked in this browser";
  } catch (e) {
    if (e instanceof CannotCheck || e.name === "NotSupportedError") {
      state = "error";
      message = `CANNOT CHECK: ${e instanceof CannotCheck ? e.message
        : "this browser's WebCrypto has no Ed25519 (Chrome 137+, Firefox 129+, Safari 17+ have it)"}`;
    } else {  // fail closed: anything else wrong with the receipt makes it invalid
      state = "invalid"; message = `INVALID: ${e instanceof Invalid ? e.message : `${e.name}: ${e.message}`}`;
    }
  }
  for (const s of steps) list.append(el("li", { class: "ok" }, s));
  if (state !== "valid") list.append(el("li", { class: "bad" }, message.slice(message.indexOf(": ") + 2)));
  verdict.dataset.state = state; verdict.textContent = message;
}

// ---------------------------------------------------------------- drawing
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const W = 340, H = 140, PAD = 24;

function barChart(target, items) {
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const max = Math.max(1, ...items.map((i) => i.value));
  const bw = (W - PAD) / Math.max(1, items.length);
  items.forEach((it, i) => {
    const h = ((H - 2 * PAD) * it.value) / max;
    const x = PAD + i * bw;
    root.append(svg("rect", { x: x + 2, y: H - PAD - h, width: Math.max(1, bw - 4), height: h, fill: it.color || "#2b6cb0" }));
    root.append(svg("text", { x: x + bw / 2, y: H - PAD + 12, "text-anchor": "middle" }, it.label));
    root.append(svg("text", { x: x + bw / 2, y: H - PAD - h - 3, "text-anchor": "middle" }, fmt(it.value)));
  });
  if (!items.length) root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
  target.replaceChildren(root);
}

function lineChart(target, points) {
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const max = Math.max(1e-9, ...points.map((p) => p[1]));
  const t0 = points.length ? points[0][0] : 0, t1 = points.length ? points[points.length - 1][0] : 1;
  const x = (t) => PAD + ((W - 2 * PAD) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (v) => H - PAD - ((H - 2 * PAD) * v) / max;
  root.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: "#d9dee4" }));
  if (points.length > 1) {
    root.append(svg("polyline", { fill: "none", stroke: "#2b6cb0", "stroke-width": 2,
      points: points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") }));
  }
  if (points.length) root.append(svg("text", { x: PAD, y: PAD - 8 }, `max ${fmt(max)}`));
  root.append(svg("text", { x: W - PAD, y: H - PAD + 12, "text-anchor": "end" },
    points.length ? `now: ${fmt(points[points.length - 1][1])}` : "no data yet"));
  target.replaceChildren(root);
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2);
}

const shortId = (s) => (s ? `${s.slice(0, 14)}…` : "–");
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");

// Cumulative Prometheus buckets -> one bar per bucket, empty buckets at both ends left out.
function histogramBars(h) {
  let prev = 0;
  const bars = (h?.buckets || []).map(([le, n]) => {
    const bar = { label: le === "+Inf" ? "inf" : `≤${fmt(le)}`, value: n - prev };
    prev = n;
    return bar;
  });
  const first = bars.findIndex((b) => b.value > 0);
  if (first < 0) return [];
  let last = bars.length - 1;
  while (bars[last].value === 0) last--;
  return bars.slice(first, last + 1);
}

// ---------------------------------------------------------------- the status snapshot
const history = { rate: [], log: [] };
let lastTotal = null;

function authHeaders() {
  const key = sessionStorage.getItem("verinfer-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function refresh() {
  let s;
  try {
    const r = await fetch("/v1/status", { headers: authHeaders() });
    $("auth").hidden = !(r.status === 401 || r.status === 403);
    if (!r.ok) throw new Error(`GET /v1/status: HTTP ${r.status}`);
    s = await r.json();
    $("status-error").hidden = true;
  } catch (e) {
    $("status-error").hidden = false; $("status-error").textContent = e.message;
    return;
  }
  draw(s);
}

function draw(s) {
  $("ready").textContent = s.ready ? "ready" : "not ready";
  $("ready").className = `pill ${s.ready ? "ok" : "bad"}`;
  $("logsize").textContent = s.log ? `log: ${s.log.size} leaves (${s.log.origin})` : "no receipt log";
  const q = s.proof_queue;
  $("queue").textContent = q ? `proof queue: ${q.jobs.queued || 0} queued, ${q.jobs.running || 0} running (max ${q.max_queued})` : "no proof jobs";

  $("models-body").replaceChildren(...s.models.map((m) => el("tr", {},
    el("td", {}, m.name), el("td", {}, m.version), el("td", {}, m.platform),
    el("td", { class: "mono", title: m.sha256 }, shortId(m.sha256)),
    el("td", {}, `${m.input.name} ${m.input.datatype} [${m.input.shape.join(", ")}]`),
    el("td", {}, `≤ ${m.batching.max_batch_size} rows, ${m.batching.max_queue_delay_ms} ms`),
    el("td", {}, circuitText(m.circuit)))));

  const now = Date.now() / 1000;
  const total = Object.values(s.metrics.requests_by_status).reduce((a, b) => a + b, 0);
  if (lastTotal) history.rate.push([now, Math.max(0, (total - lastTotal[1]) / Math.max(1e-3, now - lastTotal[0]))]);
  lastTotal = [now, total];
  if (s.log) history.log.push([now, s.log.size]);
  for (const k of Object.keys(history)) history[k] = history[k].slice(-90);
  lineChart($("chart-rate"), history.rate);
  lineChart($("chart-log"), history.log);
  barChart($("chart-status"), Object.entries(s.metrics.requests_by_status).sort()
    .map(([k, v]) => ({ label: k, value: v, color: k.startsWith("2") ? "#137333" : "#b3261e" })));
  const lat = s.metrics.verinfer_request_duration_seconds;
  $("latency-q").textContent = `p50 ${fmt(lat.p50)} · p95 ${fmt(lat.p95)} · p99 ${fmt(lat.p99)}`;
  barChart($("chart-latency"), histogramBars(lat));
  barChart($("chart-batch"), histogramBars(s.metrics.verinfer_batch_rows));
  barChart($("chart-proofs"), ["queued", "running", "done", "failed"]
    .map((k) => ({ label: k, value: s.metrics.proof_jobs[k] || 0 })));

  $("receipts-body").replaceChildren(...s.recent_receipts.map((r) => el("tr", {},
    el("td", { class: "mono", title: r.id }, shortId(r.id)), el("td", {}, r.model), el("td", {}, when(r.created)),
    el("td", {}, r.index ?? "–"), el("td", {}, r.status),
    el("td", {}, r.proof ? `${r.proof.status}${r.proof.outcome ? ` (${r.proof.outcome})` : ""}` : "–"),
    el("td", {}, r.id ? checkButton(r.id, r.format === "verinfer.receipt/v2") : "–"))));
  $("proofs-body").replaceChildren(...s.recent_proofs.map((j) => el("tr", {},
    el("td", { class: "mono", title: j.id }, shortId(j.id)), el("td", {}, j.model), el("td", {}, j.status),
    el("td", {}, j.outcome || j.stage || j.error || "–"), el("td", {}, String(j.attempts)), el("td", {}, when(j.created)),
    el("td", {}, j.finished && j.started ? fmt(j.finished - j.started) : "–"))));
}

function circuitText(c) {
  if (!c) return "none registered";
  if (c.error) return c.error;
  return `${shortId(c.package_id)} logrows ${c.logrows}, ${c.num_rows ?? "?"} rows, ${c.ops} ops, input ${c.input_visibility}` +
    `${c.prove_seconds ? `, prove ≈${fmt(c.prove_seconds)} s` : ""}${c.srs.insecure ? ", dev SRS (insecure)" : ""}` +
    `${c.for_served_model ? "" : " (for another model file)"}`;
}

function checkButton(id, logged) {
  const b = el("button", { type: "button" }, "check");
  b.addEventListener("click", async () => {  // fetches the receipt; the check itself stays here
    $("verdict").dataset.state = "checking"; $("verdict").textContent = "fetching…";
    const r = await fetch(`/v1/receipts/${encodeURIComponent(id)}${logged ? "?fresh=1" : ""}`);
    $("receipt-input").value = await r.text();
    $("check").scrollIntoView();
    await onVerify();
  });
  return b;
}

document.addEventListener("DOMContentLoaded", () => {
  $("verify").addEventListener("click", onVerify);
  $("apikey-save").addEventListener("click", () => {
    sessionStorage.setItem("verinfer-api-key", $("apikey").value.trim());
    refresh();
  });
  refresh();
  setInterval(refresh, 2000);
});
