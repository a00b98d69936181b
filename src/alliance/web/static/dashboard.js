// The consortium dashboard: polls /v1/dashboard every 2 s and redraws each view.
// Every text comes in through textContent (never innerHTML), so no figure or name can inject
// markup. The map is SVG laid out here: the coordinator in the middle, hospitals on
// concentric rings whose capacity grows with the radius, so 12 or 300 nodes stay readable.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const STATES = [
  ["online", "online 在线"], ["files", "on files 离线文件"], ["refused", "refused 拒绝"],
  ["revoked", "revoked 已吊销"], ["away", "away 未连接"], ["unseen", "not seen 未见"],
  ["member", "member 成员"], ["simulated", "simulated 模拟"],
];
const charts = new Map();

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function when(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const ago = Math.max(0, Date.now() / 1000 - seconds);
  if (ago < 90) return `${Math.round(ago)} s ago`;
  if (ago < 5400) return `${Math.round(ago / 60)} min ago`;
  return new Date(seconds * 1000).toLocaleString();
}

function pct(value) {
  return value === null || value === undefined ? "—" : `${(100 * value).toFixed(1)}%`;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

// --- network map -----------------------------------------------------------------------------
function rings(count) {
  // Ring k (1-based) holds about 10·k nodes: constant spacing along every ring.
  const out = [];
  let left = count;
  for (let k = 1; left > 0; k++) {
    const take = Math.min(left, 10 * k + 2);
    out.push(take);
    left -= take;
  }
  return out;
}

function layout(nodes, size, margin) {
  const centre = size / 2;
  const capacity = rings(nodes.length);
  const step = (centre - margin) / Math.max(capacity.length, 1);
  const placed = [];
  let index = 0;
  capacity.forEach((take, ring) => {
    const radius = step * (ring + 1);
    const offset = ring % 2 ? Math.PI / take : 0;
    for (let i = 0; i < take; i++, index++) {
      const angle = -Math.PI / 2 + offset + (2 * Math.PI * i) / take;
      placed.push({ node: nodes[index], x: centre + radius * Math.cos(angle), y: centre + radius * Math.sin(angle), ring });
    }
  });
  return { placed, step, centre, rings: capacity.length };
}

function nodeRadius(node, largest, many) {
  const base = many ? 3 : 7;
  if (typeof node.cases === "number" && largest > 0) return base + (many ? 5 : 13) * Math.sqrt(node.cases / largest);
  return base + (node.cases ? 1 : 0);
}

function drawMap(network, viewer) {
  const size = 620;
  const nodes = network.nodes;
  const many = nodes.length > 40;
  // Labels are drawn only up to 40 hospitals: they need room outside the outer ring.
  const { placed, step, centre, rings: count } = layout(nodes, size, many ? 16 : 125);
  const largest = Math.max(0, ...nodes.map((n) => (typeof n.cases === "number" ? n.cases : 0)));
  const svg = el("svg:svg", { viewBox: `0 0 ${size} ${size}`, role: "img" });
  for (let k = 1; k <= count; k++) svg.append(el("svg:circle", { class: "ring", cx: centre, cy: centre, r: step * k }));
  const where = new Map(placed.map((p) => [p.node.id, p]));
  for (const edge of network.edges) {
    const from = where.get(edge.source);
    if (!from) continue;
    const width = edge.weight === null || edge.weight === undefined ? null : 1 + 6 * edge.weight;
    // Past 40 hospitals the lines are drawn faint and still, or they would hide the nodes.
    const line = el("svg:line", {
      class: ["edge", edge.live ? "live" : "", many ? "many" : ""].join(" ").trim(), x1: from.x, y1: from.y, x2: centre, y2: centre,
      "data-source": edge.source, "stroke-width": width,
    });
    line.append(el("svg:title", {}, `${edge.source} → coordinator, round ${edge.round}` +
      (edge.weight === null || edge.weight === undefined ? "" : `, weight ${edge.weight.toFixed(3)}`)));
    svg.append(line);
  }
  for (const p of placed) {
    const n = p.node;
    const classes = ["node", `node-${n.state}`];
    if (n.own) classes.push("own");
    if (typeof n.cases === "string") classes.push("suppressed");
    const g = el("svg:g", { class: classes.join(" "), "data-id": n.id, "data-state": n.state });
    g.append(el("svg:circle", { class: `state-${n.state}`, cx: p.x, cy: p.y, r: nodeRadius(n, largest, many) }));
    const tip = [n.id, n.state, n.cases === null ? null : `cases ${n.cases}`, n.reason, n.last_seen ? `last seen ${when(n.last_seen)}` : null];
    g.append(el("svg:title", {}, tip.filter(Boolean).join(" · ")));
    if (!many) {
      // The label sits outside the node, away from the centre.
      const dx = p.x - centre, dy = p.y - centre, len = Math.hypot(dx, dy) || 1;
      const gap = nodeRadius(n, largest, many) + 8;
      const lx = p.x + (dx / len) * gap, ly = p.y + (dy / len) * gap;
      const anchor = Math.abs(dx / len) < 0.3 ? "middle" : dx > 0 ? "start" : "end";
      g.append(el("svg:text", { x: lx, y: ly + (dy > 0 ? 10 : dy < 0 && Math.abs(dx / len) < 0.3 ? -2 : 4), "text-anchor": anchor }, n.id));
    }
    svg.append(g);
  }
  const hub = el("svg:g", { class: "coord" });
  hub.append(el("svg:circle", { cx: centre, cy: centre, r: 26 }));
  hub.append(el("svg:text", { x: centre, y: centre + 4, "text-anchor": "middle" }, "协调者"));
  svg.append(hub);
  document.getElementById("map").replaceChildren(svg);
  const counts = {};
  for (const n of nodes) counts[n.state] = (counts[n.state] || 0) + 1;
  document.getElementById("legend").replaceChildren(...STATES.filter(([s]) => counts[s]).map(([s, label]) => {
    const item = el("li", {}, `${label}: ${counts[s]}`);
    item.style.setProperty("--c", `var(--${s})`);
    return item;
  }));
  const shown = network.round === null ? "no round yet" :
    `study ${network.study}, round ${network.round}: ${network.edges.length} update(s) drawn`;
  document.getElementById("map-caption").textContent =
    `${nodes.length} hospitals · ${shown}. Node size: training cases (counts under 5 hidden).` +
    (viewer.role === "site" ? " Other hospitals' details are shown to the operators only." : "");
  fill(document.querySelector("#nodes tbody"), nodes.map((n) => [
    n.id, el("span", { class: `pill state-${n.state}` }, n.state + (n.reason ? `: ${n.reason}` : "")),
    n.cases === null ? "—" : String(n.cases), when(n.last_seen),
  ]));
}

// --- studies ---------------------------------------------------------------------------------
function openRound(study) {
  const r = study.open_round;
  if (!r) return el("div", { class: "progress muted" }, study.status === "running" ? "between rounds" : "no open round");
  const total = r.participant_count ?? r.participants.length;
  const answered = r.answered_count ?? r.answered.length;
  const bar = el("div", {});
  bar.style.width = `${total ? (100 * answered) / total : 0}%`;
  const refused = r.refused || {};
  const awaited = (r.participants || []).filter((s) => !(r.answered || []).includes(s) && !(s in refused));
  return el("div", { class: "progress", "data-round": r.round },
    el("div", { class: "round-line" },
      `Round ${r.round}: ${answered} of ${total} answered`,
      r.stage ? ` · stage ${r.stage}` : "",
      r.deadline ? ` · deadline ${new Date(r.deadline * 1000).toLocaleTimeString()}` : ""),
    el("div", { class: "bar" }, bar),
    awaited.length ? el("div", { class: "muted" }, `awaited: ${awaited.join(", ")}`) : null,
    Object.keys(refused).length ? el("div", {}, "refused: " + Object.entries(refused).map(([s, why]) => `${s} (${why})`).join("; ")) : null,
    r.holding ? el("div", { class: "muted" }, `holding: ${typeof r.holding === "string" ? r.holding : JSON.stringify(r.holding)}`) : null);
}

function chart(study, host) {
  const series = study.accuracy;
  if (!window.uPlot || series.length === 0) return;
  const sites = [...new Set(series.flatMap((r) => Object.keys(r.sites)))].sort();
  const data = [series.map((r) => r.round), series.map((r) => r.top1), ...sites.map((s) => series.map((r) => r.sites[s] ?? null))];
  const key = `${study.study}:${sites.join(",")}`;
  let entry = charts.get(study.study);
  if (entry && entry.key === key && entry.host === host) {
    entry.plot.setData(data);
    return;
  }
  if (entry) entry.plot.destroy();
  const palette = ["#3b6fd8", "#e08a00", "#2e9e5b", "#c62828", "#7c4dff", "#00897b", "#6d4c41", "#d81b60", "#546e7a", "#9e9d24"];
  const opts = {
    width: 520, height: 240, title: "Top-1 accuracy per round 每轮准确率",
    scales: { x: { time: false }, y: { range: [0, 1] } },
    axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, ticks) => ticks.map((t) => String(t)) }, { values: (u, ticks) => ticks.map((t) => `${Math.round(t * 100)}%`) }],
    series: [{ label: "round" }, { label: "overall", stroke: "#1d2733", width: 3 },
      ...sites.map((s, i) => ({ label: s, stroke: palette[i % palette.length], width: 1, show: sites.length <= 20 }))],
    legend: { show: sites.length <= 20, live: false },
  };
  host.replaceChildren();
  charts.set(study.study, { key, host, plot: new window.uPlot(opts, data, host) });
}

