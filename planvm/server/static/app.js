// planvm's page: runs, a run's branches, its steps as they happen, variables, fork, approve.
// Plain browser JavaScript, no build step; every request goes to this server's /v1 API.
"use strict";

const state = { runId: null, run: null, steps: [], selected: null, stream: null, streamedText: "" };
const $ = (id) => document.getElementById(id);

// A token (when the server wants one) is kept by the browser session: #token=... once in the URL.
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (hashToken) { sessionStorage.setItem("planvm-token", hashToken); history.replaceState(null, "", location.pathname); }
function headers(extra) {
  const h = Object.assign({ "Content-Type": "application/json" }, extra || {});
  const token = sessionStorage.getItem("planvm-token");
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: headers() }, options || {}));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || { message: response.statusText };
    const problems = error.problems ? "\n" + error.problems.join("\n") : "";
    throw new Error(error.message + problems);
  }
  return body;
}

function show(el, value) { el.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2); }
function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// A small Markdown subset for answers: headings, lists, code, emphasis, links. Input is escaped first.
function markdown(source) {
  const lines = escapeHtml(source).split("\n");
  const out = [];
  let list = null, code = false;
  const inline = (t) => t
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/\*([^*]+)\*/g, "<em>$1</em>")
    .replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2" rel="noopener" target="_blank">$1</a>');
  for (const line of lines) {
    if (line.startsWith("```")) { out.push(code ? "</code></pre>" : "<pre><code>"); code = !code; continue; }
    if (code) { out.push(line + "\n"); continue; }
    const item = line.match(/^\s*(?:[-*]|\d+\.)\s+(.*)/);
    if (item) {
      if (!list) { list = /^\s*\d/.test(line) ? "ol" : "ul"; out.push(`<${list}>`); }
      out.push(`<li>${inline(item[1])}</li>`);
      continue;
    }
    if (list) { out.push(`</${list}>`); list = null; }
    const heading = line.match(/^(#{1,4})\s+(.*)/);
    if (heading) out.push(`<h${heading[1].length + 2}>${inline(heading[2])}</h${heading[1].length + 2}>`);
    else if (line.trim()) out.push(`<p>${inline(line)}</p>`);
  }
  if (list) out.push(`</${list}>`);
  if (code) out.push("</code></pre>");
  return out.join("");
}
function asText(value) { return value == null ? "" : typeof value === "string" ? value : JSON.stringify(value, null, 2); }

// --- the runs list ---------------------------------------------------------------------------

async function loadRuns() {
  const params = new URLSearchParams({ limit: "100" });
  if ($("search").value) params.set("q", $("search").value);
  if ($("status-filter").value) params.set("status", $("status-filter").value);
  const { runs } = await api("/v1/runs?" + params);
  const list = $("runs");
  list.replaceChildren();
  for (const run of runs) {
    const li = document.createElement("li");
    li.dataset.runId = run.id;
    if (run.id === state.runId) li.classList.add("selected");
    const goal = run.goal || run.plan_file || "(plan)";
    li.innerHTML = `<div>${escapeHtml(goal)}</div><span class="id">${run.id}</span> <span class="badge ${run.status}">${run.status}</span>`;
    li.onclick = () => openRun(run.id);
    list.append(li);
  }
}

// --- one run ---------------------------------------------------------------------------------

async function openRun(runId) {
  if (state.stream) state.stream.abort();
  Object.assign(state, { runId, steps: [], selected: null, streamedText: "" });
  $("run").hidden = false;
  $("steps").replaceChildren();
  $("detail-body").hidden = true; $("detail-empty").hidden = false;
  $("replay-report").hidden = true;
  $("answer").innerHTML = "";
  await refreshRun();
  follow(runId);
  loadRuns();
}

async function refreshRun() {
  const run = await api(`/v1/runs/${state.runId}`);
  state.run = run;
  show($("run-goal"), run.goal || "(a plan run without a goal)");
  const badge = $("run-status");
  badge.textContent = run.status; badge.className = "badge " + run.status;
  const total = run.tokens.total || { prompt_tokens: 0, completion_tokens: 0 };
  show($("run-tokens"), `${run.steps} ${run.steps === 1 ? "step" : "steps"} · ${total.prompt_tokens + total.completion_tokens} tokens`);
  $("error").hidden = !run.error; show($("error"), run.error || "");
  show($("reasoning"), run.planning.reasoning || "(no reasoning recorded)");
  show($("plan"), run.plan);
  if (run.final_answer != null) $("answer").innerHTML = markdown(asText(run.final_answer));
  const pending = run.status === "waiting" ? run.pending : null;
  $("pending").hidden = !pending;
  if (pending) {
    show($("pending-text"), `seq_no ${pending.seq_no} calls tool '${pending.tool}' and waits for approval.`);
    $("pending-params").value = JSON.stringify(pending.tool_params, null, 2);
  }
  renderTree(run);
}

function renderTree(run) {
  const tree = $("tree");
  tree.replaceChildren();
  const add = (label, id, current) => {
    const a = document.createElement("a");
    a.textContent = label; a.dataset.runId = id;
    if (current) a.className = "current"; else a.onclick = () => openRun(id);
    tree.append(a);
  };
  run.lineage.forEach((id, i) => add((i ? "→ " : "") + id.slice(0, 8), id, id === run.id));
  const grade = (score, best) => (score != null ? `, score ${score}` : "") + (best ? " ★ best" : "");
  if (run.judgement) {
    tree.lastChild.textContent += ` (score ${run.judgement.score}${run.judgement.accept ? ", accepted" : ""}${run.best_of ? " ★ best" : ""})`;
  }
  for (const child of run.children) {
    add(`⑂ ${child.id.slice(0, 8)} (from seq_no ${child.fork_seq}, ${child.status}${grade(child.score, child.best_of)})`, child.id, false);
  }
}

function stepLabel(step) {
  const tool = step.tool ? " " + step.tool : "";
  if (step.phase === "started") return `seq_no ${step.seq_no} ${step.type}${tool} …`;
  const tokens = step.prompt_tokens + step.completion_tokens;
  return `seq_no ${step.seq_no} ${step.type}${tool} · ${(step.duration_s * 1000).toFixed(1)} ms` +
    (tokens ? ` · ${tokens} tokens` : "") + (step.error ? " · failed" : "");
}

function onStep(step) {
  const list = $("steps");
  if (step.phase === "started") {
    const li = document.createElement("li");
    li.className = "started"; li.dataset.started = String(step.seq_no);
    li.textContent = stepLabel(step);
    list.append(li);
    return;
  }
  const placeholder = list.querySelector(`li[data-started="${step.seq_no}"]`);
  const li = placeholder || document.createElement("li");
  li.className = step.error ? "failed" : "";
  delete li.dataset.started;
  li.dataset.index = String(step.index);
  li.textContent = stepLabel(step);
  li.onclick = () => selectStep(step.index);
  state.steps[step.index] = step;
  if (!placeholder) list.append(li);
}

async function selectStep(index) {
  state.selected = index;
  for (const li of $("steps").children) li.classList.toggle("selected", li.dataset.index === String(index));
  const step = state.steps[index];
  const [after, before] = await Promise.all([
    api(`/v1/runs/${state.runId}/variables?step=${index}`),
    api(`/v1/runs/${state.runId}/variables?step=${index - 1}`),
  ]);
  $("detail-empty").hidden = true; $("detail-body").hidden = false;
  show($("detail-inputs"), step.inputs);
  show($("detail-outputs"), step.error ? { error: step.error } : step.outputs);
  show($("detail-variables"), after.variables);
  const diff = {};
  for (const [k, v] of Object.entries(after.variables)) {
    if (JSON.stringify(before.variables[k]) !== JSON.stringify(v)) diff[k] = { before: before.variables[k], after: v };
  }
  show($("detail-diff"), diff);
  $("fork-plan").value = JSON.stringify(state.run.plan, null, 2);
  $("fork-suggestion").value = "";
}

// Server-Sent Events over fetch (so the Authorization header goes along), resumed with Last-Event-ID.
async function follow(runId) {
  const controller = new AbortController();
  state.stream = controller;
  let lastId = null;
  while (!controller.signal.aborted) {
    try {
      const extra = lastId === null ? {} : { "Last-Event-ID": lastId };
      const response = await fetch(`/v1/runs/${runId}/events`, { headers: headers(extra), signal: controller.signal });
      if (!response.ok) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const fields = {};
          for (const line of block.split("\n")) {
            const colon = line.indexOf(":");
            if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1).trimStart();
          }
          if (fields.id) lastId = fields.id;
          if (!fields.data) continue;
          const data = JSON.parse(fields.data);
          if (fields.event === "step") onStep(data);
          else if (fields.event === "token") { state.streamedText += data.delta; $("answer").innerHTML = markdown(state.streamedText); }
          else if (fields.event === "run") { await refreshRun(); loadRuns(); }
          else if (fields.event === "done") { await refreshRun(); loadRuns(); return; }
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// --- actions ---------------------------------------------------------------------------------

$("ask").onsubmit = async (event) => {
  event.preventDefault();
  try {
    const { run_id } = await api("/v1/runs", { method: "POST", body: JSON.stringify({ goal: $("goal").value }) });
    $("goal").value = "";
    await openRun(run_id);
  } catch (error) { alert(error.message); }
};

$("fork").onsubmit = async (event) => {
  event.preventDefault();
  const step = state.steps[state.selected];
  const body = { from_seq: step.seq_no };
  const suggestion = $("fork-suggestion").value.trim();
  try {
    if (suggestion) body.suggestion = suggestion; else body.plan = JSON.parse($("fork-plan").value);
    const { run_id } = await api(`/v1/runs/${state.runId}/fork`, { method: "POST", body: JSON.stringify(body) });
    await openRun(run_id);
  } catch (error) { alert(error.message); }
};

async function decide(approved) {
  const pending = state.run.pending;
  const body = { seq_no: pending.seq_no, approved };
  try {
    if (approved) body.tool_params = JSON.parse($("pending-params").value);
    await api(`/v1/runs/${state.runId}/approve`, { method: "POST", body: JSON.stringify(body) });
    $("pending").hidden = true;
    if (state.stream) state.stream.abort();
    follow(state.runId);
  } catch (error) { alert(error.message); }
}
$("approve-button").onclick = () => decide(true);
$("reject-button").onclick = () => decide(false);

$("replay-button").onclick = async () => {
  try {
    const report = await api(`/v1/runs/${state.runId}/replay`, { method: "POST" });
    $("replay-report").hidden = false;
    show($("replay-report"), report);
  } catch (error) { alert(error.message); }
};

let searchTimer = null;
$("search").oninput = () => { clearTimeout(searchTimer); searchTimer = setTimeout(loadRuns, 250); };
$("status-filter").onchange = loadRuns;
loadRuns();
setInterval(loadRuns, 5000);
