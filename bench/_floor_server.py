"""The floor under bench/serve.py's figures: a server that does only what one of its runs cannot do
without, and nothing of planvm.

Per request (``POST /v1/runs?wait=true`` with a plan of N calls in a chain) it does what a run of
that plan needs at the least: one HTTP request read and one JSON answer written on an event loop
(uvloop, as ``planvm serve`` runs), the plan's JSON parsed, a run row committed to SQLite, then for
each call a wait of the tool's time on the loop and one step row committed, the last with the
run's end; each commit in a store thread, handed over and back as planvm does (a queue, then
``call_soon_threadsafe``). No validation, no VM, no middleware, no leases, no events.

    python bench/_floor_server.py PORT STORE_FILE TOOL_SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import threading
from queue import SimpleQueue
from typing import Any


def main() -> None:
    port, path, tool_seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, plan TEXT, status TEXT, answer TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS steps (run_id INTEGER, idx INTEGER, output TEXT, PRIMARY KEY (run_id, idx))")
    calls: SimpleQueue[Any] = SimpleQueue()

    def store() -> None:
        while True:
            loop, future, sql = calls.get()
            db.execute("BEGIN IMMEDIATE")
            result = None
            for statement, params in sql:
                result = db.execute(statement, params).lastrowid
            db.execute("COMMIT")
            loop.call_soon_threadsafe(future.set_result, result)

    threading.Thread(target=store, daemon=True).start()

    def commit(*sql: tuple[str, tuple[Any, ...]]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        calls.put((loop, future, sql))
        return future

    async def run(body: bytes) -> bytes:
        plan = json.loads(body)["plan"]
        run_id = await commit(("INSERT INTO runs (plan, status) VALUES (?, 'running')", (json.dumps(plan),)))
        value = None
        calling = [step for step in plan if step["type"] == "calling"]
        for idx, step in enumerate(calling):
            await asyncio.sleep(tool_seconds)
            value = step["parameters"]["tool_params"]["text"] if value is None else value
            sql = [("INSERT INTO steps VALUES (?, ?, ?)", (run_id, idx, json.dumps(value)))]
            if idx == len(calling) - 1:
                sql.append(("UPDATE runs SET status = 'completed', answer = ? WHERE id = ?", (json.dumps(value), run_id)))
            await commit(*sql)
        return json.dumps({"run_id": str(run_id), "status": "completed", "final_answer": value}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                answer = await run(body) if head.startswith(b"POST") else b'{"ok":true}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def listen() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(listen())
    except ImportError:
        asyncio.run(listen())


if __name__ == "__main__":
    main()