function drawStudies(studies) {
  const list = document.getElementById("study-list");
  const seen = new Set();
  for (const study of [...studies].reverse()) {
    seen.add(study.study);
    let box = list.querySelector(`[data-study="${CSS.escape(study.study)}"]`);
    if (!box) {
      box = el("div", { class: "study", "data-study": study.study },
        el("div", { class: "study-head" }), el("div", { class: "live" }),
        el("div", { class: "study-body" }, el("div", { class: "chart" }), el("div", { class: "history" })));
      list.append(box);
    }
    box.querySelector(".study-head").replaceChildren(...[
      el("strong", {}, study.title), el("span", { class: "muted" }, study.study),
      el("span", { class: "pill state-online" }, study.status),
      el("span", {}, `rounds ${study.rounds_closed} / ${study.rounds_total}`),
      study.privacy && study.privacy.secure_aggregation ? el("span", {}, "secure aggregation") : null,
      study.rejections ? el("span", { class: "muted" }, `${study.rejections} rejected message(s)`) : null,
      study.error ? el("span", { class: "problems" }, study.error) : null].filter(Boolean));
    box.querySelector(".live").replaceChildren(openRound(study));
    const rows = [...study.history].reverse().map((h) => {
      const acc = study.accuracy.find((a) => a.round === h.round) || {};
      return [String(h.round), String(h.contributors ?? h.sites.length), String(h.num_examples),
        h.train_loss === null || h.train_loss === undefined ? "—" : h.train_loss.toFixed(3), pct(acc.top1), pct(acc.top3)];
    });
    const table = el("table", {}, el("thead", {}, el("tr", {}, ...["Round", "Hospitals", "Cases", "Loss", "Top-1", "Top-3"].map((h) => el("th", {}, h)))), el("tbody", {}));
    fill(table.querySelector("tbody"), rows);
    box.querySelector(".history").replaceChildren(table);
    chart(study, box.querySelector(".chart"));
  }
  for (const box of [...list.children]) if (!seen.has(box.dataset.study)) box.remove();
  if (studies.length === 0) list.replaceChildren(el("p", { class: "muted" }, "No study submitted yet."));
}

