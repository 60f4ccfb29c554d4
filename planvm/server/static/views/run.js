// One run: what it was asked and answered, its branches, its steps (a list, a timeline, the plan
// as a graph), one step's inputs, outputs and variables, and what can be done with it: fork,
// approve, cancel, judge, replay, compare with its parent.
import { api, post } from "../api.js";
import { $, asText, duration, fill, h, link, notify, plural, when } from "../dom.js";
import { renderMarkdown } from "../markdown.js";
import { follow } from "../stream.js";
import { variablesDiff } from "./diff.js";
import { renderGraph } from "./graph.js";
import { renderTimeline } from "./timeline.js";

const ACTIVE = new Set(["queued", "planning", "running", "waiting", "interrupted"]);
const state = {
  runId: null, run: null, version: 0, steps: [], selected: null, stream: null, streamed: "", tab: "steps", navigate: null, info: null,
};

export function currentRun() { return state.runId; }

export function closeRun() {
  if (state.stream) state.stream.stop();
  Object.assign(state, { runId: null, run: null, steps: [], selected: null, stream: null, streamed: "" });
}

function skeleton() {
  return h("section", { id: "run", "aria-label": "run" },
    h("div", { class: "run-head" },
      h("h2", { id: "run-goal" }),
      h("span", { id: "run-status", class: "badge", role: "status" }),
      h("span", { id: "run-meta", class: "muted" }),
      h("span", { class: "actions" },
        h("button", { id: "cancel-button", type: "button", hidden: true }, "Cancel"),
        h("button", { id: "judge-button", type: "button", hidden: true }, "Judge"),
        h("button", { id: "replay-button", type: "button" }, "Replay"),
        h("a", { id: "compare-link", hidden: true, dataset: { link: "" } }, "Compare with its parent"))),
    h("div", { id: "error", class: "error", role: "alert", hidden: true }),
    h("div", { id: "pending", class: "pending", hidden: true },
      h("p", { id: "pending-text" }),
      h("label", { for: "pending-params" }, "Parameters (JSON)"),
      h("textarea", { id: "pending-params", rows: 4 }),
      h("button", { id: "approve-button", type: "button" }, "Approve"), " ",
      h("button", { id: "reject-button", type: "button", class: "danger" }, "Reject")),
    h("nav", { id: "tree", "aria-label": "branches" }),
    h("div", { class: "tabs", role: "tablist", "aria-label": "views of the run" },
      ...[["steps", "Steps"], ["timeline", "Timeline"], ["graph", "Plan graph"]].map(([id, text]) =>
        h("button", { id: `tab-${id}`, type: "button", role: "tab", "aria-controls": `panel-${id}`, dataset: { tab: id } }, text))),
    h("div", { class: "columns" },
      h("div", { class: "panels" },
        h("div", { id: "panel-steps", role: "tabpanel", "aria-labelledby": "tab-steps" }, h("ol", { id: "steps" })),
        h("div", { id: "panel-timeline", role: "tabpanel", "aria-labelledby": "tab-timeline", hidden: true },
          h("div", { "data-testid": "timeline", class: "timeline", id: "timeline" })),
        h("div", { id: "panel-graph", role: "tabpanel", "aria-labelledby": "tab-graph", hidden: true },
          h("div", { "data-testid": "plan-graph", class: "plan-graph", id: "plan-graph" }))),
      h("div", { id: "detail", "aria-label": "the selected step" },
        h("h3", {}, "Step"),
        h("p", { class: "muted", id: "detail-empty" }, "Select a step (in the list, the timeline or the graph)."),
        h("div", { id: "detail-body", hidden: true },
          h("p", { id: "detail-meta", class: "muted" }),
          h("h4", {}, "Inputs"), h("pre", { id: "detail-inputs" }),
          h("h4", {}, "Outputs"), h("pre", { id: "detail-outputs" }),
          h("h4", {}, "Changed from the step before"), h("div", { id: "detail-diff" }),
          h("h4", {}, "Variables after this step"), h("pre", { id: "detail-variables" }),
          h("form", { id: "fork" },
            h("h4", {}, "Fork from this step"),
            h("label", { for: "fork-suggestion" }, "A suggestion for the planner"),
            h("textarea", { id: "fork-suggestion", rows: 2 }),
            h("label", { for: "fork-plan" }, "…or the edited plan (JSON)"),
            h("textarea", { id: "fork-plan", rows: 8 }),
            h("button", { type: "submit" }, "Fork"))))),
    h("h3", {}, "Answer"),
    h("p", { id: "answer-notice", class: "note", hidden: true }),
    h("div", { id: "answer", class: "answer" }),
    h("details", {}, h("summary", {}, "Plan and the planner's reasoning"), h("pre", { id: "reasoning" }), h("pre", { id: "plan" })),
    h("pre", { id: "replay-report", hidden: true }));
}

