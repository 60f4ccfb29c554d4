"""One worker serving several namespaces (planvm.worker.Worker): the namespaces take turns, each
run is executed by its own namespace's engine (its tools), a namespace it does not serve is never
touched, and a namespace stopped by its token quota is passed over, its runs left queued. On
SQLite, PostgreSQL and MariaDB. No fakes: plugins, stores, the engine."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from databases import BACKENDS, store_url_for

from planvm.engine import Engine, EngineConfig
from planvm.worker import Worker
from vm import BadInput

LOGGING_PLUGIN = '''
import os
from pathlib import Path
from tools import tool

@tool
def {name}(n: int) -> int:
    """Log the call, then return n."""
    with Path(os.environ["NS_WORKER_LOG"]).open("a") as log:
        log.write("{team}:" + str(n) + "\\n")
    return n
'''


def calling(tool: str, n: int) -> list[dict[str, object]]:
    return [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": tool, "tool_params": {"n": n}, "output_vars": ["final_answer"]}}]


ASSIGN = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}]


@pytest.fixture(params=BACKENDS)
def teams(request, tmp_path, monkeypatch):
    """planvm.toml: alpha and beta, each with a tool of its own that logs its calls; gamma with none."""
    with store_url_for(request.param, tmp_path) as store:
        for team in ("alpha", "beta"):
            (tmp_path / f"{team}.py").write_text(LOGGING_PLUGIN.format(name=f"{team}_tool", team=team))
        (tmp_path / "planvm.toml").write_text(
            f"store = {json.dumps(store)}\n"
            f'[namespaces.alpha]\nplugins = [{json.dumps(str(tmp_path / "alpha.py"))}]\ntokens_per_day = 100\n'
            f'[namespaces.beta]\nplugins = [{json.dumps(str(tmp_path / "beta.py"))}]\n'
            f"[namespaces.gamma]\n")
        monkeypatch.setenv("PLANVM_CONFIG", str(tmp_path / "planvm.toml"))
        monkeypatch.setenv("NS_WORKER_LOG", str(tmp_path / "calls.log"))
        yield tmp_path


def calls(folder: Path) -> list[str]:
    log = folder / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def serve(engine: Engine, namespaces: list[str]) -> int:
    return asyncio.run(Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, once=True, namespaces=namespaces).serve())


def test_the_namespaces_take_turns_each_run_with_its_own_tools(teams):
    with Engine(EngineConfig.load(), role="worker") as engine:
        alpha, beta, gamma = (engine.in_namespace(name) for name in ("alpha", "beta", "gamma"))
        ids = {"alpha": [alpha.enqueue(None, plan=calling("alpha_tool", n)) for n in range(3)],  # all older than beta's
               "beta": [beta.enqueue(None, plan=calling("beta_tool", n)) for n in range(3)]}
        left = [gamma.enqueue(None, plan=ASSIGN), engine.enqueue(None, plan=ASSIGN)]
        assert serve(engine, ["alpha", "beta"]) == 6
        assert calls(teams) == ["alpha:0", "beta:0", "alpha:1", "beta:1", "alpha:2", "beta:2"]
        for name, runs in ids.items():
            view = engine.in_namespace(name)
            assert [view.get_run(r).status for r in runs] == ["completed"] * 3
        # Not served: left alone.
        assert gamma.get_run(left[0]).status == "queued" and engine.get_run(left[1]).status == "queued"


def test_a_namespace_whose_tokens_are_spent_is_passed_over_its_runs_left_queued(teams, caplog):
    with Engine(EngineConfig.load(), role="worker") as engine:
        alpha, beta = engine.in_namespace("alpha"), engine.in_namespace("beta")
        waiting = [alpha.enqueue(None, plan=calling("alpha_tool", n)) for n in range(2)]
        served = [beta.enqueue(None, plan=calling("beta_tool", n)) for n in range(2)]
        alpha.store.count_tokens(100)  # alpha's quota of the day is used up (by runs of another process)
        with caplog.at_level(logging.WARNING, logger="planvm.worker"):
            assert serve(engine, ["alpha", "beta"]) == 2
        assert calls(teams) == ["beta:0", "beta:1"]
        assert [alpha.get_run(r).status for r in waiting] == ["queued", "queued"]
        assert [beta.get_run(r).status for r in served] == ["completed", "completed"]
        assert "namespace 'alpha' used its 100 tokens of today" in caplog.text and "its runs wait" in caplog.text


def test_a_worker_serves_declared_namespaces_each_once(teams):
    with Engine(EngineConfig.load(), role="worker") as engine:
        with pytest.raises(BadInput, match="no namespace 'nope' is declared"):
            Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, namespaces=["alpha", "nope"])
        with pytest.raises(BadInput, match="'beta' is named more than once"):
            Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1, namespaces=["beta", "alpha", "beta"])
        assert Worker(engine, concurrency=1, poll_seconds=0.05, grace_seconds=1).namespaces == ["default"]
        assert Worker(engine.in_namespace("gamma"), concurrency=1, poll_seconds=0.05, grace_seconds=1).namespaces == ["gamma"]
