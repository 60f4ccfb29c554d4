"""The page as a run inspector, in a real browser (Debian's Chromium through Playwright, against a
real `planvm serve`): addresses for runs and steps with back and forward, the timeline of steps
that ran at the same time, the plan graph of a loop, a fork compared with its parent, rendering
that never runs what a run holds, and axe-core's accessibility checks (axe-core from npm).

Screenshots of the views are written to the folder named by PAGE_SCREENSHOTS when it is set
(docs/ holds the ones the documentation shows)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from test_page import CHROMIUM, browser  # noqa: F401 - the shared browser fixture

from tests.serve_helpers import Server, slow_plan

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'


def echo(seq: int, text: str, into: str, seconds: float) -> dict[str, object]:
    return {"seq_no": seq, "type": "calling",
            "parameters": {"tool_name": "slow_echo", "tool_params": {"text": text, "seconds": seconds}, "output_vars": [into]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("inspector-home")
    with Server(home) as running:
        yield running


@pytest.fixture
def page(browser):  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == []


def start(server: Server, body: dict[str, object]) -> str:
    with server.client() as client:
        answer = client.post("/v1/runs?wait=true", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["run_id"]


def shot(page, name: str) -> None:
    folder = os.environ.get("PAGE_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=False)


def test_runs_and_steps_have_addresses_and_back_and_forward_move_between_them(server, page):
    first = start(server, {"goal": "first of two", "plan": slow_plan(3, 0.01)})
    second = start(server, {"goal": "second of two", "plan": slow_plan(2, 0.01)})
    page.goto(f"{server.url}/runs/{first}?step=2")
    page.wait_for_selector("#run-status.completed")
    page.wait_for_selector("#detail-body:not([hidden])")
    assert page.inner_text("#run-goal") == "first of two"
    assert page.inner_text("#detail-meta").startswith("idx 2 · seq_no 2")
    assert page.locator("#steps li.selected").get_attribute("data-index") == "2"
    shot(page, "page-run.png")
    # Every run in the list is a link; following one changes the address.
    page.click(f"#runs li[data-run-id='{second}'] a")
    page.wait_for_function("(goal) => document.querySelector('#run-goal')?.textContent === goal", arg="second of two")
    assert page.url.endswith(f"/runs/{second}")
    page.go_back()
    page.wait_for_function("(goal) => document.querySelector('#run-goal')?.textContent === goal", arg="first of two")
    assert page.url.endswith(f"/runs/{first}?step=2")
    page.wait_for_selector("#detail-body:not([hidden])")
    page.go_forward()
    page.wait_for_function("(goal) => document.querySelector('#run-goal')?.textContent === goal", arg="second of two")
    # An address that names no run says so inline.
    page.goto(f"{server.url}/runs/ffffffffffff")
    page.wait_for_selector("#notice:not([hidden])")
    assert "no run with id" in page.inner_text("#notice")


def test_the_timeline_shows_steps_that_ran_at_the_same_time(server, page):
    plan = [echo(0, "left", "a", 0.5), echo(1, "right", "b", 0.5),
            {"seq_no": 2, "type": "assign", "parameters": {"final_answer": "${a} and ${b}"}}]
    run_id = start(server, {"goal": "two at once", "plan": plan})
    page.goto(f"{server.url}/runs/{run_id}?tab=timeline")
    page.wait_for_selector("[data-testid=timeline] [data-seq='2']")
    bars = {seq: page.locator(f"[data-testid=timeline] [data-seq='{seq}']") for seq in (0, 1, 2)}
    start0, end0 = int(bars[0].get_attribute("data-start")), int(bars[0].get_attribute("data-end"))
    start1, end1 = int(bars[1].get_attribute("data-start")), int(bars[1].get_attribute("data-end"))
    assert end0 - start0 >= 450 and end1 - start1 >= 450
    assert start1 < end0 and start0 < end1  # they overlap in time
    # and on the screen: both bars measured in one evaluation, since the view may be drawn again
    # (the run's final event arrives after the first drawing) between two separate measurements
    page.wait_for_function("""() => {
      const [a, b] = [0, 1].map((seq) => document.querySelector(`[data-testid=timeline] [data-seq='${seq}']`));
      if (!a || !b) return false;
      const [ra, rb] = [a.getBoundingClientRect(), b.getBoundingClientRect()];
      return ra.width > 0 && rb.width > 0 && rb.x < ra.x + ra.width && ra.x < rb.x + rb.width;
    }""", timeout=5000)
    assert int(bars[2].get_attribute("data-start")) >= max(end0, end1) - 5  # the join comes after both
    shot(page, "page-timeline.png")
    bars[1].click()
    page.wait_for_function("() => new URL(location.href).searchParams.get('step') === '1'")


def test_the_plan_graph_shows_a_loop_and_how_often_it_ran(page, tmp_path):
    from fake_openai import FakeChatServer

    loop = [{"seq_no": 0, "type": "assign", "parameters": {"i": 0}},
            {"seq_no": 1, "type": "assign", "parameters": {"i": "${i} + 1"}},
            {"seq_no": 2, "type": "jmp", "parameters": {"condition_prompt": "Is ${i} below 3?", "jump_if_true": 1}},
            {"seq_no": 3, "type": "assign", "parameters": {"final_answer": "${i}"}}]
    with FakeChatServer() as model:  # the fake at the edge: it decides the loop's condition
        for verdict in (True, True, False):
            model.reply(json.dumps({"result": verdict, "explanation": "counting"}))
        env = {"PLANVM_LLM_BASE_URL": model.url, "PLANVM_LLM_MODEL": "condition"}
        with Server(tmp_path / "home", env=env) as server:
            run_id = start(server, {"goal": "count to three", "plan": loop})
            page.goto(f"{server.url}/runs/{run_id}?tab=graph")
            page.wait_for_selector("[data-testid=plan-graph] g[data-seq='3'].executed")
            graph = page.locator("[data-testid=plan-graph]")
            assert graph.locator("g[data-seq]").count() == 4  # one node per instruction
            assert [graph.locator(f"g[data-seq='{seq}']").get_attribute("data-runs") for seq in range(4)] == ["1", "3", "3", "1"]
            assert "×3" in graph.locator("g[data-seq='1']").text_content()
            back = graph.locator("path.edge.back[data-from='2'][data-to='1']")
            assert back.count() == 1 and "taken" in back.get_attribute("class")  # the loop's edge, and it was taken
            assert graph.locator("path.edge.data[data-from='0'][data-to='1']").count() == 1  # i flows from seq 0 to seq 1
            shot(page, "page-graph.png")
            graph.locator("g[data-seq='2']").click()
            page.wait_for_function("() => new URL(location.href).searchParams.get('step') === '6'")  # its latest run


def test_a_fork_beside_its_parent(server, page):
    parent = start(server, {"goal": "compare me", "plan": slow_plan(3, 0.01)})
    edited = slow_plan(3, 0.01)
    edited[2]["parameters"]["tool_params"]["text"] = "edited"
    with server.client() as client:
        fork = client.post(f"/v1/runs/{parent}/fork?wait=true", json={"from_seq": 2, "plan": edited}).json()["run_id"]
    page.goto(f"{server.url}/runs/{fork}")
    page.wait_for_selector("#compare-link:not([hidden])")
    page.click("#compare-link")
    page.wait_for_selector("[data-testid=compare]")
    assert page.url.endswith(f"/runs/{fork}?compare={parent}")
    rows = page.locator("[data-testid=compare] tr.plan-row")
    assert [rows.nth(i).get_attribute("data-change") for i in range(rows.count())] == ["kept", "kept", "changed", "kept"]
    answers = page.inner_text("#compare-answers")
    assert "start-1-2" in answers and "edited" in answers
    changed_at_end = page.locator("[data-testid=compare] .diffs").last.locator("li[data-change='changed']")
    assert sorted(changed_at_end.nth(i).get_attribute("data-var") for i in range(changed_at_end.count())) == ["final_answer", "r2"]
    shot(page, "page-compare.png")


def test_what_a_run_holds_is_shown_as_text_never_run(server, page):
    # A goal, a tool's result and an answer that carry markup and script, and a javascript: link.
    plan = [echo(0, XSS, "payload", 0.0),
            {"seq_no": 1, "type": "assign",
             "parameters": {"final_answer": "**bold** ${payload} [click](javascript:window.__xss=1) [site](https://example.com)"}}]
    run_id = start(server, {"goal": f"hostile {XSS}", "plan": plan})
    page.goto(f"{server.url}/runs/{run_id}?step=0")
    page.wait_for_selector("#detail-body:not([hidden])")
    page.wait_for_selector("#answer strong")
    assert page.evaluate("() => window.__xss") is None
    assert XSS in page.inner_text("#run-goal")  # the markup is text
    assert "onerror" in page.inner_text("#detail-outputs")
    assert page.locator("#answer img, #answer script, #run img").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0
    assert page.locator("#answer a[href='https://example.com']").count() == 1
    headers = httpx.get(f"{server.url}/runs/{run_id}").headers
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "object-src 'none'" in policy


@pytest.fixture(scope="module")
def axe(tmp_path_factory) -> Path:
    """axe-core from npm (the accessibility rules the test runs in the page)."""
    folder = tmp_path_factory.mktemp("axe")
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed for the accessibility test (Node and npm are part of this project's machines)")
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), "axe-core@4"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "node_modules" / "axe-core" / "axe.min.js"


def test_no_serious_accessibility_problems(server, browser, axe):  # noqa: F811
    parent = start(server, {"goal": "accessible", "plan": slow_plan(2, 0.01)})
    edited = slow_plan(2, 0.01)
    edited[1]["parameters"]["tool_params"]["text"] = "other"
    with server.client() as client:
        fork = client.post(f"/v1/runs/{parent}/fork?wait=true", json={"from_seq": 1, "plan": edited}).json()["run_id"]
    # axe is injected as a script: a context that lets the test (not the page) bypass the CSP.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    views = {"runs list": "/", "a run": f"/runs/{parent}?step=1", "compare": f"/runs/{fork}?compare={parent}",
             "timeline": f"/runs/{parent}?tab=timeline", "graph": f"/runs/{parent}?tab=graph", "library": "/library"}
    problems = {}
    for name, path in views.items():
        page.goto(server.url + path)
        page.wait_for_selector("#runs li")
        page.wait_for_timeout(300)
        page.add_script_tag(path=str(axe))
        result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                               ".filter(v => ['serious', 'critical'].includes(v.impact)).map(v => v.id + ': ' + v.help)")
        if result:
            problems[name] = result
    context.close()
    assert problems == {}


def test_the_page_works_at_700_px_and_by_keyboard(server, page):
    run_id = start(server, {"goal": "narrow", "plan": slow_plan(2, 0.01)})
    page.set_viewport_size({"width": 700, "height": 900})
    page.goto(f"{server.url}/runs/{run_id}?tab=graph")
    # A node can be chosen once its steps have arrived on the stream (an instruction that has not run has no step).
    page.wait_for_selector("[data-testid=plan-graph] g[data-seq='1'].executed")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 700, width
    page.focus("[data-testid=plan-graph] g[data-seq='1']")
    page.keyboard.press("Enter")
    page.wait_for_function("() => new URL(location.href).searchParams.get('step') === '1'")
    page.wait_for_selector("#detail-body:not([hidden])")
    json.loads(page.inner_text("#detail-variables"))  # the variables are shown


def test_no_page_module_writes_html():
    """The page's own scripts build the DOM from text nodes; only the vendored sanitizer parses HTML."""
    static = Path(__file__).resolve().parents[2] / "planvm" / "server" / "static"
    for path in [*static.glob("*.js"), *static.glob("views/*.js")]:
        text = path.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text.replace("(no innerHTML anywhere in the page)", ""), f"{path.name} uses {sink}"
    page = (static / "index.html").read_text(encoding="utf-8")
    import re

    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []  # no inline script
    assert re.findall(r"\son[a-z]+\s*=", page) == []  # no inline event handler
