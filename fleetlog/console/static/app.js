// fleetlog console: plain JavaScript, no dependencies, nothing loaded from elsewhere.
// Every value from the server is put in the page as text (textContent), never as HTML:
// tool inputs and model output are written by models.
"use strict";

const POLL_MS = 2000;
const STATUSES = ["pending", "running", "awaiting_review", "completed", "failed", "cancelled"];
const store = {
  get token() { return localStorage.getItem("fleetlog.token") || ""; },
  set token(v) { v ? localStorage.setItem("fleetlog.token", v) : localStorage.removeItem("fleetlog.token"); },
  get reviewer() { return localStorage.getItem("fleetlog.reviewer") || ""; },
  set reviewer(v) { localStorage.setItem("fleetlog.reviewer", v); },
};

// --- small helpers ------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Children for replaceChildren, which would print null and arrays as text.
const kids = (...xs) => xs.flat(Infinity).filter((x) => x !== null && x !== undefined && x !== false);

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const usd = (v) => "$" + Number(v || 0).toFixed(Math.abs(v) >= 100 ? 2 : 4);
const num = (v) => Number(v || 0).toLocaleString("en-US");
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");
function clock(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function when(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  return d.toLocaleDateString("en-CA") + " " + d.toLocaleTimeString("en-GB", { hour12: false });
}
function ago(ts) {
  if (!ts) return "";
  const sec = Math.max(0, Date.now() / 1000 - ts);
  if (sec < 60) return Math.round(sec) + " s ago";
  if (sec < 3600) return Math.round(sec / 60) + " min ago";
  if (sec < 86400) return (sec / 3600).toFixed(1) + " h ago";
  return (sec / 86400).toFixed(1) + " days ago";
}
function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
}
const badge = (status) => h("span", { class: "badge st-" + status, text: status.replace("_", " ") });
const sessionLink = (id) => h("a", { href: "/sessions/" + encodeURIComponent(id), text: id });

function flash(text, kind) {
  const el = document.getElementById("flash");
  el.textContent = text;
  el.className = "flash " + (kind || "ok");
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, kind === "error" ? 12000 : 6000);
}

// --- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, body) {
  const headers = { "Accept": "application/json" };
  if (store.token) headers["Authorization"] = "Bearer " + store.token;
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "the console server does not answer");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    showTokenPanel(store.token ? "That token was refused: enter the console's token." : "This console needs its access token.");
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || response.statusText || "request failed");
  }
  return data;
}

function showTokenPanel(message) {
  const panel = document.getElementById("token-panel");
  document.getElementById("token-message").textContent = message;
  panel.hidden = false;
  document.getElementById("token-input").focus();
}

function reviewerName() {
  const input = document.getElementById("reviewer");
  const name = input.value.trim();
  if (!name) {
    input.classList.add("missing");
    input.focus();
    flash("Enter your name as reviewer first: it is recorded on the decision.", "error");
    return "";
  }
  input.classList.remove("missing");
  store.reviewer = name;
  return name;
}

// --- decisions ---------------------------------------------------------------------------

// A decision: { ok: true } once recorded, else { ok: false, error } (error "": nothing was sent).
// `input` (approve only): the tool's arguments the reviewer edited, as an object.
async function decide(review, kind, note, end, input) {
  const reviewer = reviewerName();
  if (!reviewer) return { ok: false, error: "" };
  const path = "/api/reviews/" + encodeURIComponent(review.session_id) + "/" +
    encodeURIComponent(review.call_id) + "/" + (kind === "approve" ? "approve" : "deny");
  const body = { reviewer, note: note || "", call_hash: review.call_hash };
  if (kind !== "approve") body.end_session = Boolean(end);
  else if (input !== undefined) body.input = input;
  try {
    const result = await api(path, body);
    const how = result.recorded_via === "fleet" ? "the running fleet goes on with the session"
      : result.recorded_via === "log" ? "recorded in the log; the session picks it up when its fleet runs"
      : "it was already recorded";
    const verb = kind !== "approve" ? (end ? "Denied (session ended)" : "Denied")
      : result.edited ? "Approved (edited)"
      : input !== undefined ? "Approved (the input was not changed)" : "Approved";
    flash(`${verb} ${review.tool} in ${result.session_id} as ${reviewer}: ${how}.`, "ok");
    return { ok: true };
  } catch (e) {
    flash(`${kind} failed: ${e.message}`, "error");
    return { ok: false, error: e.message };
  }
}

