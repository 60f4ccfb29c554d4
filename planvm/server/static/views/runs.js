// The runs list (the sidebar): newest first, filtered, paged; each run is a link to its page.
import { api } from "../api.js";
import { $, duration, fill, h, link, notify, when } from "../dom.js";

const FINISHED = new Set(["completed", "failed", "cancelled"]);
let nextCursor = null;
let current = null;

export function markCurrent(runId) {
  current = runId;
  for (const li of $("runs").children) li.classList.toggle("selected", li.dataset.runId === runId);
}

function row(run) {
  const ended = FINISHED.has(run.status) && run.updated_at ? duration(run.updated_at - run.created_at) : "";
  const started = run.status === "queued" ? "queued" : when(run.created_at);
  const goal = run.goal || (run.plan_file ? `plan file ${run.plan_file.split("/").pop()}` : "(a plan given without a goal)");
  const meta = [started, ended, run.steps === 1 ? "1 step" : `${run.steps} steps`].filter(Boolean).join(" · ");
  return h("li", { dataset: { runId: run.id }, class: run.id === current ? "selected" : "" },
    link(`/runs/${run.id}`,
      h("span", { class: "goal" }, run.parent_id ? h("span", { class: "fork", title: `a fork of ${run.parent_id} from seq_no ${run.fork_seq}` }, "↳ fork · ") : null, goal),
      h("span", { class: "row" },
        h("span", { class: `badge ${run.status}` }, run.status),
        run.score != null ? h("span", { class: "score", title: "the judge's score" }, `${run.score}/10${run.accept ? " ✓" : ""}`) : null,
        run.best_of ? h("span", { class: "best", title: "the best run of a plan search" }, "★") : null,
        h("span", { class: "muted" }, meta)),
      h("span", { class: "id muted" }, run.id)));
}

export async function loadRuns({ more = false } = {}) {
  const params = new URLSearchParams({ limit: "50" });
  if ($("search").value) params.set("q", $("search").value);
  if ($("status-filter").value) params.set("status", $("status-filter").value);
  if (more && nextCursor) params.set("cursor", nextCursor);
  let page;
  try {
    page = await api("/v1/runs?" + params);
  } catch (error) {
    notify(`The runs could not be listed: ${error.message}`);
    return;
  }
  const list = $("runs");
  if (!more) list.replaceChildren();
  for (const run of page.runs) list.append(row(run));
  nextCursor = page.next_cursor;
  $("more-runs").hidden = !nextCursor;
  if (!list.children.length) fill(list, h("li", { class: "muted empty" }, "No runs yet: ask a goal above."));
}
