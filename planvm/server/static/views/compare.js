// A fork beside the run it came from: the plan's instructions kept, changed, added or removed; the
// variables where the two went apart and at their ends; both answers.
import { api } from "../api.js";
import { asText, fill, h, link } from "../dom.js";
import { renderMarkdown } from "../markdown.js";
import { variablesDiff } from "./diff.js";


function sortedKeys(value) {
  if (Array.isArray(value)) return value.map(sortedKeys);
  if (value && typeof value === "object") return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortedKeys(value[k])]));
  return value;
}

function summary(ins) {
  const p = ins.parameters || {};
  if (ins.type === "calling") return `calling ${p.tool_name} → ${[].concat(p.output_vars || []).join(", ")}`;
  if (ins.type === "assign") return `assign ${Object.keys(p).join(", ")}`;
  if (ins.type === "jmp") return p.condition_prompt ? `jmp if “${p.condition_prompt}”` : `jmp → ${p.target_seq}`;
  return ins.type;
}

export async function renderCompare(container, run, otherId) {
  const other = await api(`/v1/runs/${encodeURIComponent(otherId)}?steps=true`);
  const mine = await api(`/v1/runs/${encodeURIComponent(run.id)}?steps=true`);
  const [left, right] = mine.parent_id === other.id || other.parent_id !== mine.id ? [other, mine] : [mine, other];
  const bySeq = (plan) => new Map((plan || []).map((ins) => [ins.seq_no, JSON.stringify(sortedKeys(ins))]));
  const a = bySeq(left.plan), b = bySeq(right.plan);
  const seqs = [...new Set([...a.keys(), ...b.keys()])].sort((x, y) => x - y);
  const rows = seqs.map((seq) => {
    const change = !a.has(seq) ? "added" : !b.has(seq) ? "removed" : a.get(seq) === b.get(seq) ? "kept" : "changed";
    return h("tr", { class: `plan-row ${change}`, dataset: { seq: String(seq), change } },
      h("th", { scope: "row" }, String(seq)), h("td", {}, change),
      ...[a, b].map((plan) => h("td", {}, !plan.has(seq) ? "" : change === "kept" ? h("code", {}, summary(JSON.parse(plan.get(seq))))
        : h("pre", {}, asText(JSON.parse(plan.get(seq)))))));
  });
  // Where they went apart: the first trace position whose step differs.
  const trace = (r) => r.trace || [];
  let split = 0;
  while (split < trace(left).length && split < trace(right).length &&
         JSON.stringify([trace(left)[split].seq_no, trace(left)[split].outputs]) === JSON.stringify([trace(right)[split].seq_no, trace(right)[split].outputs])) split++;
  const at = async (r) => (split < trace(r).length ? (await api(`/v1/runs/${r.id}/variables?step=${split}`)).variables : r.variables);
  const [leftAt, rightAt] = await Promise.all([at(left), at(right)]);
  const answer = (r) => h("div", { class: "answer" }, r.final_answer != null ? renderMarkdown(asText(r.final_answer)) : h("p", { class: "muted" }, `(${r.status}, no answer)`));
  fill(container, h("section", { "data-testid": "compare", class: "compare", "aria-label": "compare two runs" },
    h("h2", {}, "Compare ", link(`/runs/${left.id}`, left.id.slice(0, 8)), " with ", link(`/runs/${right.id}`, right.id.slice(0, 8))),
    h("p", { class: "muted" }, right.parent_id === left.id ? `${right.id.slice(0, 8)} is a fork of ${left.id.slice(0, 8)} from seq_no ${right.fork_seq}.` : ""),
    h("h3", {}, "Plan"),
    h("table", { class: "plan-diff" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "seq_no"), h("th", { scope: "col" }, "change"),
        h("th", { scope: "col" }, left.id.slice(0, 8)), h("th", { scope: "col" }, right.id.slice(0, 8)))),
      h("tbody", {}, rows)),
    h("h3", {}, `Variables where they went apart (trace position ${split})`), variablesDiff(leftAt, rightAt),
    h("h3", {}, "Variables at the end"), variablesDiff(left.variables, right.variables),
    h("h3", {}, "Answers"),
    h("div", { id: "compare-answers", class: "columns" },
      h("div", {}, h("h4", {}, left.id.slice(0, 8)), answer(left)),
      h("div", {}, h("h4", {}, right.id.slice(0, 8)), answer(right)))));
}