// The edited input as the object to send, or an error to show (nothing is sent then).
function parseEdit(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { error: "Not valid JSON: " + e.message };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return { error: "The input must be a JSON object (the tool's arguments), like {\"name\": \"value\"}." };
  }
  return { value };
}

function reviewCard(review, onDone) {
  const note = h("input", { class: "note", type: "text", placeholder: "note (optional)", maxlength: 10000 });
  // Edit, then approve: the reviewer's input runs instead of the model's (vetted again).
  const editArea = h("textarea", { class: "edit-input", spellcheck: "false", rows: 8, "aria-label": "the call's input, as JSON" });
  const editError = h("div", { class: "edit-error error", role: "alert", hidden: true });
  const showEditError = (text) => { editError.textContent = text || ""; editError.hidden = !text; };
  editArea.addEventListener("input", () => showEditError(""));

  let busy = false;
  const act = (kind, end) => async () => {
    if (busy) return;
    setBusy(true);
    const { ok } = await decide(review, kind, note.value, end);
    setBusy(false);
    if (ok && onDone) onDone();
  };
  const approveEdited = async () => {
    if (busy) return;
    const parsed = parseEdit(editArea.value);
    if (parsed.error) { showEditError(parsed.error); editArea.focus(); return; } // nothing sent
    showEditError("");
    setBusy(true);
    const { ok, error } = await decide(review, "approve", note.value, false, parsed.value);
    setBusy(false);
    if (!ok) { showEditError(error); return; } // error "": nothing was sent (no reviewer name)
    if (onDone) onDone();
  };
  const openEditor = (open) => () => {
    if (open) editArea.value = pretty(review.input);
    editor.hidden = !open;
    showEditError("");
    setBusy(busy);
    if (open) editArea.focus();
  };

  const approveButton = h("button", { class: "approve", type: "button", onclick: act("approve", false) }, "Approve");
  const editButton = h("button", {
    class: "edit", type: "button", onclick: openEditor(true),
    title: review.in_doubt ? "a call in doubt after a crash cannot be changed: approve it as it was, or deny it"
      : "change the call's input, then approve it",
  }, "Edit & approve");
  const denyButton = h("button", { class: "deny", type: "button", onclick: act("deny", false), title: "the model is told; the session goes on" }, "Deny");
  const denyEndButton = h("button", { class: "deny-end", type: "button", onclick: act("deny", true), title: "deny and end the session (DENIED_BY_REVIEWER)" }, "Deny & end");
  const approveEditedButton = h("button", { class: "approve-edited", type: "button", onclick: approveEdited }, "Approve edited");
  const cancelButton = h("button", { class: "edit-cancel ghost", type: "button", onclick: openEditor(false) }, "Cancel");
  const editor = h("div", { class: "editor", hidden: true },
    h("div", { class: "muted small", text: "The input to run, as JSON. Approving it vets the call again with it (deny rules still apply), runs it, and tells the model." }),
    editArea, editError,
    h("div", { class: "actions" }, approveEditedButton, cancelButton),
  );
  // Every button off while a decision is on its way; after a refusal, back as they were.
  function setBusy(on) {
    busy = on;
    for (const b of [approveButton, denyButton, denyEndButton, approveEditedButton, cancelButton]) b.disabled = on;
    editButton.disabled = on || review.in_doubt || !editor.hidden;
  }
  setBusy(false);

  return h("article", { class: "review card", dataset: { callId: review.call_id, sessionId: review.session_id } },
    h("div", { class: "review-head" },
      h("span", { class: "tool", text: review.tool }),
      h("span", { class: "badge risk-" + review.risk, text: review.risk }),
      review.in_doubt ? h("span", { class: "badge in-doubt", text: "in doubt after a crash" }) : null,
      h("span", { class: "muted", text: "asked " + ago(review.requested_at) }),
      h("span", { class: "spacer" }),
      sessionLink(review.session_id),
    ),
    h("div", { class: "reason", text: review.reason }),
    h("pre", { class: "input", text: pretty(review.input) }),
    h("div", { class: "ids muted" }, "call ", h("code", { text: review.call_id }), " · hash ", h("code", { text: review.call_hash })),
    h("div", { class: "actions" }, note, approveButton, editButton, denyButton, denyEndButton),
    editor,
  );
}

