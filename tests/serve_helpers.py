"""Starting ``planvm serve`` as a real process on a free port, for the service tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOOLS = str(Path(__file__).resolve().parent / "serve_tools.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``planvm serve`` in a child process; ``url`` is its base address."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.home = home
        self.args = args
        self.port = port or free_port()
        self.host = host
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PLANVM_HOME": str(home), "PLANVM_TEST_CALL_LOG": str(home / "calls.log"), **(env or {})}
        self.proc: subprocess.Popen[str] | None = None

    def start(self, *, wait: bool = True, headers: dict[str, str] | None = None) -> Server:
        command = [sys.executable, "-m", "planvm", "serve", "--host", self.host, "--port", str(self.port), "--plugin", TOOLS, *self.args]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if wait:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"planvm serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise RuntimeError("planvm serve did not answer /healthz within 60 s")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def calls(self) -> list[str]:
        log = self.home / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_status(client: httpx.Client, run_id: str, statuses: set[str], timeout: float = 60,
                read: Callable[[httpx.Response], dict[str, Any]] = httpx.Response.json) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = read(client.get(f"/v1/runs/{run_id}"))
        if run["status"] in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not reach {statuses}")


def slow_plan(n: int, seconds: float = 0.2) -> list[dict[str, Any]]:
    """``n`` slow_echo steps, one after another, then the final answer."""
    plan: list[dict[str, Any]] = []
    for i in range(n):
        text = "${r%d}" % (i - 1) if i else "start"
        plan.append({"seq_no": i, "type": "calling", "parameters": {
            "tool_name": "slow_echo", "tool_params": {"text": f"{text}-{i}" if i else "start", "seconds": seconds}, "output_vars": [f"r{i}"]}})
    plan.append({"seq_no": n, "type": "assign", "parameters": {"final_answer": "${r%d}" % (n - 1)}})
    return plan
