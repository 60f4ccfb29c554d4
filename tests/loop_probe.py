"""LoopServer: the service in this process, with every step of its event loop timed in the loop
thread's own CPU time (what holds other requests), for tests that promise the loop is never held."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.serve_helpers import free_port


class LoopServer:
    """The service in this process (uvicorn on a thread of its own, on asyncio's loop):
    ``slow_steps`` lists every step of its event loop that used more than ``slow`` seconds of the
    loop thread's own CPU time (work done on the loop, which holds every other request meanwhile;
    neither waiting for the GIL nor this machine's other load counts). Python's garbage collection
    is left out: it runs on whichever thread happens to allocate, the loop's included, and collects
    what every thread made."""

    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch, slow: float = 0.02, **config: Any) -> None:
        import uvicorn

        from planvm.engine import Engine
        from planvm.server import create_app

        self.engine = Engine({"store_path": str(home / "runs.sqlite"), "no_builtins": True, **config})
        app = create_app(self.engine, max_body_bytes=64 * 1024 * 1024)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="asyncio", log_level="warning"))
        self.slow = slow
        self.slow_steps: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        run = asyncio.events.Handle._run

        collecting = {"since": 0.0, "spent": 0.0}

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if threading.get_ident() != self._thread.ident:
                return
            if phase == "start":
                collecting["since"] = time.thread_time()
            else:
                collecting["spent"] += time.thread_time() - collecting["since"]

        def timed(handle: asyncio.events.Handle) -> None:
            if threading.get_ident() != self._thread.ident:
                return run(handle)
            collecting["spent"] = 0.0
            began = time.thread_time()
            try:
                return run(handle)
            finally:
                used = time.thread_time() - began - collecting["spent"]
                if used > self.slow:
                    self.slow_steps.append((round(used * 1000), repr(handle)[:300]))

        monkeypatch.setattr(asyncio.events.Handle, "_run", timed)
        gc.callbacks.append(on_gc)
        self._on_gc = on_gc

    def __enter__(self) -> LoopServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def longest_step(self) -> int:
        return max((ms for ms, _ in self.slow_steps), default=0)

    def __exit__(self, *exc: object) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self.server.should_exit = True
        self._thread.join(30)
        self.engine.close()