// --- charts (inline SVG) -----------------------------------------------------------------

function axisTime(t0, t1) {
  const span = t1 - t0;
  return (t) => {
    const d = new Date(t * 1000);
    if (span < 5) return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
    if (span < 86400) return d.toLocaleTimeString("en-GB", { hour12: false });
    return d.toLocaleDateString("en-CA") + " " + d.toLocaleTimeString("en-GB", { hour12: false, hour: "2-digit", minute: "2-digit" });
  };
}

function chart({ points, bars, line, yMax, yFormat, barLabel, lineLabel, empty }) {
  const W = 640, H = 220, L = 56, R = 16, T = 16, B = 34;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  if (!points.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, empty));
    return svg;
  }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const x = (t) => (t1 === t0 ? L + (W - L - R) / 2 : L + ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - v / (yMax || 1)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, yFormat(v)));
  }
  const fmt = axisTime(t0, t1);
  svg.append(s("text", { x: L, y: H - 10, class: "tick" }, fmt(t0)));
  if (t1 !== t0) svg.append(s("text", { x: W - R, y: H - 10, "text-anchor": "end", class: "tick" }, fmt(t1)));
  if (bars) {
    const bw = Math.max(2, Math.min(18, ((W - L - R) / Math.max(points.length, 1)) * 0.7));
    for (const p of points) {
      const v = bars(p);
      svg.append(s("rect", { x: x(p.t) - bw / 2, y: y(v), width: bw, height: Math.max(0, y(0) - y(v)), class: "bar" },
        s("title", {}, `${fmt(p.t)}: ${barLabel(p)}`)));
    }
  }
  if (line) {
    const d = points.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + " " + y(line(p)).toFixed(1)).join(" ");
    svg.append(s("path", { d, class: "line" }));
    for (const p of points) {
      svg.append(s("circle", { cx: x(p.t), cy: y(line(p)), r: 3, class: "dot" }, s("title", {}, `${fmt(p.t)}: ${lineLabel(p)}`)));
    }
  }
  return svg;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function costChart(series) {
  let total = 0;
  const points = series.map((p) => { total += p.cost_usd; return { ...p, total }; });
  return chart({
    points,
    yMax: niceMax(total),
    yFormat: (v) => "$" + (v >= 1 ? v.toFixed(2) : v.toFixed(3)),
    bars: (p) => p.cost_usd,
    barLabel: (p) => `${usd(p.cost_usd)} in ${p.calls} model call(s)`,
    line: (p) => p.total,
    lineLabel: (p) => `${usd(p.total)} so far`,
    empty: "no model calls yet",
  });
}

function completionChart(series) {
  let done = 0, ended = 0;
  const points = series.map((p) => { done += p.completed; ended += p.ended; return { ...p, cum: ended ? done / ended : 0 }; });
  return chart({
    points,
    yMax: 1,
    yFormat: (v) => Math.round(v * 100) + "%",
    bars: (p) => p.rate,
    barLabel: (p) => `${p.completed} of ${p.ended} ended sessions completed`,
    line: (p) => p.cum,
    lineLabel: (p) => `${pct(p.cum)} completed so far`,
    empty: "no session has ended yet",
  });
}

function statusBar(counts, total) {
  const bar = h("div", { class: "statusbar" });
  for (const st of STATUSES) {
    const n = counts[st] || 0;
    if (!n) continue;
    const seg = h("a", { class: "seg st-" + st, href: "/sessions?status=" + st, title: `${n} ${st}` });
    seg.style.flexGrow = String(n);
    bar.append(seg);
  }
  if (!total) bar.append(h("div", { class: "seg empty", text: "no sessions" }));
  return bar;
}

// --- pages ------------------------------------------------------------------------------

const pages = {};

