// A run's event stream: Server-Sent Events read over fetch (so the page's headers go along),
// picked up again after a dropped connection with Last-Event-ID, so no event is missed
// or seen twice. Ends with the run's `done` event, or when stop() is called.
import { headers, toSignIn } from "./api.js";

export function follow(runId, handlers) {
  const controller = new AbortController();
  let lastId = null;
  (async () => {
    while (!controller.signal.aborted) {
      try {
        const extra = lastId === null ? {} : { "Last-Event-ID": lastId };
        const response = await fetch(`/v1/runs/${encodeURIComponent(runId)}/events`, { headers: headers(extra), signal: controller.signal });
        if (response.status === 401) { toSignIn(); return; }
        if (!response.ok) return;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const fields = {};
            for (const line of block.split("\n")) {
              const colon = line.indexOf(":");
              if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1).trimStart();
            }
            if (fields.id) lastId = fields.id;
            if (!fields.data) continue;
            const data = JSON.parse(fields.data);
            const handler = handlers[fields.event];
            if (handler) await handler(data);
            if (fields.event === "done") return;
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));  // then reconnect, from lastId
    }
  })();
  return { stop: () => controller.abort() };
}
