// The builder's choices as a query document (the same YAML `joinery query
// run FILE` takes; its language is docs/query-language.md), and the
// breakdowns the builder offers.

/** The breakdowns, as the query language names them, and in words. */
export const BREAKDOWNS = [
  ["none", "nothing (one line)"],
  ["age_bands", "age band"],
  ["segment", "life-course segment"],
  ["sex", "sex"],
  ["agencies", "which agencies know the child"],
  ["agency_overlap", "how many agencies know the child"],
  ["stratum", "risk tier"],
  ["period", "period"],
  ["attribute", "a recorded attribute (as each agency codes it)"],
];

/**
 * The document for the builder's choices:
 * { who: "indicator"|"cohort", indicator, agencies: [code], event, within,
 *   ageFrom, ageTo, rows, columns, bands: [int], attribute, stratification,
 *   every, count, reference }
 */
export function documentOf(c) {
  const doc = {};
  if (c.reference) doc.reference_date = c.reference;
  if (c.who === "indicator" && c.indicator) {
    doc.indicator = c.indicator;
  } else {
    const all = c.agencies.map((code) => ({ known_to: { organisation: code } }));
    if (c.event) {
      const has = { event: c.event };
      if (c.within) has.within_months = c.within;
      all.push({ has });
    }
    if (c.ageFrom !== null || c.ageTo !== null) {
      const age = {};
      if (c.ageFrom !== null) age.from = c.ageFrom;
      if (c.ageTo !== null) age.to = c.ageTo;
      all.push({ age });
    }
    if (all.length === 1) doc.cohort = all[0];
    else if (all.length > 1) doc.cohort = { all };
  }
  const breakdown = (b) => {
    if (b === "age_bands") return { age_bands: c.bands };
    if (b === "attribute") return { attribute: c.attribute };
    return b;
  };
  if (c.rows !== "none") doc.rows = breakdown(c.rows);
  if (c.columns !== "none") doc.columns = breakdown(c.columns);
  if (c.rows === "stratum" || c.columns === "stratum") doc.stratification = c.stratification;
  if (c.rows === "period" || c.columns === "period") doc.periods = { every: c.every, count: c.count };
  return doc;
}

/** Age band starts typed as "0, 5, 11": whole years, rising, or null. */
export function parseBands(text) {
  const parts = text.split(",").map((p) => p.trim()).filter((p) => p !== "");
  const bands = parts.map((p) => (/^\d{1,3}$/.test(p) ? Number(p) : NaN));
  if (bands.length === 0 || bands.some((b) => Number.isNaN(b))) return null;
  for (let i = 1; i < bands.length; i += 1) if (bands[i] <= bands[i - 1]) return null;
  return bands;
}

const RESERVED = /^(true|false|null|yes|no|on|off|y|n|~)$/i;

function scalar(value) {
  if (typeof value === "number") return String(value);
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) return value;
  if (/^[A-Za-z][A-Za-z0-9_.@-]*$/.test(value) && !RESERVED.test(value)) return value;
  return JSON.stringify(value);
}

function flow(value) {
  if (Array.isArray(value)) return `[${value.map(flow).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{ ${Object.entries(value).map(([k, v]) => `${k}: ${flow(v)}`).join(", ")} }`;
  }
  return scalar(value);
}

/** A document as YAML: keys in block style, conditions in flow style. */
export function yamlOf(doc) {
  const lines = [];
  for (const [key, value] of Object.entries(doc)) {
    if (key === "cohort" && Array.isArray(value.all)) {
      lines.push("cohort:", "  all:");
      for (const condition of value.all) lines.push(`    - ${flow(condition)}`);
    } else {
      lines.push(`${key}: ${flow(value)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