// --- privacy, models, audit --------------------------------------------------------------------
function drawPrivacy(privacy) {
  const host = document.getElementById("privacy-list");
  host.replaceChildren(...privacy.studies.map((p) => {
    const promise = p.promise || {};
    const target = promise.target_epsilon;
    const spent = Object.entries(p.spent).sort();
    const rows = spent.map(([site, s]) => {
      const bar = el("div", {});
      bar.style.width = target ? `${Math.min(100, (100 * s.epsilon) / target)}%` : "0";
      return [site, s.epsilon.toFixed(2), target ? target.toFixed(2) : "—", el("div", { class: "bar" }, bar)];
    });
    const table = el("table", { class: "spent" }, el("thead", {}, el("tr", {}, ...["Hospital", "ε spent", "target ε", ""].map((h) => el("th", {}, h)))), el("tbody", {}));
    fill(table.querySelector("tbody"), rows);
    return el("div", { class: "study", "data-study": p.study },
      el("div", { class: "study-head" }, el("strong", {}, p.study),
        el("span", {}, `patient level: ${promise.patient_level ?? "—"}`),
        el("span", {}, `target ε ${target ?? "—"}, δ ${promise.delta ?? "—"}`),
        el("span", {}, `client-level ε ${promise.client_level_epsilon === null || promise.client_level_epsilon === undefined ? "—" : promise.client_level_epsilon.toFixed(2)}`),
        el("span", {}, promise.secure_aggregation ? "secure aggregation on" : "secure aggregation off")),
      spent.length ? table : el("p", { class: "muted" }, "No ε reported yet (hospitals report it with the final model's evaluation)."));
  }));
  fill(document.querySelector("#refusals tbody"), privacy.refusals.map((r) => [r.study, when(r.at), r.message]));
}

