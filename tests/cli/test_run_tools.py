"""A run remembers where its tools came from: resume, approve, fork and a live replay take the
plugin it was started with; a plugin that is gone or changed is one line saying which and what
to pass; wrong tools given by hand change nothing and are one line per problem."""

from __future__ import annotations

import json
import shutil

from conftest import planvm

PLUGIN = '''from tools import tool


@tool
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()
'''


def chain(n: int) -> list[dict[str, object]]:
    steps: list[dict[str, object]] = []
    for i in range(n):
        out = "final_answer" if i == n - 1 else f"v{i}"
        text = "a" if i == 0 else f"${{v{i - 1}}}"
        steps.append({"seq_no": i, "type": "calling",
                      "parameters": {"tool_name": "shout", "tool_params": {"text": text}, "output_vars": [out]}})
    return steps


def test_going_on_with_a_run_takes_the_tools_it_was_started_with(tmp_path):
    plugin = tmp_path / "shout.py"
    plugin.write_text(PLUGIN)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(chain(4)))
    store = str(tmp_path / "runs.sqlite")
    started = json.loads(planvm("exec", str(plan), "--plugin", str(plugin), "--approve-tool", "shout", "--store", store, "--json",
                                cwd=tmp_path).stdout)
    run_id = started["run_id"]
    assert started["status"] == "waiting"

    # Approving with no tool options: the run's own plugin, found again.
    out = planvm("approve", run_id, "--seq", "0", "--store", store, "--json", cwd=tmp_path)
    assert out.returncode == 3 and json.loads(out.stdout)["pending"]["seq_no"] == 1, out.stderr

    # Wrong tools by hand: one line for the problem (not one per step), and the run still waits.
    out = planvm("approve", run_id, "--seq", "1", "--store", store, "--no-builtins", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("unknown tool 'shout'") == 1 and "seq_no 0, 1, 2, 3" in out.stderr
    assert "leave every tool option out" in out.stderr
    assert json.loads(planvm("runs", "show", run_id, "--store", store, "--json").stdout)["status"] == "waiting"

    # A changed plugin, then a missing one: one line each, saying what to pass.
    plugin.write_text(PLUGIN + "\n# changed\n")
    out = planvm("approve", run_id, "--seq", "1", "--store", store, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: the plugin {plugin} changed since run {run_id} was started with it; pass --plugin {plugin} to go on with it as "
        f"it is now"]
    moved = tmp_path / "moved.py"
    shutil.move(plugin, moved)
    out = planvm("approve", run_id, "--seq", "1", "--store", store, cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "is not there any more" in out.stderr
    # Naming the plugin anew goes on with it.
    out = planvm("approve", run_id, "--seq", "1", "--store", store, "--plugin", str(moved), "--json", cwd=tmp_path)
    assert out.returncode == 3, out.stderr

    # Fork and a live replay of another run take its plugin too.
    shutil.move(moved, plugin)
    plugin.write_text(PLUGIN)
    done = json.loads(planvm("exec", str(plan), "--plugin", str(plugin), "--store", store, "--json", cwd=tmp_path).stdout)
    assert done["status"] == "completed" and done["final_answer"] == "A"
    forked_plan = tmp_path / "forked.json"
    forked_plan.write_text(json.dumps(chain(4)[:3] + [{"seq_no": 3, "type": "assign", "parameters": {"final_answer": "${v2}!"}}]))
    forked = planvm("fork", done["run_id"], "--from", "3", "--plan", str(forked_plan), "--store", store, "--json", cwd=tmp_path)
    assert forked.returncode == 0 and json.loads(forked.stdout)["final_answer"] == "A!", forked.stderr
    live = planvm("replay", done["run_id"], "--live", "--store", store, "--json", cwd=tmp_path)
    assert live.returncode == 0 and json.loads(live.stdout)["ok"] is True, live.stderr