function stepLabel(step) {
  const tool = step.tool ? ` ${step.tool}` : "";
  if (step.phase === "started") return `seq_no ${step.seq_no} ${step.type}${tool} …`;
  const tokens = (step.prompt_tokens || 0) + (step.completion_tokens || 0);
  return `seq_no ${step.seq_no} ${step.type}${tool} · ${duration(step.duration_s)}` + (tokens ? ` · ${tokens} tokens` : "") +
    (step.error ? " · failed" : "");
}

function tokensText(tokens) {
  const roles = Object.entries(tokens || {}).filter(([role, t]) => role !== "total" && t.prompt_tokens + t.completion_tokens > 0);
  return roles.map(([role, t]) => `${role} ${t.prompt_tokens} + ${t.completion_tokens} tokens`).join(" · ");
}

function setSelectedParam(index) {
  const url = new URL(location.href);
  if (index == null) url.searchParams.delete("step"); else url.searchParams.set("step", String(index));
  state.navigate(url.pathname + url.search);
}

let drawn = null;  // what the timeline or graph shows now: drawn again only when that changes

function renderViews() {
  const running = state.run && ACTIVE.has(state.run.status);
  const panel = state.tab === "timeline" ? $("timeline") : state.tab === "graph" ? $("plan-graph") : null;
  if (!panel) return;
  // (the run's version, not its plan: a plan of thousands of instructions is not serialised per event)
  const key = JSON.stringify([state.runId, state.tab, state.selected, state.version, state.steps.length,
    state.steps.filter((s) => s.phase === "started").length, running ? Math.floor(Date.now() / 500) : 0]);
  if (key === drawn && panel.childElementCount) return;
  drawn = key;
  // Keep the keyboard where it was: the element for the same instruction or step, drawn anew.
  const focused = panel.contains(document.activeElement) ? document.activeElement.dataset.seq : null;
  if (state.tab === "timeline") renderTimeline(panel, state.steps, { running, selected: state.selected, onSelect: setSelectedParam });
  else renderGraph(panel, state.run && state.run.plan, state.steps, { selected: state.selected, onSelect: setSelectedParam });
  if (focused != null) {
    const again = panel.querySelector(`[data-seq="${focused}"][tabindex], button[data-seq="${focused}"]`);
    if (again) again.focus();
  }
}

function showTab(tab) {
  state.tab = ["steps", "timeline", "graph"].includes(tab) ? tab : "steps";
  for (const name of ["steps", "timeline", "graph"]) {
    $(`panel-${name}`).hidden = name !== state.tab;
    $(`tab-${name}`).setAttribute("aria-selected", String(name === state.tab));
  }
  renderViews();
}

function onStep(step) {
  const list = $("steps");
  if (step.phase === "started") {
    state.steps.push({ ...step, seen_at: Date.now() / 1000 });
    list.append(h("li", { class: "started", dataset: { started: String(step.seq_no) } }, stepLabel(step)));
    renderViews();
    return;
  }
  const waiting = state.steps.findIndex((s) => s && s.phase === "started" && s.seq_no === step.seq_no);
  if (waiting >= 0) state.steps.splice(waiting, 1);
  state.steps = state.steps.filter((s) => !(s && s.phase !== "started" && s.index === step.index));
  state.steps.push(step);
  state.steps.sort((a, b) => (a.phase === "started") - (b.phase === "started") || (a.index ?? 0) - (b.index ?? 0));
  const placeholder = list.querySelector(`li[data-started="${step.seq_no}"]`);
  const li = h("li", { class: `${step.error ? "failed" : ""}${step.index === state.selected ? " selected" : ""}`, dataset: { index: String(step.index) } },
    h("button", { type: "button", class: "link", onclick: () => setSelectedParam(step.index) }, stepLabel(step)));
  if (placeholder) placeholder.replaceWith(li);
  else if (!list.querySelector(`li[data-index="${step.index}"]`)) list.append(li);
  renderViews();
  if (state.selected === step.index) selectStep(step.index);
}

