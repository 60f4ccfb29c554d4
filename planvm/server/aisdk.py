"""A run's events as the AI SDK's UI message stream (protocol v1), for chat front ends built
with ``useChat``: each tool call becomes a tool part (input, then output or error), streamed
``llm_generate`` text becomes text parts, and the final answer ends the message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from planvm.engine.events import Event
from vm.values import render_text

__all__ = ["HEADERS", "ui_message_stream"]

HEADERS = {"x-vercel-ai-ui-message-stream": "v1", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _part(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


async def ui_message_stream(run_id: str, events: AsyncIterator[Event]) -> AsyncIterator[str]:
    yield _part({"type": "start", "messageId": f"run-{run_id}"})
    open_text: str | None = None
    streamed_text = False
    async for event in events:
        data = event.data
        if event.event == "token":
            text_id = f"text-{data['seq_no']}"
            if open_text != text_id:
                if open_text is not None:
                    yield _part({"type": "text-end", "id": open_text})
                open_text = text_id
                yield _part({"type": "text-start", "id": text_id})
            streamed_text = True
            yield _part({"type": "text-delta", "id": text_id, "delta": data["delta"]})
        elif event.event == "step" and data.get("phase") == "finished" and data.get("type") == "calling":
            if open_text is not None:
                yield _part({"type": "text-end", "id": open_text})
                open_text = None
            call_id = f"call-{data['index']}"
            yield _part({"type": "start-step"})
            yield _part({"type": "tool-input-available", "toolCallId": call_id, "toolName": data["tool"], "input": data["inputs"]})
            if data.get("error"):
                yield _part({"type": "tool-output-error", "toolCallId": call_id, "errorText": data["error"]})
            else:
                yield _part({"type": "tool-output-available", "toolCallId": call_id, "output": data.get("result")})
            yield _part({"type": "finish-step"})
        elif event.event == "done":
            if open_text is not None:
                yield _part({"type": "text-end", "id": open_text})
                open_text = None
            if data.get("status") == "completed":
                if not streamed_text:
                    yield _part({"type": "text-start", "id": "answer"})
                    yield _part({"type": "text-delta", "id": "answer", "delta": render_text(data.get("final_answer"))})
                    yield _part({"type": "text-end", "id": "answer"})
            else:
                yield _part({"type": "error", "errorText": data.get("error") or f"the run {data.get('status')}"})
            yield _part({"type": "finish"})
            yield "data: [DONE]\n\n"
            return
