"""Shared helpers, in one place: the ``planvm`` command runner, the per-test private home, the
example knowledge base and the tiny model (each built once per session), and a registry of small
tools. The only fake here is ScriptedLLM: an LLM at the edge whose replies a test scripts in
advance (and which records the prompts it was given).

Tests are laid out like the code: ``vm/``, ``store/``, ``tools/``, ``planner/``, ``training/``,
``engine/``, ``cli/``, ``server/``, ``mcp/``; other helpers (a scripted chat-completions server, an
MCP server, a TCP proxy, database URLs) are modules beside this file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tools import ToolRegistry, tool
from vm import VM, CallContext, Completion

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def planvm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | str | None = None, prefix: list[str] | None = None,
) -> Any:
    """The ``planvm`` command in a process of its own (``python -m planvm``), as a user runs it:
    stdin closed, output captured as text, the environment of the test plus ``env``."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "planvm", *args], capture_output=True, text=True, timeout=timeout,
        cwd=cwd or ROOT, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


class ScriptedLLM:
    """Fake LLM: returns queued replies in order (a str, a Completion, or a callable of the prompt)."""

    def __init__(self, *replies: str | Completion | Callable[[str], str], default: str | None = None) -> None:
        self.replies = list(replies)
        self.default = default  # served once the queue is empty
        self.prompts: list[str] = []
        self.schemas: list[dict[str, Any] | None] = []

    def enqueue(self, *replies: str | Completion | Callable[[str], str]) -> ScriptedLLM:
        self.replies.extend(replies)
        return self

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None) -> Completion | str:
        self.prompts.append(prompt)
        self.schemas.append(json_schema)
        if not self.replies and self.default is not None:
            return self.default
        if not self.replies:
            raise AssertionError(f"ScriptedLLM has no reply left for prompt: {prompt[:80]!r}")
        reply = self.replies.pop(0)
        return reply(prompt) if callable(reply) else reply


@tool
def echo(value: Any) -> Any:
    """Return the value unchanged."""
    return value


@tool
def add(a: float, b: float = 0.0) -> float:
    """Add two numbers.

    Args:
        a: First number.
        b: Second number.
    """
    return a + b


@tool
async def shout(text: str) -> str:
    """Upper-case the text (an async tool)."""
    return text.upper()


@tool
def fail(message: str) -> str:
    """Raise ValueError with the message."""
    raise ValueError(message)


@tool
def outputs_of(ctx: CallContext) -> dict[str, Any]:
    """Return a dict keyed by the calling step's output_vars."""
    return {name: f"value of {name}" for name in ctx.output_vars}


def make_registry() -> ToolRegistry:
    return ToolRegistry([echo, add, shout, fail, outputs_of])


@pytest.fixture(scope="session")
def shared_readers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The answer reader's ONNX export (tools/kb/reader.py), built once per machine, is built once per
    test session, before the tests (a first answer would otherwise wait for it): every test's home
    shares one folder for it, xdist workers included. Built in a subprocess, so that no test process
    has torch imported by it."""
    import subprocess
    import sys

    shared = tmp_path_factory.getbasetemp().parent / "shared-readers"
    shared.mkdir(exist_ok=True)
    code = ("import sys; from pathlib import Path; from tools.kb.reader import _key, build_reader; "
            "build_reader(target=Path(sys.argv[1]) / _key())")
    out = subprocess.run([sys.executable, "-c", code, str(shared)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return shared


@pytest.fixture(autouse=True)
def _private_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, shared_readers: Path) -> None:
    """Every test (and every subprocess it starts) sees no PLANVM_* settings from the machine and
    keeps its runs and knowledge base in its own folder."""
    import os

    for name in list(os.environ):
        if name.startswith("PLANVM_") or name == "OPENAI_API_KEY":
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("planvm_home")
    monkeypatch.setenv("PLANVM_HOME", str(home))
    (home / "readers").symlink_to(shared_readers, target_is_directory=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Qwen2 model with a tokenizer trained here on planner text (tests/tiny_model.py),
    built once per session: loading, training, generation and constrained decoding run on it."""
    from tiny_model import build_tiny_model, planner_corpus

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), vocab_size=1500, corpus=planner_corpus())


@pytest.fixture(scope="session")
def example_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The knowledge base of examples/kb, built once by `planvm index` for the whole session (read only)."""
    import os
    import subprocess
    import sys

    kb = tmp_path_factory.mktemp("example_kb") / "kb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANVM_")}
    out = subprocess.run([sys.executable, "-m", "planvm", "index", str(EXAMPLES / "kb"), "--kb", str(kb)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return kb


@pytest.fixture
def registry() -> ToolRegistry:
    return make_registry()


@pytest.fixture
def vm(registry: ToolRegistry) -> VM:
    return VM(registry)


def assign(seq: int, **values: Any) -> dict[str, Any]:
    return {"seq_no": seq, "type": "assign", "parameters": values}


def call(seq: int, tool_name: str, output_vars: Any = None, **params: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {"tool_name": tool_name, "tool_params": params}
    if output_vars is not None:
        parameters["output_vars"] = output_vars
    return {"seq_no": seq, "type": "calling", "parameters": parameters}


def jmp(seq: int, **parameters: Any) -> dict[str, Any]:
    return {"seq_no": seq, "type": "jmp", "parameters": parameters}
