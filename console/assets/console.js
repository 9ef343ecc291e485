// The console page: the indicator library, the builder (which writes the
// query document), and the answer — explanation, data stamp, warnings,
// chart, table, legend and downloads. Every answer comes from the
// gateway's disclosure control through this console's /api/run.

import { BREAKDOWNS, documentOf, parseBands, yamlOf } from "./query.js";
import { chartKinds, drawChart, textOf } from "./charts.js";

const $ = (id) => document.getElementById(id);
const state = { library: null, organisations: new Map(), answer: null, urls: [] };

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : { method: "POST", body, headers: { "content-type": "text/plain" } });
  const json = await response.json().catch(() => ({ error: `the console answered ${response.status}` }));
  if (!response.ok) throw new Error(json.error || `the console answered ${response.status}`);
  return json;
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.appendChild(o);
}

function showLibrary(library) {
  const groups = new Map();
  for (const indicator of library.indicators) {
    if (!groups.has(indicator.question)) groups.set(indicator.question, []);
    groups.get(indicator.question).push(indicator);
    option($("indicator"), indicator.name, indicator.title);
  }
  const nav = $("library");
  for (const [question, indicators] of groups) {
    const heading = document.createElement("h3");
    heading.textContent = question;
    nav.appendChild(heading);
    for (const indicator of indicators) {
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = indicator.title;
      const body = document.createElement("div");
      const definition = document.createElement("p");
      definition.textContent = indicator.definition;
      const source = document.createElement("p");
      source.className = "hint";
      source.textContent = `Follows: ${indicator.source}.${indicator.better ? ` Better: ${indicator.better}.` : ""} Name: ${indicator.name}.`;
      const use = document.createElement("button");
      use.type = "button";
      use.className = "secondary";
      use.textContent = "Use this indicator";
      use.setAttribute("aria-label", `Use the indicator: ${indicator.title}`);
      use.addEventListener("click", () => {
        $("who-indicator").checked = true;
        $("indicator").value = indicator.name;
        changed();
        $("indicator").focus();
      });
      body.append(definition, source, use);
      details.append(summary, body);
      nav.appendChild(details);
    }
  }
  for (const s of library.stratifications) option($("stratification"), s.reference, `${s.reference}: tiers ${s.tiers.join(", ")}`);
  for (const select of document.querySelectorAll("[data-breakdown]")) {
    for (const [value, words] of BREAKDOWNS) option(select, value, words);
  }
}

