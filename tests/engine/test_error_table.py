"""One error table: the command line, the service and the MCP server answer every kind of error as
planvm/engine/errors.py says, and docs/architecture.md shows that table. Real front-end code,
no fakes (the errors are raised as the engine raises them)."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from planner.judge import JudgeError, NothingToJudge
from planvm.engine.errors import answer_for, markdown_table
from vm.errors import (
    BackendUnavailable,
    BadInput,
    ForkError,
    LLMError,
    PlanLoadError,
    PlanningError,
    ReplayError,
    RunBusy,
    RunNotFound,
    RunStateError,
    StoreError,
    StoreUnavailable,
)

SAMPLES = [
    RunNotFound("abc"), StoreUnavailable("down"), RunStateError("done", run_id="a", status="completed"),
    RunBusy("a", "host:1"), ForkError("no step 9"), NothingToJudge("no answer"), JudgeError("unreadable"),
    PlanLoadError("not JSON"), PlanningError("no plan", attempts=[]), BadInput("bad"), LLMError("500"),
    BackendUnavailable("no kb"), StoreError("locked"), ReplayError("changed"), RuntimeError("a bug"),
]


def test_the_docs_show_the_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    shown = re.search(r"<!-- error-table -->\n\n(.*?)\n\n<!-- /error-table -->", text, re.S)
    assert shown is not None and shown.group(1) == markdown_table()


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_front_end_answers_as_the_table_says(exc):
    from mcp.server.mcpserver.exceptions import ToolError

    from planvm.cli.common import fail
    from planvm.mcp.server import _told
    from planvm.server.app import _status_for

    answer = answer_for(exc)
    assert _status_for(exc) == answer.http
    with pytest.raises(SystemExit) as exited:
        fail(exc, True)
    assert exited.value.code == answer.exit
    with pytest.raises(ToolError) as told:
        with _told():
            raise exc
    assert ("error id" in str(told.value)) is answer.bug
    if not answer.bug:
        assert str(exc) in str(told.value)


def test_planvm_errors_are_never_answered_as_bugs():
    assert not any(answer_for(e).bug for e in SAMPLES if not isinstance(e, RuntimeError))
    assert answer_for(RuntimeError("x")).http == 500 and answer_for(RuntimeError("x")).exit == 1


def test_the_service_answers_a_missing_run_with_the_tables_status(tmp_path):
    from fastapi.testclient import TestClient

    from planvm.engine import Engine
    from planvm.server import create_app

    engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True})
    with TestClient(create_app(engine)) as client:
        assert client.get("/v1/runs/nope").status_code == answer_for(RunNotFound("nope")).http
