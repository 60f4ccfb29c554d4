"""A streamed plan that turns out invalid starts no side-effecting tool: the real `planvm run
--stream-plan` command with a plugin whose side-effecting tool writes a file, against
FakeChatServer (a local HTTP server speaking the chat-completions protocol; scripted replies
streamed in small pieces), the fake at the edge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import planvm
from fake_openai import FakeChatServer, stream

pytestmark = pytest.mark.faults

PLUGIN = '''
import time
from pathlib import Path
from tools import tool

LOG = Path(__file__).with_name("calls.log")


@tool
def search(query: str) -> str:
    """Look something up.

    Args:
        query: What to look up.
    """
    with LOG.open("a") as log:
        log.write(f"search {query}\\n")
    time.sleep(0.1)
    return "found " + query


@tool(side_effects=True)
def write_file(path: str, text: str) -> str:
    """Write a file.

    Args:
        path: Where.
        text: What.
    """
    with LOG.open("a") as log:
        log.write(f"write_file {path}\\n")
    Path(path).write_text(text)
    return "written"


@tool
def touch(path: str) -> str:
    """Create a file (not marked: the run asks for approval of it).

    Args:
        path: Where.
    """
    Path(path).write_text("")
    return "touched"
'''


def call(seq: int, name: str, params: dict[str, Any], out: str) -> dict[str, Any]:
    return {"seq_no": seq, "type": "calling", "parameters": {"tool_name": name, "tool_params": params, "output_vars": [out]}}


def streamed(plan: list[dict[str, Any]]) -> tuple[Any, ...]:
    text = f"<think>plan</think>\n```json\n{json.dumps(plan, indent=1)}\n```"
    return stream([text[i:i + 10] for i in range(0, len(text), 10)], pause=0.01)


def run(tmp_path: Path, server: FakeChatServer, *extra: str) -> Any:
    plugin = tmp_path / "plugin_tools.py"
    plugin.write_text(PLUGIN, encoding="utf-8")
    env = {"PLANVM_LLM_BASE_URL": server.url, "PLANVM_LLM_MODEL": "planner", "PLANVM_LLM_API_KEY": "", "OPENAI_API_KEY": ""}
    return planvm("run", "write it down", "--stream-plan", "--no-builtins", "--no-library", "--plugin", str(plugin),
                  "--store", str(tmp_path / "runs.sqlite"), "--json", *extra, env=env)


def invalid(target: Path, tool: str = "write_file") -> list[dict[str, Any]]:
    """Valid as far as it goes: a search, the side-effecting call, then an answer from a variable
    nothing assigns (found only once the plan is whole)."""
    params = {"path": str(target), "text": "hello"} if tool == "write_file" else {"path": str(target)}
    return [call(0, "search", {"query": "q"}, "s"), call(1, tool, params, "w"),
            {"seq_no": 2, "type": "assign", "parameters": {"final_answer": "${s} ${nowhere}"}}]


@pytest.mark.parametrize("tool", ["write_file", "touch"])
def test_an_invalid_streamed_plan_fails_with_its_repairs_and_never_starts_a_side_effecting_tool(tmp_path, tool):
    target = tmp_path / "side-effect.txt"
    with FakeChatServer() as server:
        server.actions.extend(streamed(invalid(target, tool)) for _ in range(3))  # the first reply and two repairs
        out = run(tmp_path, server, *(["--approve-tool", "touch"] if tool == "touch" else []))
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "planning_failed" and "nowhere" in report["error"]
    assert not target.exists()
    log = (tmp_path / "calls.log").read_text().splitlines()
    assert log == ["search q"] * 3  # each attempt started its search while it was written; nothing else ran


def test_a_repaired_plan_runs_from_its_start_and_its_side_effect_happens_once(tmp_path):
    target = tmp_path / "side-effect.txt"
    valid = invalid(target)[:2] + [{"seq_no": 2, "type": "assign", "parameters": {"final_answer": "${s} ${w}"}}]
    with FakeChatServer() as server:
        server.actions.extend([streamed(invalid(target)), streamed(valid)])
        out = run(tmp_path, server)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["final_answer"] == "found q written" and target.read_text() == "hello"
    assert (tmp_path / "calls.log").read_text().splitlines() == ["search q", "search q", f"write_file {target}"]
