// The clinician's page: search terms, keep the findings in this page only, ask for the
// differential. Everything goes to this page's own origin, in POST bodies; nothing is stored.
"use strict";

const findings = { observed: new Map(), excluded: new Map() };
let searchTimer = null;
let searchSeq = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  const data = await response.json().catch(() => ({ error: "the clinic sent no answer" }));
  if (!response.ok) throw new Error(data.error || `the clinic answered ${response.status}`);
  return data;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function termLabel(term) {
  return el("span", { class: "term" },
    el("span", { class: "id" }, term.id || term.hpo_id),
    term.name,
    term.name_zh ? el("span", { class: "zh", lang: "zh" }, term.name_zh) : null);
}

async function loadModel() {
  try {
    const response = await fetch("/api/model", { cache: "no-store" });
    const model = await response.json();
    const parts = [`Model: ${model.source}`, `HPO ${model.hpo_version}`, `${model.diseases} diseases`];
    document.getElementById("model").textContent = parts.join(" · ");
    const notice = document.getElementById("notice");
    notice.replaceChildren(...model.notices.map((text) => el("span", {}, text)));
  } catch (error) {
    showError("the model's description could not be read: " + error.message);
  }
}

function renderFindings() {
  for (const kind of ["observed", "excluded"]) {
    const list = document.getElementById(kind);
    const items = [...findings[kind].values()].map((term) =>
      el("li", { "data-id": term.id },
        term.name, term.name_zh ? el("span", { class: "zh", lang: "zh" }, term.name_zh) : null,
        el("button", { type: "button", title: "remove", "aria-label": `remove ${term.name}`,
          onclick: () => { findings[kind].delete(term.id); renderFindings(); } }, "×")));
    list.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "none")]));
  }
  document.getElementById("rank").disabled = findings.observed.size === 0;
}

function addFinding(kind, match) {
  const term = { id: match.hpo_id, name: match.name, name_zh: match.name_zh };
  const other = kind === "observed" ? "excluded" : "observed";
  findings[other].delete(term.id);
  findings[kind].set(term.id, term);
  renderFindings();
}

function renderResults(terms) {
  const list = document.getElementById("results");
  if (!terms.length) {
    list.replaceChildren(el("li", { class: "none" }, "no matching term"));
    return;
  }
  list.replaceChildren(...terms.map((match) => {
    const label = termLabel(match);
    const shown = [match.hpo_id, match.name, match.name_zh];
    if (match.matched && !shown.includes(match.matched)) {
      label.append(el("span", { class: "via" }, `matched “${match.matched}”`));
    }
    return el("li", { "data-id": match.hpo_id }, label,
      el("button", { type: "button", class: "observe", onclick: () => addFinding("observed", match) },
        "+ observed"),
      el("button", { type: "button", class: "exclude", onclick: () => addFinding("excluded", match) },
        "− excluded"));
  }));
}

async function search(text) {
  const seq = ++searchSeq;
  if (!text.trim()) {
    document.getElementById("results").replaceChildren();
    return;
  }
  try {
    const data = await post("/api/terms", { q: text, limit: 8 });
    if (seq === searchSeq) {
      showError("");
      renderResults(data.terms);
    }
  } catch (error) {
    if (seq === searchSeq) showError(error.message);
  }
}

function evidence(kind, title, terms) {
  if (!terms.length) return null;
  return el("div", { class: `evidence ${kind}` }, el("span", { class: "kind" }, title),
    ...terms.map((t) => el("span", { class: "item" }, t.name,
      t.name_zh ? el("span", { class: "zh", lang: "zh" }, t.name_zh) : null)));
}

function bar(percent) {
  // Set through the CSSOM: the page's policy refuses inline style attributes.
  const fill = el("span");
  fill.style.width = `${Math.max(0.5, percent)}%`;
  return el("div", { class: "bar" }, fill);
}

function renderCandidates(candidates) {
  document.getElementById("hint").hidden = true;
  document.getElementById("candidates").replaceChildren(...candidates.map((c) => {
    const percent = (100 * c.probability).toFixed(1);
    return el("li", { class: "candidate", "data-disease": c.disease_id },
      el("div", { class: "head" },
        el("span", { class: "rank" }, String(c.rank)),
        el("span", { class: "name" }, c.name, el("span", { class: "id" }, c.disease_id)),
        el("span", { class: "probability" }, `${percent}%`)),
      bar(+percent),
      evidence("supporting", "For 支持:", c.supporting),
      evidence("against", "Against 不符:", c.against));
  }));
}

async function rank() {
  const button = document.getElementById("rank");
  button.disabled = true;
  try {
    const data = await post("/api/differential", {
      observed: [...findings.observed.keys()],
      excluded: [...findings.excluded.keys()],
      top: 10,
    });
    showError("");
    renderCandidates(data.candidates);
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = findings.observed.size === 0;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("search");
  input.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => search(input.value), 200);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { clearTimeout(searchTimer); search(input.value); }
  });
  document.getElementById("rank").addEventListener("click", rank);
  document.getElementById("clear").addEventListener("click", () => {
    findings.observed.clear();
    findings.excluded.clear();
    renderFindings();
    document.getElementById("candidates").replaceChildren();
    document.getElementById("hint").hidden = false;
    showError("");
  });
  renderFindings();
  loadModel();
});