async function refreshRun() {
  const run = await api(`/v1/runs/${encodeURIComponent(state.runId)}`);
  if (run.id !== state.runId) return;
  state.run = run;
  state.version += 1;  // what the run shows may have changed (its status, its plan once planned)
  fill($("run-goal"), run.goal || "(a plan run without a goal)");
  const badge = $("run-status");
  badge.textContent = run.status;
  badge.className = "badge " + run.status;
  const span = ACTIVE.has(run.status) ? null : run.updated_at - run.created_at;
  fill($("run-meta"), [run.status === "queued" ? "queued" : `started ${when(run.created_at)}`, span != null ? duration(span) : "",
    plural(run.steps, "step"), tokensText(run.tokens)].filter(Boolean).join(" · "));
  $("error").hidden = !run.error;
  fill($("error"), run.error || "");
  fill($("reasoning"), run.planning.reasoning || "(no reasoning recorded)");
  fill($("plan"), asText(run.plan));
  if (run.final_answer != null) fill($("answer"), renderMarkdown(asText(run.final_answer)));
  else if (!state.streamed) fill($("answer"), h("p", { class: "muted" }, ACTIVE.has(run.status) ? "(not answered yet)" : "(no answer)"));
  const notice = $("answer-notice");
  notice.hidden = run.model_used !== false;
  fill(notice, run.model_used === false ? (run.answer_found === false
    ? "Answered without a model: the knowledge base holds no answer to this question."
    : "Answered without a model: these sentences were extracted from the knowledge base (configure an LLM for written answers).") : "");
  const pending = run.status === "waiting" ? run.pending : null;
  $("pending").hidden = !pending;
  if (pending) {
    fill($("pending-text"), `seq_no ${pending.seq_no} calls the tool '${pending.tool}' and waits for approval.`);
    $("pending-params").value = JSON.stringify(pending.tool_params, null, 2);
  }
  $("cancel-button").hidden = !ACTIVE.has(run.status);
  $("judge-button").hidden = !(state.info && state.info.models.judge && run.final_answer != null);
  const compare = $("compare-link");
  compare.hidden = !run.parent_id;
  if (run.parent_id) compare.setAttribute("href", `/runs/${run.id}?compare=${run.parent_id}`);
  renderTree(run);
  renderViews();
}

function withRunId(element, runId) {
  element.dataset.runId = runId;
  return element;
}

function renderTree(run) {
  const tree = $("tree");
  const items = [];
  run.lineage.forEach((id, i) => {
    const text = (i ? "→ " : "") + id.slice(0, 8);
    items.push(id === run.id ? h("a", { class: "current", "aria-current": "page", dataset: { runId: id } },
      text + (run.judgement ? ` (score ${run.judgement.score}${run.judgement.accept ? ", accepted" : ""}${run.best_of ? " ★ best" : ""})` : ""))
      : withRunId(link(`/runs/${id}`, text), id));
  });
  for (const child of run.children) {
    const grade = (child.score != null ? `, score ${child.score}` : "") + (child.best_of ? " ★ best" : "");
    const a = withRunId(link(`/runs/${child.id}`, `↳ ${child.id.slice(0, 8)} (from seq_no ${child.fork_seq}, ${child.status}${grade})`), child.id);
    items.push(a, " ", link(`/runs/${child.id}?compare=${run.id}`, "compare"));
  }
  fill(tree, ...items.flatMap((item) => [item, " "]));
}

async function selectStep(index) {
  state.selected = index;
  for (const li of $("steps").children) li.classList.toggle("selected", li.dataset.index === String(index));
  renderViews();
  const step = state.steps.find((s) => s && s.phase !== "started" && s.index === index);
  if (!step) return;
  const [after, before] = await Promise.all([
    api(`/v1/runs/${state.runId}/variables?step=${index}`),
    api(`/v1/runs/${state.runId}/variables?step=${index - 1}`),
  ]);
  if (state.selected !== index) return;
  $("detail-empty").hidden = true;
  $("detail-body").hidden = false;
  const tokens = (step.prompt_tokens || 0) + (step.completion_tokens || 0);
  fill($("detail-meta"), [`idx ${index}`, `seq_no ${step.seq_no}`, step.tool || step.type, duration(step.duration_s),
    tokens ? `${step.prompt_tokens} + ${step.completion_tokens} tokens` : "", step.started_at ? `started ${when(step.started_at)}` : ""]
    .filter(Boolean).join(" · "));
  fill($("detail-inputs"), asText(step.inputs));
  fill($("detail-outputs"), asText(step.error ? { error: step.error } : step.outputs));
  fill($("detail-variables"), asText(after.variables));
  fill($("detail-diff"), variablesDiff(before.variables, after.variables));
  $("fork-plan").value = JSON.stringify(state.run.plan, null, 2);
  $("fork-suggestion").value = "";
}

