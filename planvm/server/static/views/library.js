// The plan library: the best plans kept for goals (reused when the same goal comes again, shown to
// the planner as examples for similar ones), with their labels; each can be removed.
import { api } from "../api.js";
import { fill, h, link, notify, when } from "../dom.js";

export async function renderLibrary(container) {
  const { entries } = await api("/v1/library");
  const rows = entries.map((entry) => h("tr", { dataset: { entry: entry.id } },
    h("td", {}, entry.goal), h("td", {}, entry.label || ""), h("td", {}, entry.language || ""),
    h("td", {}, (entry.tools || []).join(", ")), h("td", {}, entry.score != null ? String(entry.score) : ""),
    h("td", {}, entry.run_id ? link(`/runs/${entry.run_id}`, entry.run_id.slice(0, 8)) : ""), h("td", {}, when(entry.created_at)),
    h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `remove the best plan for ${entry.goal}`, onclick: async () => {
      try {
        await api(`/v1/library/${encodeURIComponent(entry.id)}`, { method: "DELETE" });
        await renderLibrary(container);
      } catch (error) { notify(error.message); }
    } }, "Remove"))));
  fill(container, h("section", { "data-testid": "library", "aria-label": "plan library" },
    h("h2", {}, "Plan library"),
    h("p", { class: "muted" }, "Best plans kept for goals (`planvm runs best`, `planvm optimize`): a goal asked again reuses its plan; similar goals show them to the planner."),
    entries.length ? h("table", { class: "library" },
      h("thead", {}, h("tr", {}, ...["goal", "label", "language", "tools", "score", "run", "kept", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)) : h("p", { id: "empty-library", class: "empty" }, "No best plan kept yet. Keep one with `planvm runs best RUN_ID`, or let `planvm optimize` choose.")));
}
