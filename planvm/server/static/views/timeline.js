// The timeline: a waterfall of a run's steps on one time axis. Each executed step is a bar from
// its start to its end; steps that ran at the same time overlap; LLM steps carry their tokens and
// failed steps are marked. Kept up to date while the run executes.
import { duration, fill, h } from "../dom.js";

export function renderTimeline(container, steps, { running = false, onSelect, selected } = {}) {
  const done = steps.filter((s) => s && s.phase !== "started" && s.started_at != null);
  const live = steps.filter((s) => s && s.phase === "started");
  const now = Date.now() / 1000;
  if (!done.length && !live.length) {
    fill(container, h("p", { class: "muted" }, "No step has run yet."));
    return;
  }
  const start = Math.min(...done.map((s) => s.started_at), ...live.map((s) => s.seen_at));
  const end = Math.max(...done.map((s) => s.started_at + s.duration_s), ...(running ? [now] : []), start + 0.001);
  const span = end - start;
  const bars = [];
  const at = (t) => `${(((t - start) / span) * 100).toFixed(3)}%`;
  for (const step of done) {
    const tokens = (step.prompt_tokens || 0) + (step.completion_tokens || 0);
    const label = `seq_no ${step.seq_no} ${step.tool || step.type} · ${duration(step.duration_s)}` + (tokens ? ` · ${tokens} tokens` : "") +
      (step.error ? " · failed" : "");
    const bar = h("button", {
      type: "button", class: `bar ${step.type}${step.error ? " failed" : ""}${tokens ? " llm" : ""}${step.index === selected ? " selected" : ""}`,
      dataset: { seq: String(step.seq_no), index: String(step.index), start: String(Math.round((step.started_at - start) * 1000)),
                 end: String(Math.round((step.started_at + step.duration_s - start) * 1000)) },
      title: label, "aria-label": label, onclick: () => onSelect && onSelect(step.index),
    });
    bar.style.marginLeft = at(step.started_at);
    bar.style.width = `max(3px, ${(((step.duration_s) / span) * 100).toFixed(3)}%)`;
    bars.push(h("div", { class: "lane" }, h("span", { class: "lane-label" }, `${step.seq_no} ${step.tool || step.type}`), h("div", { class: "track" }, bar)));
  }
  for (const step of live) {
    const bar = h("div", { class: "bar running", dataset: { seq: String(step.seq_no), running: "" }, title: `seq_no ${step.seq_no} running` });
    bar.style.marginLeft = at(step.seen_at);
    bar.style.width = `max(3px, ${(((now - step.seen_at) / span) * 100).toFixed(3)}%)`;
    bars.push(h("div", { class: "lane" }, h("span", { class: "lane-label" }, `${step.seq_no} ${step.tool || step.type} …`), h("div", { class: "track" }, bar)));
  }
  fill(container,
    h("div", { class: "axis muted" }, h("span", {}, "0"), h("span", {}, duration(span))),
    ...bars);
}