pages.overview = {
  title: "Overview",
  build(main) {
    const windowSel = h("select", { id: "window" },
      ["all", "1h", "24h", "7d", "30d"].map((w) => h("option", { value: w, text: w === "all" ? "all time" : "last " + w })));
    windowSel.value = new URLSearchParams(location.search).get("window") || "all";
    windowSel.addEventListener("change", () => refresh());
    main.append(
      h("div", { class: "page-head" }, h("h1", { text: "Fleet overview" }), h("span", { class: "spacer" }), h("label", {}, "window ", windowSel)),
      h("section", { id: "cards", class: "cards" }),
      h("section", { id: "counts", class: "card" }),
      h("div", { class: "grid2" },
        h("section", { class: "card" }, h("h2", { text: "Completion rate over time" }), h("div", { id: "chart-completion" }),
          h("p", { class: "muted small", text: "bars: share of sessions ending in each interval that completed; line: completed so far" })),
        h("section", { class: "card" }, h("h2", { text: "Cost over time" }), h("div", { id: "chart-cost" }),
          h("p", { class: "muted small", text: "bars: cost of the model calls in each interval; line: cost so far" })),
      ),
      h("div", { class: "grid2" },
        h("section", { class: "card" }, h("h2", { text: "Budget use per tenant" }), h("div", { id: "tenants" }),
          h("p", { class: "muted small", text: "[budgets.<tenant>] in the configuration: fleet-wide caps across all of a tenant's sessions" })),
        h("section", { class: "card" }, h("h2", { text: "Tool calls and reviews" }), h("div", { id: "calls" })),
      ),
      h("section", { class: "card" }, h("h2", { text: "Agent health" }), h("div", { id: "metrics" })),
    );
  },
  async load() {
    const w = document.getElementById("window").value;
    const [o, m] = await Promise.all([api("/api/overview?window=" + encodeURIComponent(w)), api("/api/metrics" + (w === "all" ? "" : "?since=" + encodeURIComponent(w)))]);
    setFleet(o.fleet);
    setReviewCount(o.reviews_pending);
    const card = (label, value, id, extra) => h("div", { class: "stat", id }, h("div", { class: "value", text: value }), h("div", { class: "label", text: label }), extra || null);
    document.getElementById("cards").replaceChildren(
      card("sessions", num(o.sessions), "stat-sessions"),
      card("running", num(o.counts.running + o.counts.pending), "stat-running"),
      card("awaiting review", num(o.counts.awaiting_review), "stat-review", o.reviews_pending ? h("a", { href: "/reviews", text: `${o.reviews_pending} call(s) →` }) : null),
      card("completed", num(o.counts.completed), "stat-completed"),
      card("failed", num(o.counts.failed), "stat-failed"),
      card("steps / s (last minute)", o.steps_per_s.toFixed(1), "stat-rate"),
      card("cost today", usd(o.cost_today), "stat-today"),
      card("cost, " + (o.window === "all" ? "all time" : "last " + o.window), usd(o.cost_usd), "stat-cost"),
    );
    document.getElementById("counts").replaceChildren(
      h("h2", { text: "Sessions by status" }),
      statusBar(o.counts, o.sessions),
      h("div", { class: "legend" }, STATUSES.map((st) => h("a", { href: "/sessions?status=" + st, class: "legend-item" }, badge(st), " " + num(o.counts[st] || 0)))),
      h("p", { class: "muted small", text: `${num(o.steps)} steps, ${num(o.tokens)} tokens` }),
    );
    document.getElementById("chart-completion").replaceChildren(completionChart(o.completion_series));
    document.getElementById("chart-cost").replaceChildren(costChart(o.cost_series));
    const tenants = o.tenants.length ? h("table", { class: "table" },
      h("thead", {}, h("tr", {}, ["tenant", "sessions", "tokens", "cost", "budget use"].map((c) => h("th", { text: c })))),
      h("tbody", {}, o.tenants.map((t) => {
        const share = t.cost_share !== null ? t.cost_share : t.token_share;
        const meter = h("div", { class: "meter" + (share !== null && share >= 0.9 ? " hot" : "") }, h("div", { class: "fill" }));
        meter.firstChild.style.width = Math.min(100, 100 * (share || 0)) + "%";
        const budget = [];
        if (t.max_cost_usd !== null) budget.push(`${pct(t.cost_share)} of ${usd(t.max_cost_usd)}`);
        if (t.max_tokens !== null) budget.push(`${pct(t.token_share)} of ${num(t.max_tokens)} tokens`);
        return h("tr", {},
          h("td", { text: t.tenant }), h("td", { class: "num", text: num(t.sessions) }), h("td", { class: "num", text: num(t.tokens) }),
          h("td", { class: "num", text: usd(t.cost_usd) }),
          h("td", {}, budget.length ? [meter, h("span", { class: "small", text: budget.join(", ") })] : h("span", { class: "muted small", text: "no budget set" })));
      })),
    ) : h("p", { class: "muted", text: "no tenants yet" });
    document.getElementById("tenants").replaceChildren(tenants);
    const verdicts = {};
    for (const c of o.tool_calls) {
      const v = (verdicts[c.verdict || "unvetted"] = verdicts[c.verdict || "unvetted"] || { total: 0 });
      v.total += c.calls;
      v[c.status] = (v[c.status] || 0) + c.calls;
    }
    const callRows = Object.entries(verdicts).map(([verdict, v]) => [verdict, v.total, v.succeeded || 0, v.failed || 0, v.denied || 0, v.awaiting_review || 0]);
    document.getElementById("calls").replaceChildren(...kids(
      callRows.length ? rowsTable(["verdict", "calls", "succeeded", "failed", "denied", "awaiting_review"], callRows, { verdict: (v) => v }) : h("p", { class: "muted", text: "no tool calls yet" }),
      h("h3", { text: "Failures by reason" }),
      o.failures.length ? h("div", { class: "legend" }, o.failures.map((f) => h("span", { class: "legend-item" }, h("span", { class: "badge st-failed", text: f.code }), " " + num(f.sessions))))
        : h("p", { class: "muted small", text: "no session has failed" }),
    ));
    document.getElementById("metrics").replaceChildren(rowsTable(m.columns, m.rows.map((r) => m.columns.map((c) => r[c])), {
      agent_type: (v) => v, completion_rate: pct, tool_success_rate: pct, human_review_rate: pct,
      token_cost_per_completion: (v) => (v === null ? "–" : usd(v)),
    }));
  },
};

