// planvm's page: a run inspector. Every view has an address (/, /runs/{id}?step=N&tab=…,
// /runs/{id}?compare={other}, /library), so it can be linked, shared and reached with back and
// forward. ES modules, no build step; every request goes to this server's /v1 API.
import { api, post, signedIn, signOut } from "./api.js";
import { $, clearNotice, fill, h, notify } from "./dom.js";
import { renderCompare } from "./views/compare.js";
import { renderLibrary } from "./views/library.js";
import { closeRun, showRun } from "./views/run.js";
import { loadRuns, markCurrent } from "./views/runs.js";

let info = { models: {}, approve_tools: [] };

function navigate(path, { replace = false } = {}) {
  if (path === location.pathname + location.search) return render();
  history[replace ? "replaceState" : "pushState"](null, "", path);
  return render();
}

function emptyState(container) {
  closeRun();
  fill(container, h("section", { id: "empty-state", class: "empty" },
    h("h2", {}, "Ask a goal, or open a run"),
    h("p", {}, "Type a goal above and press Run: the planner writes a plan, the VM runs it step by step, and this page shows each step as it happens."),
    h("p", {}, "Or choose a run on the left to see its steps, its timeline and its plan as a graph; fork it from any step; compare a fork with its parent."),
    h("p", { class: "muted" }, info.models.planner ? "Plans are written by the configured model." :
      "No model is configured on this server: plans come from the template planner and answers are extracted from the knowledge base.")));
}

async function render() {
  const container = $("view");
  const parts = location.pathname.split("/").filter(Boolean);
  const params = new URLSearchParams(location.search);
  clearNotice();
  for (const a of document.querySelectorAll("header nav a")) a.toggleAttribute("aria-current", a.getAttribute("href") === location.pathname);
  try {
    if (parts[0] === "runs" && parts[1]) {
      const runId = decodeURIComponent(parts[1]);
      markCurrent(runId);
      if (params.get("compare")) {
        closeRun();
        fill(container, h("p", { class: "muted" }, "Loading…"));
        await renderCompare(container, (await api(`/v1/runs/${encodeURIComponent(runId)}`)), params.get("compare"));
      } else {
        await showRun(container, runId, params, { navigate, info });
      }
      document.title = `planvm · run ${runId.slice(0, 8)}`;
    } else if (parts[0] === "library") {
      markCurrent(null);
      closeRun();
      await renderLibrary(container);
      document.title = "planvm · plan library";
    } else {
      markCurrent(null);
      emptyState(container);
      document.title = "planvm";
    }
  } catch (error) {
    notify(error.status === 404 ? `No such run: ${error.message}` : error.message);
  }
}

// Links inside the page change the address without reloading it.
document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-link]");
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => render());

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const { run_id } = await post("/v1/runs", { goal: $("goal").value });
    $("goal").value = "";
    await navigate(`/runs/${run_id}`);
    loadRuns();
  } catch (error) { notify(`The goal was not started: ${error.message}`); }
});

let searchTimer = null;
$("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(loadRuns, 250); });
$("status-filter").addEventListener("change", () => loadRuns());
$("more-runs").addEventListener("click", () => loadRuns({ more: true }));
$("signout").hidden = !signedIn;
$("signout").addEventListener("click", () => signOut());

(async () => {
  try { info = await api("/v1/info"); } catch (error) { /* an older server: no judge button */ }
  await Promise.all([loadRuns(), render()]);
  setInterval(() => { if (!document.hidden) loadRuns(); }, 5000);
})();
