"""Messages users met that said something untrue: a step budget blamed on a jump loop in a plan
without jumps, and a missing run 'in the store the run store'. Real VM, engine and service."""

from __future__ import annotations

from conftest import assign, jmp, planvm
from fastapi.testclient import TestClient

from planvm.engine import Engine
from planvm.server import create_app
from tools import ToolRegistry
from vm import VM, Limits


def test_a_step_budget_without_jumps_does_not_blame_a_loop():
    plan = [assign(i, **{f"v{i}": i}) for i in range(5)] + [assign(5, final_answer="x")]
    result = VM(ToolRegistry(), limits=Limits(max_steps=3)).run(plan)
    message = str(result.error)
    assert "step budget of 3 exceeded" in message and "max_steps" in message
    assert "loop" not in message


def test_a_step_budget_spent_in_a_loop_names_the_jump():
    plan = [assign(0, n=0), assign(1, n="${n} + 1"), jmp(2, condition="${n} > 0", jump_if_true=1), assign(3, final_answer="x")]
    result = VM(ToolRegistry(), limits=Limits(max_steps=10)).run(plan)
    assert "the jmp at seq_no 2 loops back to seq_no 1" in str(result.error)


def test_a_missing_run_is_missing_from_the_run_store(tmp_path):
    engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True})
    with TestClient(create_app(engine)) as client:
        answer = client.get("/v1/runs/nope")
    assert answer.status_code == 404
    message = answer.json()["error"]["message"]
    assert "no run with id 'nope' in the run store" in message and "the store the" not in message
    assert str(tmp_path) not in message
    out = planvm("runs", "show", "nope", env={"PLANVM_STORE": str(tmp_path / "runs.sqlite")})
    assert f"in {tmp_path / 'runs.sqlite'}" in out.stderr and "the store" not in out.stderr