function rowsTable(columns, rows, formats, rawNames) {
  if (!rows.length) return h("p", { class: "muted", text: "no rows" });
  const fmt = (c, v) => {
    if (formats && formats[c]) return formats[c](v);
    if (v === null || v === undefined) return "";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  };
  return h("div", { class: "scroll" }, h("table", { class: "table" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { text: rawNames ? c : c.replace(/_/g, " ") })))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((v, i) => h("td", { class: typeof v === "number" ? "num" : null, text: fmt(columns[i], v) })))))));
}

pages.reviews = {
  title: "Review queue",
  build(main) {
    main.append(
      h("div", { class: "page-head" }, h("h1", { text: "Review queue" }), h("span", { class: "spacer" }),
        h("span", { class: "muted", text: "oldest first · each decision is bound to the call's hash and names its reviewer" })),
      h("div", { id: "reviews" }),
      h("p", { id: "no-reviews", class: "empty-state", hidden: true, text: "No tool call is waiting for a decision." }),
    );
    this.cards = new Map();
  },
  async load() {
    const reviews = await api("/api/reviews");
    setReviewCount(reviews.length);
    const box = document.getElementById("reviews");
    const seen = new Set();
    let before = null;
    for (let i = reviews.length - 1; i >= 0; i--) {
      const r = reviews[i];
      const key = r.session_id + "\u0000" + r.call_id + "\u0000" + r.call_hash;
      seen.add(key);
      let card = this.cards.get(key);
      if (!card) {
        card = reviewCard(r, () => refresh());
        this.cards.set(key, card);
      }
      if (card.nextSibling !== before || card.parentNode !== box) box.insertBefore(card, before);
      before = card;
    }
    for (const [key, card] of this.cards) {
      if (!seen.has(key)) { card.remove(); this.cards.delete(key); }
    }
    document.getElementById("no-reviews").hidden = reviews.length > 0;
  },
};