function showVocabulary(words) {
  $("connection").textContent = `Asking the gateway at ${words.gateway} with your analyst certificate`;
  const box = $("agencies");
  for (const o of words.organisations) {
    state.organisations.set(o.code, o.name);
    const div = document.createElement("div");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.id = `agency-${o.code}`;
    input.value = o.code;
    input.dataset.agency = "";
    const labelled = document.createElement("label");
    labelled.htmlFor = input.id;
    labelled.textContent = `${o.name} (${o.code})`;
    div.append(input, labelled);
    box.appendChild(div);
  }
  const events = [...new Set(words.datasets.flatMap((d) => d.events))].sort();
  for (const e of events) option($("event"), e, e.replaceAll("_", " "));
  const attributes = [...new Set(words.datasets.flatMap((d) => d.attributes))].sort();
  for (const a of attributes) option($("attribute"), a, a.replaceAll("_", " "));
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function choices() {
  return {
    who: $("who-indicator").checked ? "indicator" : "cohort",
    indicator: $("indicator").value,
    agencies: [...document.querySelectorAll("[data-agency]")].filter((c) => c.checked).map((c) => c.value),
    event: $("event").value,
    within: number("within"),
    ageFrom: number("age-from"),
    ageTo: number("age-to"),
    rows: $("rows").value,
    columns: $("columns").value,
    bands: parseBands($("bands").value) ?? [0, 5, 11, 16, 18],
    attribute: $("attribute").value,
    stratification: $("stratification").value,
    every: $("every").value,
    count: number("count") ?? 8,
    reference: $("reference").value,
  };
}

let explaining = 0;
/** Explanations name agencies by code: add each one's name. */
function named(text) {
  let out = text;
  for (const [code, name] of state.organisations) {
    const escaped = code.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    out = out.replace(new RegExp(`organisation ${escaped}\\b`, "g"), `${name} (${code})`);
  }
  return out;
}

async function explain() {
  const ticket = ++explaining;
  const out = $("explanation");
  try {
    const { explanation } = await api("/api/explain", $("document").value);
    if (ticket !== explaining) return;
    out.textContent = named(explanation);
    out.classList.remove("invalid");
  } catch (error) {
    if (ticket !== explaining) return;
    out.textContent = `This document cannot be run yet: ${error.message}`;
    out.classList.add("invalid");
  }
}

/** The builder changed: show what applies, rewrite the document. */
function changed() {
  const c = choices();
  const uses = (b) => c.rows === b || c.columns === b;
  $("bands-part").hidden = !uses("age_bands");
  $("stratum-part").hidden = !uses("stratum");
  $("attribute-part").hidden = !uses("attribute");
  $("period-part").hidden = !uses("period");
  const byIndicator = c.who === "indicator";
  $("indicator").disabled = !byIndicator;
  for (const input of $("cohort-part").querySelectorAll("input, select")) input.disabled = byIndicator;
  const indicator = state.library?.indicators.find((i) => i.name === c.indicator);
  $("indicator-definition").textContent = byIndicator && indicator ? indicator.definition : "";
  $("document").value = yamlOf(documentOf(c));
  explain();
}

function stamp(answer) {
  const out = $("answer-stamp");
  out.textContent = `Reference date ${answer.reference_date} · data generation ${answer.data_generation} · from the gateway at ${answer.gateway}, answered ${new Date().toLocaleString("en-GB")}.`;
  out.classList.toggle("stale", Boolean(answer.newer_data_pending));
  if (answer.newer_data_pending) {
    const words = answer.legend.newer_data_pending;
    out.textContent += ` ${words[0].toUpperCase()}${words.slice(1)}.`;
  }
}

function table(answer) {
  const wrap = $("table");
  wrap.replaceChildren();
  const t = document.createElement("table");
  const caption = document.createElement("caption");
  caption.textContent = `${answer.measure}${answer.row_heading ? ` by ${answer.row_heading}` : ""}${answer.column_heading ? ` and ${answer.column_heading}` : ""}`;
  t.appendChild(caption);
  const head = t.createTHead().insertRow();
  const corner = document.createElement("th");
  corner.scope = "col";
  corner.textContent = answer.row_heading || "";
  head.appendChild(corner);
  for (const column of answer.columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = column;
    if (column === "total") th.className = "total";
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const row of answer.rows) {
    const tr = body.insertRow();
    if (row.label === "total") tr.className = "total";
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = row.label;
    tr.appendChild(th);
    for (const column of answer.columns) {
      const td = tr.insertCell();
      const value = row.cells[column];
      td.textContent = textOf(value, answer.measure);
      if (value === "suppressed") {
        td.className = "suppressed";
        td.title = "suppressed by disclosure control";
      }
    }
  }
  wrap.appendChild(t);
  const cells = answer.rows.flatMap((r) => answer.columns.map((c) => r.cells[c]));
  const legend = $("legend");
  legend.replaceChildren();
  const entry = (term, words) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = words;
    legend.append(dt, dd);
  };
  entry("*", `${answer.legend.suppressed}${cells.includes("suppressed") ? "" : " (none in this table)"}.`);
  entry("-", `${answer.legend.null}.`);
  entry("noise", "every figure has had disclosure-control noise added, so small differences may be noise alone.");
  $("disclosure-note").textContent = `Disclosure control: ${answer.disclosure_note}.`;
}

function download(id, blob) {
  const a = $(id);
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  a.href = url;
  a.removeAttribute("aria-disabled");
}

