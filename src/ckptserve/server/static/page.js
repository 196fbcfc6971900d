// The status page: fetches /statusz once a second and draws each model from it.
// No libraries; every value from the server is set as text, never as HTML.
"use strict";
(() => {
  const REFRESH_MS = 1000;
  const RESULT_CLASS = { ok: "ok", failed: "bad", rejected: "bad" };
  const RESULT_COLOUR = { ok: "#16803c", failed: "#c0262d", rejected: "#c0262d" };
  const PALETTE = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
  const colourOf = (i) => (i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.5) % 360}, 65%, 42%)`);
  const SVG = "http://www.w3.org/2000/svg";
  const sections = new Map();
  const pidsSeen = new Map();
  let token = "";
  let timer = null;

  const fmtTime = (epoch) => {
    const d = new Date(epoch * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((v) => String(v).padStart(2, "0")).join(":");
  };
  const fmtAgo = (s) => {
    if (s === null || s === undefined) return "–";
    if (s < 120) return `${s.toFixed(1)} s`;
    if (s < 7200) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  };
  const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms < 10 ? `${ms.toFixed(2)} ms` : `${ms.toFixed(0)} ms`);
  const text = (root, selector, value, cls) => {
    const node = root.querySelector(selector);
    node.textContent = value;
    if (cls !== undefined) node.className = `${selector.slice(1)} ${cls}`.trim();
    return node;
  };

  // A judged candidate's shadow figures (rollout: the candidate beside the live model on the
  // buffered request states), in one line.
  const fmtShadow = (d) => {
    if (!d) return "";
    const num = (v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(3));
    return `shadow over ${d.states} states: mean |Δ| ${num(d.mean_abs)}, max ${num(d.max_abs)}, ` +
      `sign flips ${(d.sign_flips * 100).toFixed(1)}%, non-finite ${(d.non_finite * 100).toFixed(1)}%`;
  };

  function lagClass(lag, pinned) {
    if (lag === null || lag === undefined) return "";
    if (lag < 0.05) return "ok"; // "0.0 s" is good news
    if (pinned) return "muted"; // a newer file is expected to wait while pinned
    return lag >= 1 ? "warn" : "";
  }

  function section(model) {
    let node = sections.get(model.name);
    if (!node) {
      node = document.getElementById("model-template").content.firstElementChild.cloneNode(true);
      node.dataset.model = model.name;
      node.querySelectorAll("[data-action]").forEach((button) => {
        button.addEventListener("click", () => admin(node, button.dataset.action));
      });
      document.getElementById("models").appendChild(node);
      sections.set(model.name, node);
    }
    node.routes = model.routes;
    return node;
  }

  function renderModel(model, doc) {
    const node = section(model);
    text(node, ".name", model.name);
    text(node, ".default", model.default ? "(default)" : "");
    const live = model.live;
    text(node, ".checkpoint", live ? live.checkpoint : "none", live ? "" : "bad");
    text(node, ".step", live && live.step !== null ? String(live.step) : "–");
    text(node, ".sha", live ? live.sha256.slice(0, 12) : "–");
    text(node, ".format", live ? `${live.format}, loaded in ${(live.load_seconds * 1000).toFixed(1)} ms` : "–");
    text(node, ".age", live ? fmtAgo(live.age_seconds) : "–");
    text(node, ".lag", fmtAgo(model.lag_seconds), lagClass(model.lag_seconds, model.pinned));
    text(node, ".pinned", model.pinned || "no", model.pinned ? "warn" : "");
    text(node, ".loads", String(model.load_count));
    text(node, ".watching", `watching ${model.watching} (${model.source}, swap ${model.swap})${model.loading ? " · loading…" : ""}`);
    const problem = node.querySelector(".problem");
    const error = model.last_error;
    if (!live && doc.not_ready[model.name]) {
      problem.textContent = `not ready: ${doc.not_ready[model.name]}`;
    } else if (error) {
      problem.textContent = `last ${error.result} load: ${error.checkpoint}: ${error.reason} (${fmtTime(error.at)})`;
    } else {
      problem.textContent = "";
    }
    problem.hidden = !problem.textContent;
    renderVersions(node, model);
    renderTimeline(node, model, doc);
    renderHistory(node, model);
    renderRequests(node, model, doc);
    renderActions(node, model, doc);
  }

  function renderVersions(node, model) {
    const select = node.querySelector(".versions");
    const names = model.versions.map((v) => v.checkpoint);
    const key = names.join("\n");
    if (select.dataset.key === key) return;
    const chosen = select.value;
    select.replaceChildren(...model.versions.map((v) => {
      const option = document.createElement("option");
      option.value = v.checkpoint;
      option.textContent = v.live ? `${v.checkpoint} (live)` : v.checkpoint;
      return option;
    }));
    select.dataset.key = key;
    const live = model.versions.find((v) => v.live);
    if (names.includes(chosen)) select.value = chosen;
    else if (live) select.value = live.checkpoint;
  }

  function renderTimeline(node, model, doc) {
    const svg = node.querySelector(".timeline");
    const width = svg.clientWidth || 600;
    const end = doc.now;
    const first = model.history.length ? model.history[0].at : end;
    const start = Math.min(first, end - 60);
    const x = (t) => 8 + ((t - start) / Math.max(1, end - start)) * (width - 16);
    const parts = [];
    const axis = document.createElementNS(SVG, "line");
    axis.setAttribute("x1", "8"); axis.setAttribute("x2", String(width - 8));
    axis.setAttribute("y1", "11"); axis.setAttribute("y2", "11");
    axis.setAttribute("stroke", "#e5e7eb"); axis.setAttribute("stroke-width", "2");
    parts.push(axis);
    for (const [label, t, anchor] of [[fmtTime(start), start, "start"], ["now", end, "end"]]) {
      const tick = document.createElementNS(SVG, "text");
      tick.setAttribute("x", String(x(t)));
      tick.setAttribute("y", "33");
      tick.setAttribute("text-anchor", anchor);
      tick.textContent = label;
      parts.push(tick);
    }
    for (const attempt of model.history) {
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("cx", String(x(attempt.at)));
      dot.setAttribute("cy", "11");
      dot.setAttribute("r", attempt.result === "ok" || RESULT_CLASS[attempt.result] === "bad" ? "6" : "3.5");
      dot.setAttribute("fill", RESULT_COLOUR[attempt.result] || "#9ca3af");
      dot.setAttribute("class", "attempt");
      dot.dataset.result = attempt.result;
      const title = document.createElementNS(SVG, "title");
      const shadow = fmtShadow(attempt.divergence);
      title.textContent = `${fmtTime(attempt.at)} ${attempt.result} ${attempt.checkpoint || ""}${attempt.reason ? `: ${attempt.reason}` : ""}${shadow ? `\n${shadow}` : ""}`;
      dot.appendChild(title);
      if (attempt.divergence) { // judged on live states: a ring, its width the share of sign flips
        dot.setAttribute("stroke", "#111827");
        dot.setAttribute("stroke-width", String(1 + 3 * Math.min(1, attempt.divergence.sign_flips)));
        dot.dataset.signFlips = String(attempt.divergence.sign_flips);
      }
      parts.push(dot);
    }
    svg.replaceChildren(...parts);
  }

  function renderHistory(node, model) {
    const rows = [...model.history].reverse().slice(0, 12).map((a) => {
      const tr = document.createElement("tr");
      tr.className = "attempt";
      tr.dataset.result = a.result;
      const cells = [fmtTime(a.at), a.result, a.checkpoint || "–", (a.sha256 || "").slice(0, 12),
        (a.duration * 1000).toFixed(1), [a.reason, fmtShadow(a.divergence)].filter(Boolean).join("\n")];
      cells.forEach((value, i) => {
        const td = document.createElement("td");
        td.textContent = value;
        if (i === 1) td.className = RESULT_CLASS[a.result] || "muted";
        if (i === 5) td.className = "reason";
        tr.appendChild(td);
      });
      return tr;
    });
    node.querySelector(".history tbody").replaceChildren(...rows);
  }

  function canvasOf(node, selector) {
    const canvas = node.querySelector(selector);
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 160;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, width, height, left: 44, right: width - 48, top: 8, bottom: height - 18 };
  }

  const msLabel = (ms) => (ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`);

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const step = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((m) => m * step).find((v) => v >= value);
  }

  // The charts start when this worker did (at least a minute back), at most `window_seconds` back.
  function charted(model, doc) {
    const r = model.requests;
    const end = r.start + r.count.length;
    const start = Math.max(r.start, Math.min(Math.floor(doc.started_at) - 2, end - 60));
    const skip = start - r.start;
    const pick = (values) => values.slice(skip);
    return { start, n: end - start, count: pick(r.count), errors: pick(r.errors),
      p50_ms: pick(r.p50_ms), p99_ms: pick(r.p99_ms) };
  }

  function frame(c, span, leftLabel, rightLabel, bottomLabel = "0") {
    const { ctx } = c;
    ctx.strokeStyle = "#e5e7eb";
    ctx.strokeRect(c.left, c.top, c.right - c.left, c.bottom - c.top);
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "left";
    ctx.fillText(span < 120 ? `-${span} s` : `-${Math.round(span / 60)} min`, c.left, c.height - 4);
    ctx.textAlign = "right";
    ctx.fillText("now", c.right, c.height - 4);
    ctx.fillText(leftLabel, c.left - 4, c.top + 9);
    ctx.fillText(bottomLabel, c.left - 4, c.bottom);
    if (rightLabel) {
      ctx.textAlign = "left";
      ctx.fillText(rightLabel, c.right + 4, c.top + 9);
    }
  }

  function loadMarks(c, model, xOf) {
    const { ctx } = c;
    ctx.save();
    ctx.setLineDash([3, 3]);
    ctx.strokeStyle = "#9ca3af";
    for (const attempt of model.history) {
      const x = xOf(attempt.at);
      if (attempt.result !== "ok" || x < c.left || x > c.right) continue;
      ctx.beginPath(); ctx.moveTo(x, c.top); ctx.lineTo(x, c.bottom); ctx.stroke();
    }
    ctx.restore();
  }

  function renderRequests(node, model, doc) {
    const r = charted(model, doc);
    const n = r.n;
    const c = canvasOf(node, ".requests");
    const { ctx } = c;
    const xOf = (t) => c.left + ((t - r.start) / n) * (c.right - c.left);
    const maxRate = niceMax(Math.max(...r.count));
    const latencies = r.p99_ms.concat(r.p50_ms).filter((v) => v !== null && v > 0);
    const maxMs = niceMax(Math.max(1, ...latencies));
    const minMs = Math.min(maxMs / 10, 10 ** Math.floor(Math.log10(Math.min(maxMs, ...latencies))));
    frame(c, n, `${maxRate}/s`, msLabel(maxMs));
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "left";
    ctx.fillText(msLabel(minMs), c.right + 4, c.bottom);
    const barW = Math.max(1, (c.right - c.left) / n);
    const yRate = (v) => c.bottom - (v / maxRate) * (c.bottom - c.top);
    for (let i = 0; i < n; i++) {
      if (!r.count[i]) continue;
      const x = c.left + i * barW;
      ctx.fillStyle = "#cbd5e1";
      ctx.fillRect(x, yRate(r.count[i]), barW, c.bottom - yRate(r.count[i]));
      if (r.errors[i]) {
        ctx.fillStyle = "#c0262d";
        ctx.fillRect(x, yRate(r.errors[i]), barW, c.bottom - yRate(r.errors[i]));
      }
    }
    const decades = Math.log10(maxMs / minMs);  // latency on a log scale: one slow load stays readable
    const yMs = (v) => c.bottom - (Math.log10(Math.max(v, minMs) / minMs) / decades) * (c.bottom - c.top);
    for (const [key, colour] of [["p50_ms", "#2563eb"], ["p99_ms", "#ea580c"]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let drawing = false;
      r[key].forEach((v, i) => {
        if (v === null) { drawing = false; return; }
        const x = c.left + (i + 0.5) * barW;
        if (drawing) ctx.lineTo(x, yMs(v)); else ctx.moveTo(x, yMs(v));
        drawing = true;
      });
      ctx.stroke();
    }
    loadMarks(c, model, xOf);
    const recent = Math.min(10, n);
    const rate = r.count.slice(n - recent).reduce((a, b) => a + b, 0) / recent;
    const last = (key) => [...r[key]].reverse().find((v) => v !== null);
    const errors = r.errors.reduce((a, b) => a + b, 0);
    text(node, ".rate", `${rate.toFixed(1)} req/s (last ${recent} s) · p50 ${fmtMs(last("p50_ms"))} · p99 ${fmtMs(last("p99_ms"))}` +
      ` · ${errors} error(s) · bars: requests per second (red: errors), blue p50, orange p99 (log scale), dashed: loads`);
  }

  function renderActions(node, model, doc) {
    const c = canvasOf(node, ".actions");
    const { ctx } = c;
    const { start, n: span } = charted(model, doc);
    const samples = model.actions.filter((s) => s.at >= start);
    const xOf = (t) => c.left + ((t - start) / span) * (c.right - c.left);
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of samples) for (const v of s.action) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!samples.length) { lo = -1; hi = 1; }
    if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const yOf = (v) => c.bottom - ((v - lo) / (hi - lo)) * (c.bottom - c.top);
    frame(c, span, hi.toFixed(2), "", lo.toFixed(2));
    loadMarks(c, model, xOf);
    const versions = new Map();
    for (const s of samples) {
      if (!versions.has(s.version)) versions.set(s.version, { colour: colourOf(versions.size), sums: [], n: 0 });
      const v = versions.get(s.version);
      v.n += 1;
      s.action.forEach((a, i) => { v.sums[i] = (v.sums[i] || 0) + a; });
      ctx.fillStyle = v.colour;
      s.action.forEach((a, i) => {
        const x = xOf(s.at);
        const y = yOf(a);
        if (i % 2 === 0) { ctx.beginPath(); ctx.arc(x, y, 2.5, 0, 2 * Math.PI); ctx.fill(); } else ctx.fillRect(x - 2, y - 2, 4, 4);
      });
    }
    const items = [...versions.entries()].map(([tag, v]) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = v.colour;
      const mean = v.sums.map((s) => (s / v.n).toFixed(3)).join(", ");
      li.append(swatch, `${tag || "unknown version"}: ${v.n} sample(s), mean action [${mean}]`);
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "no requests answered in this window yet";
      items.push(li);
    }
    node.querySelector(".legend").replaceChildren(...items);
  }

  async function admin(node, action) {
    const routes = node.routes;
    const result = node.querySelector(".admin-result");
    const init = { method: "POST", headers: { authorization: `Bearer ${token}` } };
    let url = routes.reload;
    if (action === "pin") {
      url = routes.pin;
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify({ checkpoint: node.querySelector(".versions").value });
    } else if (action === "unpin") {
      url = routes.pin;
      init.method = "DELETE";
    }
    result.textContent = `${action}…`;
    result.className = "admin-result";
    try {
      const response = await fetch(url, init);
      const body = await response.json().catch(() => ({}));
      const live = body.version ? body.version.checkpoint : null;
      result.textContent = response.ok
        ? `${action}: ${response.status} OK${live ? `, live ${live}` : ""}`
        : `${action}: ${response.status} ${body.detail || response.statusText}`;
      result.className = `admin-result ${response.ok ? "ok" : "bad"}`;
    } catch (error) {
      result.textContent = `${action} failed: ${error}`;
      result.className = "admin-result bad";
    }
    refresh();
  }

  function renderHeader(doc) {
    const ready = document.getElementById("ready");
    const reasons = Object.keys(doc.not_ready);
    ready.textContent = reasons.length ? "not ready" : "ready";
    ready.className = `badge ${reasons.length ? "bad" : "ok"}`;
    pidsSeen.set(doc.pid, doc.now);
    for (const [pid, at] of pidsSeen) if (doc.now - at > 60) pidsSeen.delete(pid);
    const others = [...pidsSeen.keys()].filter((p) => p !== doc.pid);
    let worker = `answered by worker pid ${doc.pid}`;
    if (doc.workers > 1) worker += ` of ${doc.workers} (request counts and actions are this worker's)`;
    if (others.length) worker += ` · also seen: pid ${others.join(", ")}`;
    document.getElementById("worker").textContent = worker;
    document.getElementById("updated").textContent = `updated ${fmtTime(doc.now)}`;
  }

  async function refresh() {
    clearTimeout(timer);
    const offline = document.getElementById("offline");
    try {
      const response = await fetch("/statusz", { cache: "no-store" });
      if (!response.ok) throw new Error(`/statusz answered ${response.status}`);
      const doc = await response.json();
      renderHeader(doc);
      for (const model of doc.models) renderModel(model, doc);
      offline.hidden = true;
    } catch (error) {
      offline.textContent = `cannot reach the server (${error.message || error}); showing the last data`;
      offline.hidden = false;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  document.getElementById("token-form").addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("token").addEventListener("input", (event) => {
    token = event.target.value.trim();
    document.body.classList.toggle("has-token", token !== "");
  });
  refresh();
})();