pages.sessions = {
  title: "Sessions",
  build(main) {
    const filter = h("select", { id: "status-filter" }, h("option", { value: "", text: "every status" }), STATUSES.map((st) => h("option", { value: st, text: st })));
    filter.value = new URLSearchParams(location.search).get("status") || "";
    filter.addEventListener("change", () => {
      const url = new URL(location.href);
      filter.value ? url.searchParams.set("status", filter.value) : url.searchParams.delete("status");
      history.replaceState(null, "", url);
      refresh();
    });
    main.append(h("div", { class: "page-head" }, h("h1", { text: "Sessions" }), h("span", { class: "spacer" }), h("label", {}, "status ", filter)),
      h("div", { id: "sessions", class: "card" }));
  },
  async load() {
    const st = document.getElementById("status-filter").value;
    const rows = await api("/api/sessions" + (st ? "?status=" + st : ""));
    rows.reverse(); // newest first
    const table = rows.length ? h("div", { class: "scroll" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, ["session", "task", "status", "agent", "tenant", "steps", "tokens", "cost", "error"].map((c) => h("th", { text: c })))),
      h("tbody", {}, rows.map((r) => h("tr", {},
        h("td", {}, sessionLink(r.id)), h("td", { text: r.task_id }), h("td", {}, badge(r.status)),
        h("td", { text: r.agent_type }), h("td", { text: r.tenant }), h("td", { class: "num", text: num(r.step_count) }),
        h("td", { class: "num", text: num(r.token_count) }), h("td", { class: "num", text: usd(r.cost_usd) }),
        h("td", { class: "error", text: r.error })))))) : h("p", { class: "muted", text: "no sessions" });
    document.getElementById("sessions").replaceChildren(h("p", { class: "muted small", text: `${rows.length} session(s)` }), table);
  },
};

// The input a reviewer approved instead of the model's ("" for any other event).
const editedInput = (e) => (e.type === "ReviewDecided" && e.data && e.data.edited_input ? String(e.data.edited_input) : "");

pages.session = {
  title: "Session",
  build(main, id) {
    this.id = id;
    this.signature = "";
    this.cards = new Map();
    main.append(
      h("div", { class: "page-head" }, h("h1", {}, "Session ", h("code", { id: "session-id", text: id })), h("span", { id: "session-status" })),
      h("section", { id: "session-info", class: "card" }),
      h("section", { id: "session-reviews" }),
      h("section", { class: "card" }, h("h2", { text: "Tool calls" }), h("div", { id: "session-calls" })),
      h("section", { class: "card" }, h("h2", {}, "Timeline ", h("span", { id: "event-count", class: "muted small" })),
        h("div", { class: "kinds" }, ["model", "tool", "review", "compaction", "limit", "session"].map((k) => h("span", { class: "kind k-" + k, text: k }))),
        h("ol", { id: "timeline", class: "timeline" })),
    );
  },
  async load() {
    const d = await api("/api/sessions/" + encodeURIComponent(this.id));
    const r = d.session;
    document.getElementById("session-status").replaceChildren(badge(r.status));
    document.getElementById("session-status").dataset.status = r.status;
    document.title = `${r.id} · ${r.status} · fleetlog`;
    const kv = (k, v) => [h("dt", { text: k }), h("dd", {}, v)];
    document.getElementById("session-info").replaceChildren(...kids(
      h("dl", { class: "kv" },
        kv("task", r.task_id), kv("agent", r.agent_type), kv("tenant", r.tenant), kv("model", d.info.model),
        kv("steps", num(r.step_count)), kv("tokens", num(r.token_count)), kv("cost", usd(r.cost_usd)),
        kv("restarts", String(r.restarts)), kv("compactions", String(d.info.compactions)),
        kv("created", when(d.info.created_at)), kv("updated", when(d.info.updated_at)),
        r.error ? kv("error", h("span", { class: "error", text: r.error })) : null),
      h("h3", { text: "Task" }), h("pre", { class: "prompt", text: d.info.prompt }),
      d.info.result ? [h("h3", { text: "Result" }), h("pre", { class: "prompt", text: d.info.result })] : null,
      r.status !== "completed" && r.status !== "failed" && r.status !== "cancelled"
        ? h("div", { class: "actions" }, h("button", { id: "cancel-session", class: "deny", type: "button", onclick: () => this.cancel() }, "Cancel session")) : null,
    ));
    const box = document.getElementById("session-reviews");
    const seen = new Set();
    for (const rv of d.reviews) {
      const key = rv.call_id + "\u0000" + rv.call_hash;
      seen.add(key);
      if (!this.cards.has(key)) {
        const card = reviewCard(rv, () => refresh());
        this.cards.set(key, card);
        box.append(card);
      }
    }
    for (const [key, card] of this.cards) if (!seen.has(key)) { card.remove(); this.cards.delete(key); }
    // Calls a reviewer approved with an input of their own: the input shown is the one that ran.
    const edited = new Set(d.events.filter(editedInput).map((e) => e.data.call_id));
    document.getElementById("session-calls").replaceChildren(d.tool_calls.length ? h("div", { class: "scroll" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, ["step", "call", "tool", "verdict", "risk", "status", "decision", "input / reason"].map((c) => h("th", { text: c })))),
      h("tbody", {}, d.tool_calls.map((c) => h("tr", { dataset: { callId: c.call_id } },
        h("td", { class: "num", text: c.step }), h("td", {}, h("code", { text: c.call_id })), h("td", { text: c.tool }),
        h("td", {}, h("span", { class: "badge v-" + c.verdict, text: c.verdict || "–" })), h("td", { text: c.risk }),
        h("td", { text: c.status }), h("td", { text: (c.decision || "") + (edited.has(c.call_id) ? " (edited input)" : "") }),
        h("td", {}, h("code", { class: "clip", text: c.input }), c.reason ? h("div", { class: "muted small", text: c.reason }) : null,
          c.error ? h("div", { class: "error small", text: c.error }) : null)))))) : h("p", { class: "muted", text: "no tool calls" }));
    const signature = d.events.length + ":" + r.status;
    if (signature !== this.signature) {
      this.signature = signature;
      document.getElementById("event-count").textContent = `${d.events.length} events`;
      document.getElementById("timeline").replaceChildren(...d.events.map((e) => h("li", { class: "event ev-" + e.kind, dataset: { type: e.type, seq: e.seq } },
        h("span", { class: "seq", text: e.seq }), h("span", { class: "time", text: clock(e.ts), title: when(e.ts) }),
        h("span", { class: "kind k-" + e.kind, text: e.type }),
        h("div", { class: "body" }, h("div", { class: "summary", text: e.summary }), e.lines.map((l) => h("div", { class: "line", text: l })),
          editedInput(e) ? h("div", { class: "edited" }, h("span", { class: "badge edited", text: "edited input" }),
            h("span", { class: "line", text: " the call runs with the reviewer's input instead of the model's:" }),
            h("pre", { class: "edited-input", text: pretty(editedInput(e)) })) : null,
          h("details", {}, h("summary", { text: "data" }), h("pre", { text: JSON.stringify(e.data, null, 2) }))))));
    }
  },
  async cancel() {
    const reviewer = reviewerName();
    if (!reviewer) return;
    if (!confirm(`Cancel session ${this.id}?`)) return;
    try {
      const res = await api("/api/sessions/" + encodeURIComponent(this.id) + "/cancel", { reviewer, note: "" });
      flash(`Cancel of ${res.session_id} recorded (${res.recorded_via}).`, "ok");
      refresh();
    } catch (e) { flash("cancel failed: " + e.message, "error"); }
  },
};

