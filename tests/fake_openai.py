"""FakeChatServer: a local HTTP server speaking the chat-completions protocol, with scripted
replies (a fake at the edge: the real openai SDK and httpx talk to it over a real socket)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def chat_reply(content: str, reasoning: str | None = None, *, model: str = "test-model", usage: tuple[int, int] = (1, 1),
               finish: str | None = "stop") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


def stream(pieces: list[str], *, reasoning: list[str] = (), finish: str | None = "stop", done: bool = True,
           pause: float = 0.0) -> tuple[Any, ...]:
    """A scripted stream: a chunk for each piece of ``reasoning`` (``delta.reasoning_content``),
    then for each piece of the answer, ``pause`` seconds apart; ``finish`` on the last chunk (None:
    none); then the usage and ``data: [DONE]`` (``done=False``: the connection just closes)."""
    return ("stream", list(pieces), list(reasoning), finish, done, pause)


class FakeChatServer:
    """Serves queued actions in order: ``("json", status, body[, headers])``, ``("raw", status, text)``,
    ``("sleep", seconds, body[, status])``, ``("trickle", seconds_per_byte, body)`` (headers at once, then the
    body byte by byte), ``("trickle_headers", seconds_per_byte, body)`` (the status line and headers
    byte by byte too), ``("stream_cut", text)``, :func:`stream` (a scripted stream); once they are
    spent, ``responder(request body)`` (when set) answers: a reply's text, or a whole reply object.
    A ``json`` 200 to a request that asks for a stream is streamed, a word a chunk. Records every
    request body and its headers."""

    def __init__(self) -> None:
        self.actions: list[tuple[Any, ...]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.stream_pause = 0.0  # seconds between streamed chunks
        self.responder: Any = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append({"path": self.path, **body})
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if server.actions:
                    action = server.actions.pop(0)
                elif server.responder is not None:
                    reply = server.responder(body)
                    action = ("json", 200, chat_reply(reply) if isinstance(reply, str) else reply)
                else:
                    action = ("json", 500, {"error": {"message": "no scripted reply"}})
                kind = action[0]
                if kind == "stream":
                    self._pieces(*action[1:])
                    return
                if kind == "trickle_headers":  # everything, the status line first, one byte every action[1] seconds
                    data = json.dumps(action[2]).encode()
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    self.close_connection = True
                    try:
                        for byte in head + data:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(action[1])
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if kind == "stream_cut":  # a stream that stops without a finish_reason or [DONE]
                    self._stream(chat_reply(action[1]), end=False)
                    return
                if kind == "trickle":  # headers at once, then the body one byte every action[1] seconds
                    data = json.dumps(action[2]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    try:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            time.sleep(action[1])
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if kind == "sleep":  # ("sleep", seconds, body[, status])
                    time.sleep(action[1])
                    self._send(action[3] if len(action) > 3 else 200, json.dumps(action[2]))
                elif kind == "raw":
                    self._send(action[1], action[2])
                elif body.get("stream") and action[1] == 200:
                    self._stream(action[2])
                else:
                    extra = action[3] if len(action) > 3 else None
                    self._send(action[1], json.dumps(action[2]), extra)

            def _stream(self, reply: dict[str, Any], end: bool = True) -> None:
                """A scripted reply sent as the protocol's stream: one chunk per word, its finish_reason
                on the last, then the usage (``end=False``: the connection just closes after the words)."""
                choice = reply["choices"][0]
                words = [w + " " for w in choice["message"]["content"].split(" ")]
                words[-1] = words[-1][:-1]
                self._pieces(words, [], choice.get("finish_reason") if end else None, end, server.stream_pause, reply)

            def _pieces(self, pieces: list[str], reasoning: list[str], finish: str | None, done: bool, pause: float,
                        reply: dict[str, Any] | None = None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                reply = reply or {}
                base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": reply.get("model", "test-model")}
                deltas = [{"reasoning_content": r} for r in reasoning] + [{"content": p} for p in pieces]
                began = time.monotonic()
                try:
                    for i, delta in enumerate(deltas):
                        last = i == len(deltas) - 1
                        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish if last else None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        # Paced against the clock: n chunks take n pauses however long each write took.
                        time.sleep(max(0.0, began + (i + 1) * pause - time.monotonic()))
                    if not done:
                        self.close_connection = True
                        return
                    usage = {**base, "choices": [], "usage": reply.get("usage", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})}
                    self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reply(self, content: str, reasoning: str | None = None) -> FakeChatServer:
        self.actions.append(("json", 200, chat_reply(content, reasoning)))
        return self


# --- shared by the model-boundary tests -------------------------------------------------------

ASK = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "Say hi."},
                                                       "output_vars": ["final_answer"]}}]


def openai_client(server: FakeChatServer, *, key: str, **kw: Any) -> Any:
    """The real OpenAI-compatible client, pointed at ``server`` with ``key``, no retries."""
    from tools.llm_openai import OpenAIChat

    return OpenAIChat(**{"model": "m", "base_url": server.url, "api_key": key, "max_retries": 0, "timeout": 5.0, **kw})


def llm_env(server: FakeChatServer, home: Any, *, key: str, **extra: str) -> dict[str, str]:
    """The variables that point a `planvm` process at ``server`` with ``key``."""
    return {"PLANVM_HOME": str(home), "PLANVM_LLM_BASE_URL": server.url, "PLANVM_LLM_MODEL": "m", "PLANVM_LLM_API_KEY": key,
            "PLANVM_LLM_MAX_RETRIES": "0", **extra}


def write_plan(folder: Any, plan: list[dict[str, Any]] = ASK) -> str:
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    return str(path)