function csvOf(answer) {
  const quote = (s) => (/[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s);
  const lines = [[answer.row_heading, ...answer.columns].map(quote).join(",")];
  for (const row of answer.rows) lines.push([row.label, ...answer.columns.map((c) => textOf(row.cells[c], answer.measure))].map(quote).join(","));
  return `${lines.join("\n")}\n`;
}

/** Fresh downloads for the answer and chart on show. */
function exports(answer, svg) {
  for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
  for (const id of ["export-csv", "export-svg", "export-png"]) {
    $(id).removeAttribute("href");
    $(id).setAttribute("aria-disabled", "true");
  }
  download("export-csv", new Blob([csvOf(answer)], { type: "text/csv" }));
  const text = new XMLSerializer().serializeToString(svg);
  const svgBlob = new Blob([text], { type: "image/svg+xml" });
  download("export-svg", svgBlob);
  const image = new Image();
  const source = URL.createObjectURL(svgBlob);
  image.onload = () => {
    const canvas = document.createElement("canvas");
    const [, , w, h] = svg.getAttribute("viewBox").split(" ").map(Number);
    canvas.width = w * 2;
    canvas.height = h * 2;
    const context = canvas.getContext("2d");
    context.scale(2, 2);
    context.drawImage(image, 0, 0, w, h);
    URL.revokeObjectURL(source);
    canvas.toBlob((png) => png && download("export-png", png), "image/png");
  };
  image.src = source;
}

function chart() {
  const answer = state.answer;
  const kind = $("chart-kind").value;
  const name = /^indicator:\s*(\S+)/m.exec($("document").value)?.[1];
  const better = state.library?.indicators.find((i) => i.name === name)?.better ?? null;
  const { svg, caption } = drawChart(kind, answer, { better, organisations: state.organisations });
  $("chart").replaceChildren(svg);
  $("chart-caption").textContent = caption;
  exports(answer, svg);
}

function show(answer) {
  state.answer = answer;
  $("answer").hidden = false;
  $("answer-explanation").textContent = named(answer.explanation);
  stamp(answer);
  const warnings = $("answer-warnings");
  warnings.replaceChildren();
  for (const w of answer.warnings) {
    const p = document.createElement("p");
    p.textContent = `Warning: ${w}.`;
    warnings.appendChild(p);
  }
  const kinds = $("chart-kind");
  kinds.replaceChildren();
  for (const [value, words] of chartKinds(answer)) option(kinds, value, words);
  table(answer);
  chart();
  $("answer-heading").focus();
}

async function run(event) {
  event.preventDefault();
  const status = $("status");
  status.className = "";
  status.textContent = "Asking the gateway…";
  try {
    const answer = await api("/api/run", $("document").value);
    status.textContent = "Answered.";
    show(answer);
  } catch (error) {
    status.className = "error";
    status.textContent = `Not answered: ${error.message}`;
  }
}

const SAVED = "joinery-console-saved";
function saved() {
  try {
    return JSON.parse(localStorage.getItem(SAVED) ?? "[]");
  } catch {
    return [];
  }
}

function showSaved() {
  const list = saved();
  $("saved-part").hidden = list.length === 0;
  $("saved").replaceChildren(...list.map((item, i) => {
    const li = document.createElement("li");
    const load = document.createElement("button");
    load.type = "button";
    load.className = "secondary";
    load.textContent = `Load: ${item.name}`;
    load.addEventListener("click", () => {
      $("document").value = list[i].text;
      explain();
      $("document").focus();
    });
    li.appendChild(load);
    return li;
  }));
}

function save() {
  const text = $("document").value;
  const name = `${/^indicator:\s*(\S+)/m.exec(text)?.[1] ?? "query"} ${new Date().toISOString().slice(0, 16).replace("T", " ")}`;
  localStorage.setItem(SAVED, JSON.stringify([{ name, text }, ...saved()].slice(0, 20)));
  showSaved();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "application/yaml" }));
  a.download = "joinery-query.yaml";
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  $("status").textContent = `Saved as "${name}" here and downloaded as joinery-query.yaml.`;
}

async function start() {
  $("reference").value = new Date().toISOString().slice(0, 10);
  try {
    const [library, words] = await Promise.all([api("/api/library"), api("/api/vocabulary")]);
    state.library = library;
    showLibrary(library);
    showVocabulary(words);
  } catch (error) {
    $("connection").textContent = `Not connected: ${error.message}`;
    return;
  }
  $("builder").addEventListener("change", (e) => e.target.id !== "document" && changed());
  $("builder").addEventListener("input", (e) => e.target.type === "number" && changed());
  $("document").addEventListener("input", explain);
  $("builder").addEventListener("submit", run);
  $("copy").addEventListener("click", async () => {
    await navigator.clipboard.writeText($("document").value);
    $("status").textContent = "The document is on the clipboard.";
  });
  $("save").addEventListener("click", save);
  $("chart-kind").addEventListener("change", chart);
  showSaved();
  changed();
  document.body.dataset.ready = "true";
}

start();