pages.sql = {
  title: "SQL",
  poll: false,
  build(main) {
    const examples = [
      ["Sessions by status", "SELECT status, count(*) AS sessions, sum(cost_usd) AS cost_usd\nFROM agent_executions GROUP BY status ORDER BY sessions DESC"],
      ["Tool calls by verdict", "SELECT tool_name, verdict, status, count(*) AS calls\nFROM agent_tool_calls GROUP BY ALL ORDER BY calls DESC"],
      ["Costliest sessions", "SELECT id, agent_type, tenant, step_count, cost_usd, error\nFROM agent_executions ORDER BY cost_usd DESC LIMIT 10"],
      ["Agent health", "SELECT * FROM agent_health_metrics"],
    ];
    const area = h("textarea", { id: "sql-query", spellcheck: "false", rows: 6 });
    area.value = sessionStorage.getItem("fleetlog.sql") || examples[0][1];
    area.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); this.run(); } });
    main.append(
      h("div", { class: "page-head" }, h("h1", { text: "SQL over the projections" }), h("span", { class: "spacer" }),
        h("span", { class: "muted", text: "read-only: one SELECT; Ctrl+Enter runs it" })),
      h("section", { class: "card" }, area,
        h("div", { class: "actions" }, h("button", { id: "sql-run", type: "button", onclick: () => this.run() }, "Run"),
          examples.map(([label, q]) => h("button", { type: "button", class: "ghost", onclick: () => { area.value = q; this.run(); } }, label))),
        h("div", { id: "sql-error", class: "error", hidden: true }),
        h("div", { id: "sql-meta", class: "muted small" }),
        h("div", { id: "sql-result" })),
    );
  },
  async run() {
    const query = document.getElementById("sql-query").value;
    sessionStorage.setItem("fleetlog.sql", query);
    const err = document.getElementById("sql-error");
    const meta = document.getElementById("sql-meta");
    err.hidden = true;
    meta.textContent = "running…";
    const run = (this.runs = (this.runs || 0) + 1);
    try {
      const r = await api("/api/sql", { query, limit: 1000 });
      if (run !== this.runs) return; // a later run's answer is the one to show
      meta.textContent = `${num(r.row_count)} row(s) in ${r.elapsed_ms} ms` + (r.truncated ? " (first 1,000 shown)" : "");
      document.getElementById("sql-result").replaceChildren(rowsTable(r.columns, r.rows, null, true));
    } catch (e) {
      if (run !== this.runs) return;
      meta.textContent = "";
      err.textContent = e.message;
      err.hidden = false;
      document.getElementById("sql-result").replaceChildren();
    }
  },
  async load() {},
};

