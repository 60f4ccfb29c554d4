"""The command line, run as a real subprocess: output, exit codes, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, assign, call, jmp, planvm

PLUGIN = EXAMPLES / "plugins" / "offline_tools.py"



def write(tmp_path: Path, data, name: str = "plan.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


TOOLS_PLUGIN = '''
from tools import tool

@tool
def boom(message: str) -> str:
    """Always raises."""
    raise RuntimeError(message)

@tool
def listing() -> list:
    """Returns a list."""
    return [1, 2]

@tool
def llm_generate(prompt: str) -> str:
    """A plugin's own llm_generate (needs --no-builtins)."""
    return "plugin says: " + prompt
'''


def test_schema_prints_generated_json_schema():
    out = planvm("schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    assert schema["type"] == "array" and "CallingParameters" in schema["$defs"]


def test_validate_ok():
    out = planvm("validate", str(EXAMPLES / "plans" / "retrieval_answer.json"))
    assert out.returncode == 0 and out.stdout.strip() == "valid"


def test_validate_lists_every_problem_seq_no_first(tmp_path):
    plan = [call(0, "nope", "x"), jmp(1, target_seq=9), assign(2, y="${ghost}")]
    out = planvm("validate", write(tmp_path, plan))
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert lines == [
        "seq_no 0: unknown tool 'nope' (registered: llm_generate, retrieve_knowledge_graph, vector_search)",
        "seq_no 1: jumps to seq_no 9, which does not exist",
    ]


def test_exec_prints_final_answer():
    out = planvm("exec", str(EXAMPLES / "plans" / "budget.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Check-in 2024-10-15: 3 nights cost 369.0 in total."


def test_exec_json():
    out = planvm("exec", str(EXAMPLES / "plans" / "budget.json"), "--json")
    data = json.loads(out.stdout)
    assert data["status"] == "completed" and data["steps"] == 4 and data["error"] is None
    assert data["variables"]["total"] == 369.0
    assert data["final_answer"].startswith("Check-in 2024-10-15")


def test_exec_with_plugin_replacing_builtins():
    out = planvm("exec", str(EXAMPLES / "plans" / "multi_key_output.json"), "--plugin", str(PLUGIN), "--no-builtins")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Summary: ")


def test_plugin_name_clash_without_no_builtins(tmp_path):
    plugin = write(tmp_path, TOOLS_PLUGIN, "tools_plugin.py")
    out = planvm("exec", str(EXAMPLES / "plans" / "budget.json"), "--plugin", plugin)
    assert out.returncode == 2
    assert "a tool named 'llm_generate' is already registered" in out.stderr


def test_allow_list(tmp_path):
    out = planvm("exec", str(EXAMPLES / "plans" / "multi_key_output.json"), "--plugin", str(PLUGIN), "--no-builtins", "--allow-tool", "vector_search")
    assert out.returncode == 2
    assert "seq_no 2: tool 'llm_generate' is not in this run's allow-list (vector_search)" in out.stderr


# (plan file content, extra args, exit code, message on stderr)
BAD_INPUT = [
    (None, [], 2, "no such file"),
    ("[{not json", [], 2, "not valid JSON (line 1, column 3"),
    ({"seq_no": 0, "type": "assign"}, [], 2, "a plan is a JSON array of instructions, got an object"),
    ([{"seq_no": "zero", "type": "assign", "parameters": {"final_answer": 1}}], [], 2, "seq_no: Input should be a valid integer"),
    ([call(0, "boom", 7, message="x")], ["--plugin", "{plugin}", "--no-builtins"], 2, "seq_no 0: parameters.output_vars"),
    ([call(0, "boom", "final_answer", message="kaput")], ["--plugin", "{plugin}", "--no-builtins"], 1, "seq_no 0 (calling): tool 'boom' raised RuntimeError: kaput"),
    ([call(0, "listing", ["a", "b"]), assign(1, final_answer="${a}")], ["--plugin", "{plugin}", "--no-builtins"], 1, "returned a list, but output_vars [a, b] need a JSON object"),
    ([assign(0, i=0), assign(1, i="${i} + 1"), jmp(2, target_seq=1), assign(3, final_answer="${i}")], [], 2, "no reachable step assigns 'final_answer'"),
    ([assign(0, final_answer="9 ** 9 ** 9")], [], 1, "seq_no 0 (assign): cannot evaluate '9 ** 9 ** 9': the result is too large"),
    ([assign(0, final_answer="9**9**9")], [], 1, "the result is too large"),
    ([assign(0, x=1)], ["--plugin", "{missing}"], 2, "no such file"),
]


@pytest.mark.parametrize(("content", "args", "code", "message"), BAD_INPUT)
def test_bad_input_gets_one_clear_error_fast(tmp_path, content, args, code, message):
    plan = str(tmp_path / "absent.json") if content is None else write(tmp_path, content)
    plugin = write(tmp_path, TOOLS_PLUGIN, "tools_plugin.py")
    args = [a.format(plugin=plugin, missing=str(tmp_path / "nope.py")) for a in args]
    started = time.perf_counter()
    out = planvm("exec", plan, *args)
    elapsed = time.perf_counter() - started
    assert out.returncode == code, out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert elapsed < 5  # a subprocess start included; the run itself is milliseconds


def test_failed_run_json_has_error_and_exit_1(tmp_path):
    plan = write(tmp_path, [assign(0, x=0), assign(1, final_answer="${x} / 0")])
    out = planvm("exec", plan, "--json")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["status"] == "failed" and data["steps"] == 2
    assert "division by zero" in data["error"] and data["variables"] == {"x": 0}


def test_invalid_plan_json_output(tmp_path):
    out = planvm("exec", write(tmp_path, [assign(0, x=1)]), "--json")
    assert out.returncode == 2
    data = json.loads(out.stdout)
    assert data["status"] == "invalid" and data["problems"] == ["plan: no reachable step assigns 'final_answer'; the last step should assign it"]


def test_step_budget_flag(tmp_path):
    # A run-time loop needs an LLM condition; a plugin-free way to reach the budget is a long plan.
    plan = [assign(i, **{f"v{i}": i}) for i in range(20)] + [assign(20, final_answer=1)]
    out = planvm("exec", write(tmp_path, plan), "--max-steps", "5")
    assert out.returncode == 1
    assert "seq_no 5 (assign): step budget of 5 exceeded" in out.stderr


def test_max_steps_must_be_positive(tmp_path):
    out = planvm("exec", write(tmp_path, [assign(0, final_answer=1)]), "--max-steps", "0")
    assert out.returncode == 2 and "max-steps" in out.stderr


def test_time_budget_ends_the_process_even_if_a_sync_tool_hangs(tmp_path):
    plugin = write(
        tmp_path,
        "import time\nfrom tools import tool\n\n@tool\ndef stuck() -> str:\n    \"\"\"Never returns in time.\"\"\"\n    time.sleep(60)\n    return 'late'\n",
        "stuck.py",
    )
    plan = write(tmp_path, [call(0, "stuck", "final_answer")])
    started = time.perf_counter()
    out = planvm("exec", plan, "--plugin", plugin, "--max-seconds", "0.5", timeout=20)
    assert time.perf_counter() - started < 10
    assert out.returncode == 1
    assert "wall-clock budget of 0.5 s exceeded" in out.stderr


def test_progress_lines_go_to_a_terminal_stderr(tmp_path):
    import os
    import pty

    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "planvm", "exec", str(EXAMPLES / "plans" / "budget.json")],
            stdout=subprocess.PIPE, stderr=secondary, stdin=subprocess.DEVNULL, cwd=ROOT, timeout=30, text=True,
        )
        os.close(secondary)
        secondary = None
        chunks = []
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if secondary is not None:
            os.close(secondary)
        os.close(primary)
    progress = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert proc.stdout.startswith("Check-in")  # the answer stays on stdout
    for seq in range(4):
        assert f"seq_no   {seq}  assign" in progress
    assert '{"total": 369.0}' in progress  # a preview of what the step set