function wire() {
  for (const button of document.querySelectorAll("#run [data-tab]")) {
    button.addEventListener("click", () => {
      const url = new URL(location.href);
      url.searchParams.set("tab", button.dataset.tab);
      state.navigate(url.pathname + url.search);
    });
  }
  $("fork").addEventListener("submit", async (event) => {
    event.preventDefault();
    const step = state.steps.find((s) => s && s.index === state.selected);
    const body = { from_seq: step.seq_no };
    const suggestion = $("fork-suggestion").value.trim();
    try {
      if (suggestion) body.suggestion = suggestion; else body.plan = JSON.parse($("fork-plan").value);
      const { run_id } = await post(`/v1/runs/${state.runId}/fork`, body);
      state.navigate(`/runs/${run_id}`);
    } catch (error) { notify(`The fork did not start: ${error.message}`); }
  });
  const decide = async (approved) => {
    const pending = state.run.pending;
    const body = { seq_no: pending.seq_no, approved };
    try {
      if (approved) body.tool_params = JSON.parse($("pending-params").value);
      await post(`/v1/runs/${state.runId}/approve`, body);
      $("pending").hidden = true;
      listen();
    } catch (error) { notify(`Not ${approved ? "approved" : "rejected"}: ${error.message}`); }
  };
  $("approve-button").addEventListener("click", () => decide(true));
  $("reject-button").addEventListener("click", () => decide(false));
  $("cancel-button").addEventListener("click", async () => {
    try { await post(`/v1/runs/${state.runId}/cancel`); await refreshRun(); } catch (error) { notify(`Not cancelled: ${error.message}`); }
  });
  $("judge-button").addEventListener("click", async () => {
    try { await post(`/v1/runs/${state.runId}/judge`); await refreshRun(); } catch (error) { notify(`Not judged: ${error.message}`); }
  });
  $("replay-button").addEventListener("click", async () => {
    try {
      const report = await post(`/v1/runs/${state.runId}/replay`);
      $("replay-report").hidden = false;
      fill($("replay-report"), `${report.ok ? "Every step reproduced its record." : "Some steps differ."}\n` + asText(report));
    } catch (error) { notify(`The replay failed: ${error.message}`); }
  });
}

function listen() {
  if (state.stream) state.stream.stop();
  state.streamed = "";
  state.stream = follow(state.runId, {
    step: (data) => onStep(data),
    token: (data) => { state.streamed += data.delta; fill($("answer"), renderMarkdown(state.streamed)); },
    run: async () => { await refreshRun(); },
    done: async () => { await refreshRun(); },
  });
}

// Show run `runId` in `container` (reusing what is shown when it is the same run), at `params`:
// ?step=N selects a step, ?tab=timeline|graph a view.
export async function showRun(container, runId, params, { navigate, info }) {
  state.navigate = navigate;
  state.info = info;
  if (state.runId !== runId || !$("run")) {
    closeRun();
    state.runId = runId;
    fill(container, skeleton());
    wire();
    await refreshRun();
    listen();
  }
  showTab(params.get("tab") || "steps");
  const step = params.get("step");
  if (step != null && /^\d+$/.test(step)) {
    const index = Number(step);
    // The step may not have arrived on the stream yet: wait for it a little.
    for (let tries = 0; tries < 50 && !state.steps.some((s) => s && s.index === index && s.phase !== "started"); tries++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      if (state.runId !== runId) return;
    }
    await selectStep(index);
  } else {
    state.selected = null;
    $("detail-body").hidden = true;
    $("detail-empty").hidden = false;
    for (const li of $("steps").children) li.classList.remove("selected");
    renderViews();
  }
}
