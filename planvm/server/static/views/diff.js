// Differences as colours, not JSON: variables added, removed or changed between two states.
import { asText, h } from "../dom.js";

export function variablesDiff(before, after) {
  const rows = [];
  const names = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])].sort();
  for (const name of names) {
    const had = before && Object.prototype.hasOwnProperty.call(before, name);
    const has = after && Object.prototype.hasOwnProperty.call(after, name);
    if (had && has && JSON.stringify(before[name]) === JSON.stringify(after[name])) continue;
    const kind = !had ? "added" : !has ? "removed" : "changed";
    rows.push(h("li", { class: `diff ${kind}`, dataset: { var: name, change: kind } },
      h("span", { class: "sign", "aria-hidden": "true" }, kind === "added" ? "+" : kind === "removed" ? "−" : "~"),
      h("code", {}, name),
      kind !== "added" ? h("pre", { class: "old", "aria-label": `${name} before` }, asText(before[name])) : null,
      kind !== "removed" ? h("pre", { class: "new", "aria-label": `${name} after` }, asText(after[name])) : null));
  }
  return rows.length ? h("ul", { class: "diffs" }, rows) : h("p", { class: "muted" }, "No variable changed.");
}
