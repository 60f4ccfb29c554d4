// The plan as a graph: instructions as nodes; control flow as edges (next, a jump's true / false
// branch or target); data flow as dashed edges (which step's variables feed which); the path the
// run took and how many times each instruction ran. Laid out by dagre (vendored).
import dagre from "../vendor/dagre.esm.js";
import { fill, h, svg } from "../dom.js";

const REFERENCE = /\$\{([A-Za-z_][A-Za-z0-9_]*)/g;

function reads(parameters) {
  const found = new Set();
  const walk = (value) => {
    if (typeof value === "string") for (const m of value.matchAll(REFERENCE)) found.add(m[1]);
    else if (Array.isArray(value)) value.forEach(walk);
    else if (value && typeof value === "object") Object.values(value).forEach(walk);
  };
  walk(parameters);
  return found;
}

function writes(instruction) {
  const p = instruction.parameters || {};
  if (instruction.type === "assign") return Object.keys(p);
  if (instruction.type === "calling") return [].concat(p.output_vars || []);
  return [];
}

function label(instruction) {
  const p = instruction.parameters || {};
  if (instruction.type === "calling") return `${instruction.seq_no} calling ${p.tool_name}`;
  if (instruction.type === "assign") return `${instruction.seq_no} assign ${Object.keys(p).join(", ")}`.slice(0, 40);
  if (instruction.type === "jmp") return `${instruction.seq_no} jmp${p.condition_prompt ? " if …" : ` → ${p.target_seq}`}`;
  return `${instruction.seq_no} ${instruction.type}`;
}

export function renderGraph(container, plan, steps, { onSelect, selected } = {}) {
  if (!Array.isArray(plan) || !plan.length) {
    fill(container, h("p", { class: "muted" }, "No plan yet."));
    return;
  }
  const order = [...plan].filter((i) => i && typeof i.seq_no === "number").sort((a, b) => a.seq_no - b.seq_no);
  const position = new Map(order.map((ins, i) => [ins.seq_no, i]));
  const executed = steps.filter((s) => s && s.phase !== "started");
  const runs = new Map();
  const latest = new Map();
  for (const step of executed) {
    runs.set(step.seq_no, (runs.get(step.seq_no) || 0) + 1);
    latest.set(step.seq_no, step.index);
  }
  const taken = new Set();
  for (let k = 1; k < executed.length; k++) taken.add(`${executed[k - 1].seq_no}>${executed[k].seq_no}`);

  const g = new dagre.graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir: "TB", nodesep: 28, ranksep: 36, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const ins of order) g.setNode(String(ins.seq_no), { width: 190, height: 36, ins });
  const edges = [];
  const edge = (from, to, kind, text) => {
    if (!position.has(to)) return;
    const name = `${kind}:${from}>${to}:${text || ""}`;
    edges.push({ from, to, kind, text, name });
    g.setEdge(String(from), String(to), { label: text || "", width: text ? 60 : 0, height: text ? 14 : 0, labelpos: "c" }, name);
  };
  order.forEach((ins, i) => {
    const next = order[i + 1] ? order[i + 1].seq_no : null;
    const p = ins.parameters || {};
    if (ins.type === "jmp" && p.target_seq != null && !p.condition_prompt) edge(ins.seq_no, p.target_seq, "jump", "");
    else if (ins.type === "jmp") {
      edge(ins.seq_no, p.jump_if_true, "true", "true");
      if (p.jump_if_false != null) edge(ins.seq_no, p.jump_if_false, "false", "false");
      else if (next != null) edge(ins.seq_no, next, "false", "false");
    } else if (next != null && !writes(ins).includes("final_answer")) edge(ins.seq_no, next, "next", "");
  });
  // Data flow: each variable a step reads, from the closest step before it that writes it.
  order.forEach((ins, i) => {
    for (const name of reads(ins.parameters)) {
      for (let j = i - 1; j >= 0; j--) {
        if (writes(order[j]).includes(name)) {
          edge(order[j].seq_no, ins.seq_no, "data", name);
          break;
        }
      }
    }
  });
  dagre.layout(g);
  const size = g.graph();
  const canvas = svg("svg", { viewBox: `0 0 ${Math.ceil(size.width)} ${Math.ceil(size.height)}`, width: Math.ceil(size.width),
                               height: Math.ceil(size.height), role: "group", "aria-label": "the plan as a graph" });
  canvas.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse",
                    orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
  for (const e of edges) {
    const laid = g.edge(String(e.from), String(e.to), e.name);
    if (!laid || !laid.points) continue;
    const back = position.get(e.to) <= position.get(e.from);
    const d = laid.points.map((pt, k) => `${k ? "L" : "M"} ${pt.x.toFixed(1)} ${pt.y.toFixed(1)}`).join(" ");
    const was = e.kind !== "data" && taken.has(`${e.from}>${e.to}`);
    canvas.append(svg("path", { d, class: `edge ${e.kind}${back ? " back" : ""}${was ? " taken" : ""}`, "marker-end": "url(#arrow)",
                                dataset: { from: String(e.from), to: String(e.to), kind: e.kind } }));
    if (e.text && laid.x != null) canvas.append(svg("text", { x: laid.x, y: laid.y, class: `edge-label ${e.kind}` }, e.text));
  }
  for (const ins of order) {
    const node = g.node(String(ins.seq_no));
    const count = runs.get(ins.seq_no) || 0;
    const index = latest.get(ins.seq_no);
    const group = svg("g", {
      class: `node ${ins.type}${count ? " executed" : ""}${index != null && index === selected ? " selected" : ""}`,
      dataset: { seq: String(ins.seq_no), runs: String(count) }, transform: `translate(${node.x - node.width / 2},${node.y - node.height / 2})`,
      tabindex: count ? 0 : null, role: count ? "button" : null, "aria-label": `${label(ins)}${count ? `, ran ${count} time${count > 1 ? "s" : ""}` : ", not run"}`,
      onclick: () => index != null && onSelect && onSelect(index),
      onkeydown: (event) => { if ((event.key === "Enter" || event.key === " ") && index != null && onSelect) { event.preventDefault(); onSelect(index); } },
    },
      svg("rect", { width: node.width, height: node.height, rx: 6 }),
      svg("text", { x: 10, y: 22 }, label(ins)),
      count > 1 ? svg("text", { x: node.width - 8, y: 22, class: "count", "text-anchor": "end" }, `×${count}`) : null);
    canvas.append(group);
  }
  fill(container, canvas, h("p", { class: "legend muted" },
    h("span", { class: "key taken" }, "path taken"), " ", h("span", { class: "key data" }, "data flow"), " ",
    h("span", { class: "key back" }, "jump back (a loop)"), " · ×N: times an instruction ran"));
}
