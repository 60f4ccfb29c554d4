// Reads planvm's `format=ai-sdk` event stream with the AI SDK's own parser and message reader
// (the code `useChat` runs), then prints the final UI message as JSON.
import { createRequire } from "node:module";

const require = createRequire(process.env.AI_SDK_DIR + "/");
const { parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema } = require("ai");

const response = await fetch(process.argv[2]);
if (response.headers.get("x-vercel-ai-ui-message-stream") !== "v1") {
  throw new Error("missing header x-vercel-ai-ui-message-stream: v1");
}
const chunks = parseJsonEventStream({ stream: response.body, schema: uiMessageChunkSchema }).pipeThrough(
  new TransformStream({
    transform(result, controller) {
      if (!result.success) throw result.error;
      controller.enqueue(result.value);
    },
  }),
);
let last = null;
for await (const message of readUIMessageStream({ stream: chunks, terminateOnError: true })) {
  last = message;
}
console.log(JSON.stringify(last));
