// Charts of an answer, drawn as SVG with presentation attributes only, so
// a downloaded chart looks the same outside the console. Suppressed cells
// (`*`) are drawn as an empty dashed mark and labelled `*`, never as zero;
// cells with nothing to show (`-`) are left out and labelled `-`.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 760;
const HEIGHT = 400;
const FONT = "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif";
/** Series colours, each at least 3:1 against white. */
const COLOURS = ["#1d70b8", "#b35900", "#00703c", "#912b88", "#d4351c", "#505a5f", "#003078", "#6f4e00"];
const INK = "#1d1d1b";
const GRID = "#d8d8d8";

/** A cell as a number, or null when suppressed or empty. */
export function numberOf(value) {
  return typeof value === "number" ? value : null;
}

/** A cell as the table and CSV show it. */
export function textOf(value, measure) {
  if (value === "suppressed") return "*";
  if (value === null || value === undefined) return "-";
  if (measure === "children" || measure === "events") return String(value);
  return value.toFixed(1);
}

function el(name, attributes = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function label(parent, x, y, text, extra = {}) {
  parent.appendChild(el("text", { x, y, "font-family": FONT, "font-size": 13, fill: INK, ...extra }, text));
}

/** A label over several lines of at most `width` characters, split at spaces. */
function wrapped(parent, x, y, text, width, extra = {}) {
  const lines = [];
  for (const word of text.split(" ")) {
    const last = lines.length - 1;
    if (last >= 0 && `${lines[last]} ${word}`.length <= width) lines[last] = `${lines[last]} ${word}`;
    else lines.push(word);
  }
  const node = el("text", { x, y, "font-family": FONT, "font-size": 12, fill: INK, "text-anchor": "middle", ...extra });
  lines.forEach((line, i) => node.appendChild(el("tspan", { x, dy: i ? 14 : 0 }, line)));
  parent.appendChild(node);
}

/** The rows and columns of an answer without their totals. */
function parts(answer) {
  const rows = answer.rows.filter((r) => r.label !== "total");
  const columns = answer.columns.filter((c) => c !== "total");
  return {
    rows: rows.length ? rows : answer.rows,
    columns: columns.length ? columns : ["total"],
  };
}

/** The charts that suit an answer, best first: [kind, words]. */
export function chartKinds(answer) {
  const headings = [answer.row_heading, answer.column_heading];
  const kinds = [];
  if (headings.includes("period")) kinds.push(["trend", "Trend against the baseline (turn the curve)"]);
  if (headings.includes("agencies known to")) kinds.push(["upset", "Agency overlap (UpSet)"]);
  if (headings.includes("sex") && (headings.includes("age band") || headings.includes("life-course segment"))) {
    kinds.push(["pyramid", "Age pyramid"]);
  }
  kinds.push(["bars", "Bar chart"]);
  return kinds;
}

function frame(title, description) {
  const svg = el("svg", {
    xmlns: NS, viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: WIDTH, height: HEIGHT,
    role: "img", "aria-labelledby": "chart-title chart-desc",
  });
  svg.appendChild(el("title", { id: "chart-title" }, title));
  svg.appendChild(el("desc", { id: "chart-desc" }, description));
  svg.appendChild(el("rect", { x: 0, y: 0, width: WIDTH, height: HEIGHT, fill: "#ffffff" }));
  label(svg, 16, 24, title, { "font-size": 15, "font-weight": 700 });
  return svg;
}

function niceMax(max) {
  if (max <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

function formatted(v, measure) {
  return measure === "children" || measure === "events" ? String(Math.round(v)) : v.toFixed(1);
}

/** A y axis from 0 to max on the plot box; returns the value-to-y map. */
function yAxis(svg, box, max, measure) {
  const top = niceMax(max);
  const y = (v) => box.y + box.h - (v / top) * box.h;
  for (let i = 0; i <= 5; i += 1) {
    const v = (top * i) / 5;
    svg.appendChild(el("line", { x1: box.x, x2: box.x + box.w, y1: y(v), y2: y(v), stroke: i ? GRID : INK, "stroke-width": 1 }));
    label(svg, box.x - 8, y(v) + 4, formatted(v, measure), { "text-anchor": "end", "font-size": 12 });
  }
  label(svg, box.x, box.y - 10, measure, { "font-size": 12 });
  return y;
}

function legend(svg, names, x, y) {
  names.forEach((name, i) => {
    const lx = x + (i % 4) * 180;
    const ly = y + Math.floor(i / 4) * 18;
    svg.appendChild(el("rect", { x: lx, y: ly - 10, width: 12, height: 12, fill: COLOURS[i % COLOURS.length] }));
    label(svg, lx + 18, ly, name, { "font-size": 12 });
  });
}

function suppressedMark(svg, x, baseline, width) {
  svg.appendChild(el("rect", {
    x, y: baseline - 24, width, height: 24, fill: "none", stroke: "#505a5f", "stroke-dasharray": "4 3",
  }));
  label(svg, x + width / 2, baseline - 30, "*", { "text-anchor": "middle", "font-weight": 700 });
}

/** Grouped bars: a group per row, a bar per column. */
function bars(answer) {
  const { rows, columns } = parts(answer);
  const values = rows.flatMap((r) => columns.map((c) => numberOf(r.cells[c]))).filter((v) => v !== null);
  const by = [answer.row_heading, answer.column_heading].filter((h) => h).join(" and ");
  const svg = frame(`${answer.measure}${by ? ` by ${by}` : ""}`, `Bar chart of the table below: ${rows.length} groups.`);
  const box = { x: 70, y: 60, w: WIDTH - 100, h: HEIGHT - 165 };
  const y = yAxis(svg, box, Math.max(0, ...values), answer.measure);
  const group = box.w / rows.length;
  const bar = Math.max(4, Math.min(48, (group * 0.8) / columns.length));
  rows.forEach((row, i) => {
    const start = box.x + i * group + (group - bar * columns.length) / 2;
    columns.forEach((column, j) => {
      const x = start + j * bar;
      const cell = row.cells[column];
      const v = numberOf(cell);
      if (cell === "suppressed") suppressedMark(svg, x + 1, y(0), bar - 2);
      else if (v === null) label(svg, x + bar / 2, y(0) - 6, "-", { "text-anchor": "middle" });
      else {
        svg.appendChild(el("rect", { x: x + 1, y: y(v), width: bar - 2, height: y(0) - y(v), fill: COLOURS[j % COLOURS.length] }));
        if (bar >= 22) label(svg, x + bar / 2, y(v) - 4, formatted(v, answer.measure), { "text-anchor": "middle", "font-size": 11 });
      }
    });
    wrapped(svg, box.x + i * group + group / 2, y(0) + 18, row.label, Math.max(4, Math.floor(group / 7)));
  });
  if (columns.length > 1) legend(svg, columns, box.x, HEIGHT - 22);
  return { svg, caption: `Each group is a ${answer.row_heading || "row"}; ${columns.length > 1 ? `each bar a ${answer.column_heading}` : "bars show the total"}.` };
}

/** Least-squares line through (x, y) points: [intercept, slope]. */
function fit(points) {
  const n = points.length;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  const sxx = points.reduce((s, [x]) => s + (x - mx) ** 2, 0);
  const slope = sxx ? points.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0) / sxx : 0;
  return [my - slope * mx, slope];
}

/** Short period label: "2025-04-01 to 2025-06-30" as "to Jun 2025". */
function periodLabel(text) {
  const end = text.split(" to ")[1];
  if (!end) return text;
  const [year, month] = end.split("-");
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  return `${months[Number(month) - 1]} ${year}`;
}

/**
 * The indicator over periods, with its baseline: the trend of the periods
 * before the latest, carried forward two periods (Results-Based
 * Accountability's "history and forecast"). The curve has turned when the
 * latest period lies on the better side of the baseline.
 */
function trend(answer, better) {
  const onRows = answer.row_heading === "period";
  const periods = onRows ? answer.rows.filter((r) => r.label !== "total").map((r) => r.label) : answer.columns.filter((c) => c !== "total");
  const cell = (i) => (onRows ? answer.rows[i].cells.total : answer.rows.find((r) => r.label === "total").cells[periods[i]]);
  const cells = periods.map((_, i) => cell(i));
  const values = cells.map(numberOf);
  const points = values.map((v, i) => [i, v]).filter(([, v]) => v !== null);
  const svg = frame(`${answer.measure} by period, with the baseline`, "Line chart: the indicator in each period, and the baseline forecast from the earlier periods.");
  const box = { x: 70, y: 60, w: WIDTH - 110, h: HEIGHT - 165 };
  const ahead = 2;
  const history = points.slice(0, -1);
  const line = history.length >= 2 ? fit(history) : null;
  const forecastAt = (x) => (line ? Math.max(0, line[0] + line[1] * x) : null);
  const forecastEnd = periods.length - 1 + ahead;
  const top = Math.max(0, ...points.map(([, v]) => v), ...(line ? [forecastAt(0), forecastAt(forecastEnd)] : []));
  const y = yAxis(svg, box, top, answer.measure);
  const x = (i) => box.x + (i + 0.5) * (box.w / (periods.length + ahead));
  periods.forEach((p, i) => wrapped(svg, x(i), y(0) + 18, periodLabel(p), 6, { "font-size": 11 }));
  if (line) {
    svg.appendChild(el("line", {
      x1: x(0), y1: y(forecastAt(0)), x2: x(forecastEnd), y2: y(forecastAt(forecastEnd)),
      stroke: "#505a5f", "stroke-width": 2, "stroke-dasharray": "7 5",
    }));
    label(svg, x(forecastEnd), y(forecastAt(forecastEnd)) - 8, "baseline", { "text-anchor": "end", "font-size": 12, fill: "#505a5f" });
  }
  const path = points.map(([i, v], k) => `${k ? "L" : "M"}${x(i)},${y(v)}`).join(" ");
  if (points.length) svg.appendChild(el("path", { d: path, fill: "none", stroke: COLOURS[0], "stroke-width": 3 }));
  values.forEach((v, i) => {
    if (v !== null) {
      svg.appendChild(el("circle", { cx: x(i), cy: y(v), r: 5, fill: COLOURS[0] }));
      label(svg, x(i), y(v) - 10, formatted(v, answer.measure), { "text-anchor": "middle", "font-size": 11 });
    } else {
      label(svg, x(i), y(0) - 8, cells[i] === "suppressed" ? "*" : "-", { "text-anchor": "middle", "font-weight": 700 });
    }
  });
  legend(svg, ["the indicator", "baseline: trend of the earlier periods (dashed)"], box.x, HEIGHT - 22);
  return { svg, caption: verdict(values, forecastAt, better, answer.measure) };
}

/** Has the curve turned? In words, with the caution noise calls for. */
function verdict(values, forecastAt, better, measure) {
  const last = values.length - 1;
  if (last < 0 || values[last] === null) return "The latest period is suppressed or empty: there is no verdict on the curve.";
  const forecast = forecastAt(last);
  if (forecast === null) return "Too few earlier periods with figures to draw a baseline (at least two are needed).";
  const actual = values[last];
  const side = actual < forecast ? "below" : actual > forecast ? "above" : "on";
  let judged = "";
  if (better && side !== "on") {
    const good = (better === "lower") === (side === "below");
    judged = good ? " The curve is turning the right way." : " The curve has not turned: it is on the worse side of the baseline.";
  } else if (!better) {
    judged = " This measure has no better direction, so the console does not judge it.";
  }
  return `Latest period: ${formatted(actual, measure)}, ${side} the baseline forecast of ${formatted(forecast, measure)}.${judged} Figures carry disclosure-control noise, so a small gap may be noise alone.`;
}

/** UpSet: a bar per combination of agencies, the combination as dots. */
function upset(answer, organisations) {
  const onRows = answer.row_heading === "agencies known to";
  const combos = (onRows ? answer.rows.filter((r) => r.label !== "total").map((r) => r.label) : answer.columns.filter((c) => c !== "total"));
  const total = answer.rows.find((r) => r.label === "total");
  const cell = (combo) => (onRows ? answer.rows.find((r) => r.label === combo).cells.total : total.cells[combo]);
  const items = combos.map((combo) => ({ combo, cell: cell(combo), value: numberOf(cell(combo)) }));
  items.sort((a, b) => (b.value ?? -1) - (a.value ?? -1));
  const members = (combo) => (combo === "other" || combo === "unknown" ? [] : combo.split(" + "));
  const codes = [...new Set(items.flatMap((i) => members(i.combo)))].sort();
  const name = (code) => organisations.get(code) ?? code;
  const short = (code) => {
    const full = `${name(code)}`;
    return full.length > 30 ? `${full.slice(0, 29)}… (${code})` : full;
  };
  const svg = frame("Children by the combination of agencies that know them", "UpSet chart: a bar per combination of agencies; the dots below each bar mark the agencies in it.");
  const matrixH = codes.length * 26 + 10;
  const left = 270;
  const box = { x: left, y: 60, w: WIDTH - left - 20, h: HEIGHT - 90 - matrixH };
  const y = yAxis(svg, box, Math.max(0, ...items.map((i) => i.value ?? 0)), answer.measure);
  const step = box.w / Math.max(1, items.length);
  const bar = Math.min(40, step * 0.7);
  const rowY = (k) => box.y + box.h + 26 + k * 26;
  codes.forEach((code, k) => label(svg, left - 14, rowY(k) + 4, short(code), { "text-anchor": "end", "font-size": 12 }));
  items.forEach((item, i) => {
    const cx = box.x + i * step + step / 2;
    if (item.cell === "suppressed") suppressedMark(svg, cx - bar / 2, y(0), bar);
    else if (item.value !== null) {
      svg.appendChild(el("rect", { x: cx - bar / 2, y: y(item.value), width: bar, height: y(0) - y(item.value), fill: COLOURS[0] }));
      label(svg, cx, y(item.value) - 4, formatted(item.value, answer.measure), { "text-anchor": "middle", "font-size": 11 });
    }
    const inside = members(item.combo);
    if (!inside.length) {
      label(svg, cx, rowY(0) + 4, item.combo, { "text-anchor": "middle", "font-size": 11 });
      return;
    }
    const ks = inside.map((c) => codes.indexOf(c));
    if (ks.length > 1) {
      svg.appendChild(el("line", { x1: cx, x2: cx, y1: rowY(Math.min(...ks)), y2: rowY(Math.max(...ks)), stroke: INK, "stroke-width": 3 }));
    }
    codes.forEach((code, k) => {
      svg.appendChild(el("circle", { cx, cy: rowY(k), r: 7, fill: inside.includes(code) ? INK : "#d8d8d8" }));
    });
  });
  const biggest = items.find((i) => i.value !== null && members(i.combo).length > 1);
  const caption = biggest
    ? `The largest group known to more than one agency: ${members(biggest.combo).map(name).join(" and ")} (${formatted(biggest.value, answer.measure)}).`
    : "No combination of several agencies has a figure to show.";
  return { svg, caption: `${caption} Bars are sorted largest first; "other" gathers combinations too small to show on their own.` };
}

/** Age pyramid: males to the left, females to the right, youngest at the bottom. */
function pyramid(answer) {
  const sexOnColumns = answer.column_heading === "sex";
  const bands = (sexOnColumns ? answer.rows.map((r) => r.label) : answer.columns).filter((b) => b !== "total" && b !== "unknown");
  const cell = (band, sex) => (sexOnColumns ? answer.rows.find((r) => r.label === band).cells[sex] : answer.rows.find((r) => r.label === sex)?.cells[band]);
  const svg = frame(`${answer.measure} by age and sex`, "Age pyramid: bars to the left are males, to the right females; the youngest band is at the bottom.");
  const box = { x: 40, y: 60, w: WIDTH - 80, h: HEIGHT - 120 };
  const values = bands.flatMap((b) => ["male", "female"].map((s) => numberOf(cell(b, s)))).filter((v) => v !== null);
  const top = niceMax(Math.max(1, ...values));
  const mid = box.x + box.w / 2;
  const half = box.w / 2 - 50;
  const h = box.h / Math.max(1, bands.length);
  const scale = (v) => (v / top) * half;
  bands.forEach((band, i) => {
    const yTop = box.y + box.h - (i + 1) * h + 3;
    label(svg, mid, yTop + h / 2 + 1, band, { "text-anchor": "middle", "font-size": 12 });
    [["male", -1, COLOURS[0]], ["female", 1, COLOURS[1]]].forEach(([sex, side, colour]) => {
      const c = cell(band, sex);
      const v = numberOf(c);
      const start = mid + side * 40;
      if (c === "suppressed") {
        label(svg, start + side * 12, yTop + h / 2 + 1, "*", { "text-anchor": "middle", "font-weight": 700 });
      } else if (v !== null) {
        const w = scale(v);
        svg.appendChild(el("rect", { x: side < 0 ? start - w : start, y: yTop, width: w, height: h - 6, fill: colour }));
        label(svg, side < 0 ? start - w - 4 : start + w + 4, yTop + h / 2 + 1, formatted(v, answer.measure), {
          "text-anchor": side < 0 ? "end" : "start", "font-size": 11,
        });
      }
    });
  });
  legend(svg, ["male", "female"], box.x, HEIGHT - 30);
  return { svg, caption: "Children whose sex is recorded otherwise (indeterminate, unknown) or whose age is unknown are in the table, not the pyramid." };
}

/** Draws `kind` for an answer; context: { better, organisations: Map }. */
export function drawChart(kind, answer, context) {
  switch (kind) {
    case "trend": return trend(answer, context.better);
    case "upset": return upset(answer, context.organisations);
    case "pyramid": return pyramid(answer);
    default: return bars(answer);
  }
}