// --- the frame ----------------------------------------------------------------------------

function setFleet(text) {
  const el = document.getElementById("fleet-state");
  const off = text.startsWith("offline");
  el.textContent = off ? "fleet " + text + ": decisions go to the log" : "fleet " + text;
  el.className = "fleet-state " + (off ? "off" : "on");
}

function setReviewCount(n) {
  const el = document.getElementById("review-count");
  el.textContent = String(n);
  el.hidden = !n;
}

let current = null;
let busy = false;

async function refresh() {
  if (!current || busy) return;
  busy = true;
  try {
    await current.load();
    if (current && current.poll !== false) document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB", { hour12: false }) + " · live, every " + POLL_MS / 1000 + " s";
    document.getElementById("main").classList.remove("stale");
  } catch (e) {
    document.getElementById("updated").textContent = "not updated: " + e.message;
    document.getElementById("main").classList.add("stale");
    if (e.status === 404 && current === pages.session) {
      document.getElementById("main").replaceChildren(h("p", { class: "empty-state", text: e.message }));
      current = null;
    }
  } finally {
    busy = false;
  }
}

async function updateFrame() {
  // The review count in the menu and the fleet's state, on pages that do not show them.
  if (current === pages.overview) return;
  try {
    const st = await api("/api/status");
    setReviewCount(st.reviews_pending);
    setFleet(st.fleet);
  } catch (e) { /* shown by the page's own refresh */ }
}

function start() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    store.token = hash.get("token");
    history.replaceState(null, "", location.pathname + location.search);
  }
  const reviewer = document.getElementById("reviewer");
  reviewer.value = store.reviewer;
  reviewer.addEventListener("change", () => { store.reviewer = reviewer.value.trim(); reviewer.classList.remove("missing"); });
  document.getElementById("token-button").addEventListener("click", () => showTokenPanel(store.token ? "A token is saved in this browser." : "Enter the console's token."));
  document.getElementById("token-panel").addEventListener("submit", (ev) => {
    ev.preventDefault();
    store.token = document.getElementById("token-input").value.trim();
    document.getElementById("token-input").value = "";
    document.getElementById("token-panel").hidden = true;
    refresh();
    updateFrame();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    store.token = "";
    document.getElementById("token-panel").hidden = true;
    flash("Token forgotten in this browser.", "ok");
  });

  const path = location.pathname.replace(/\/+$/, "") || "/";
  const main = document.getElementById("main");
  let name = "overview", arg = null;
  if (path === "/reviews") name = "reviews";
  else if (path === "/sessions") name = "sessions";
  else if (path === "/sql") name = "sql";
  else if (path.startsWith("/sessions/")) { name = "session"; arg = decodeURIComponent(path.slice("/sessions/".length)); }
  current = pages[name];
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (name === "session" ? "sessions" : name)));
  document.title = (current.title || "") + " · fleetlog";
  current.build(main, arg);
  document.body.dataset.page = name;
  refresh();
  updateFrame();
  setInterval(() => {
    if (document.hidden) return;
    if (current && current.poll !== false) refresh();
    updateFrame();
  }, POLL_MS);
  if (current && current.poll === false) {
    document.getElementById("updated").textContent = "";
    if (name === "sql") current.run();
  }
}

document.addEventListener("DOMContentLoaded", start);