function drawModels(models) {
  fill(document.querySelector("#model-list tbody"), models.map((m) => {
    const ev = (m.card.evaluation && m.card.evaluation.overall) || {};
    const pending = (m.card.evaluation && m.card.evaluation.pending) || [];
    return [m.study, String(m.version), m.card.issued_at, String(m.card.hospitals.length),
      `${pct(ev.top1)} / ${pct(ev.top3)}` + (pending.length ? ` (awaiting ${pending.length})` : ""),
      el("span", {}, el("a", { href: m.model_url, download: `${m.study}-v${m.version}.alliance` }, "model"), " · ",
        el("a", { href: m.card_url, download: `${m.study}-v${m.version}.card.json` }, "card"))];
  }));
}

function drawAudit(audit) {
  const badge = document.getElementById("audit-badge");
  if (audit.ok === null) {
    badge.textContent = "simulation: no audit log";
    document.getElementById("audit-status").replaceChildren(
      el("p", { class: "muted" }, "A simulation runs in one process: there is no coordinator audit log to verify."));
    return;
  }
  badge.className = `badge ${audit.ok ? "ok" : "bad"}`;
  badge.textContent = audit.ok ? `audit log verified · ${audit.entries} entries` : "audit log: problems found";
  const host = document.getElementById("audit-status");
  host.replaceChildren(
    el("p", {}, audit.ok ? `Hash chain intact: ${audit.entries} entries verified.` : `Verification failed (${audit.problem_count ?? "?"} problem(s)).`),
    ...(audit.problems || []).map((p) => el("div", { class: "problems" }, p)));
}

// --- polling ---------------------------------------------------------------------------------
function render(data) {
  document.getElementById("federation").textContent = `consortium ${data.federation}`;
  document.getElementById("viewer").textContent = `${data.viewer.role} ${data.viewer.name}`;
  drawMap(data.network, data.viewer);
  drawStudies(data.studies);
  drawPrivacy(data.privacy);
  drawModels(data.models);
  drawAudit(data.audit);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

async function refresh() {
  const status = document.getElementById("updated");
  try {
    const response = await fetch("/v1/dashboard", { cache: "no-store" });
    const data = await response.json();
    if (!response.ok) throw new Error(data.detail || `HTTP ${response.status}`);
    render(data);
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    status.textContent = `cannot reach the coordinator: ${error.message}`;
  }
}

// A static copy (alliance demo's dashboard.html) carries its data and is drawn once.
const embedded = document.getElementById("dashboard-data");
if (embedded) {
  render(JSON.parse(embedded.textContent));
  document.getElementById("updated").textContent = "updated at the end of the demo's run (static page)";
} else {
  refresh();
  setInterval(refresh, POLL_MS);
}
