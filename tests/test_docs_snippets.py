"""Every Python snippet in the README and docs/ runs verbatim, as a reader would paste it: the
snippets of one page run in order as one script, in an empty folder with a private PLANVM_HOME.
Snippets that plan are given a model: FakeChatServer (a scripted chat-completions server at the
edge) answers the planner with a small plan and any other prompt with a sentence; a snippet of
the service's client talks to a real `planvm serve` (the address it names replaced by the test
server's). A ``print``
whose comment shows its output must print that."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from fake_openai import FakeChatServer
from serve_helpers import Server

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PLAN = [{"seq_no": 0, "type": "calling",
         "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "When does a run end?"}, "output_vars": "final_answer"}}]


def snippets(page) -> list[str]:
    return SNIPPET.findall(page.read_text())


def answer(body: dict) -> str:
    prompt = json.dumps(body.get("messages", []))
    if "seq_no" in prompt:  # the planner's prompt describes the plan format
        return f"<think>One generation answers it.</think>\n```json\n{json.dumps(PLAN)}\n```"
    return "A run ends when a step assigns final_answer."


def test_the_docs_have_snippets():
    assert sum(len(snippets(p)) for p in PAGES) >= 3


@pytest.mark.parametrize("page", [p for p in PAGES if snippets(p)], ids=lambda p: p.name)
def test_every_snippet_runs_verbatim(page, tmp_path):
    script = "\n\n".join(snippets(page))
    with contextlib.ExitStack() as stack:
        if "Client(" in script:  # a snippet of the service's client: a real `planvm serve` at the address it names
            server = stack.enter_context(Server(tmp_path / "served"))
            script = script.replace("http://127.0.0.1:8000", server.url)
        model = stack.enter_context(FakeChatServer())
        model.responder = answer
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANVM_", "OPENAI_"))}
        env.update(PLANVM_HOME=str(tmp_path / "home"), PLANVM_LLM_BASE_URL=model.url, PLANVM_LLM_MODEL="test-model",
                   PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{page.name}: a snippet failed:\n{out.stderr[-2000:]}"
    # A print whose comment shows its output must print that.
    for shown in re.findall(r"^\s*print\(.*\)\s+#\s*(.+?)\s*$", script, re.M):
        assert shown in out.stdout, f"{page.name}: expected {shown!r} in {out.stdout!r}"
