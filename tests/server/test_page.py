"""The service's page in a real browser (Debian's Chromium driven by Playwright): ask a goal, watch
steps arrive, read a step's variables, fork with an edited plan, approve a waiting call."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.serve_helpers import Server, slow_plan

CHROMIUM = os.environ.get("PLANVM_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium package or set PLANVM_TEST_CHROMIUM")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync"],
        )
        yield launched
        launched.close()


@pytest.fixture
def server(tmp_path: Path, example_kb: Path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "kb").symlink_to(example_kb)
    with Server(home, "--approve-tool", "send_email") as running:
        yield running


def test_the_page_runs_watches_forks_and_approves(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server.url + "/")

    # Ask a goal: the run opens, its steps and its answer appear.
    page.fill("#goal", "How do I resume a run?")
    page.click("#ask button")
    page.wait_for_selector("#run-status.completed", timeout=60_000)
    assert page.locator("#steps li").count() == 3
    assert "planvm resume" in page.inner_text("#answer")

    # A slower run submitted elsewhere: opened from the list, its steps arrive while it runs.
    with server.client() as client:
        slow_id = client.post("/v1/runs", json={"goal": "watch me", "plan": slow_plan(5, 0.8)}).json()["run_id"]
    page.fill("#search", "watch me")  # the list refreshes as the search changes
    page.click(f"#runs li[data-run-id='{slow_id}']", timeout=15_000)
    page.wait_for_selector("#run-status.running", timeout=10_000)
    seen_while_running = page.locator("#steps li").count()
    page.wait_for_selector("#run-status.completed", timeout=60_000)
    assert seen_while_running < 6 and page.locator("#steps li[data-index]").count() == 6

    # A step's variables, and what it changed.
    page.click("#steps li[data-index='2']")
    page.wait_for_selector("#detail-body:not([hidden])")
    variables = json.loads(page.inner_text("#detail-variables"))
    assert variables["r2"] == "start-1-2" and "r3" not in variables
    changed = page.locator("#detail-diff li")  # a coloured diff, not JSON
    assert changed.count() == 1 and changed.get_attribute("data-var") == "r2" and changed.get_attribute("data-change") == "added"

    # Fork from seq_no 3 with an edited plan: a new branch, shown in the tree.
    plan = json.loads(page.input_value("#fork-plan"))
    plan[3]["parameters"]["tool_params"]["text"] = "edited"
    plan[3]["parameters"]["tool_params"]["seconds"] = 0.01
    plan[4]["parameters"]["tool_params"]["seconds"] = 0.01
    page.click("#steps li[data-index='3']")
    # Selecting a step refills the form with the run's plan once its variables have loaded: wait for that.
    page.wait_for_function("() => document.querySelector('#detail-variables').textContent.includes('r3')")
    page.fill("#fork-plan", json.dumps(plan))
    page.click("#fork button")
    # The new branch is open (its parent is a link in the tree, no longer the current run) and done.
    page.wait_for_function(
        """(parent) => {
            const link = document.querySelector(`#tree a[data-run-id='${parent}']`);
            return link && !link.classList.contains('current') && document.querySelector('#run-status').textContent === 'completed';
        }""",
        arg=slow_id,
        timeout=60_000,
    )
    page.wait_for_function("() => document.querySelector('#answer').textContent.includes('edited-4')", timeout=10_000)
    page.click("#steps li[data-index='3']")
    page.wait_for_function("() => document.querySelector('#detail-variables').textContent.includes('edited')")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    # A graded branch, marked best by a plan search: the parent's tree shows its score and the mark.
    from vm import RunStore

    fork_id = page.get_attribute("#tree a.current", "data-run-id")
    store = RunStore(server.home / "runs.sqlite")
    store.set_judgement(fork_id, {"score": 9, "accept": True, "suggestion": "", "step_notes": []})
    store.mark_best(fork_id, slow_id)
    store.close()
    page.click(f"#tree a[data-run-id='{slow_id}']")
    page.wait_for_function(
        "(fork) => (document.querySelector(`#tree a[data-run-id='${fork}']`) || {}).textContent?.includes('score 9 ★ best')",
        arg=fork_id, timeout=15_000,
    )

    # A waiting call: approve it from the page.
    approval = [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "send_email", "tool_params": {"to": "ops@example.com", "body": "hi"},
                                                        "output_vars": ["final_answer"]}},
    ]
    with server.client() as client:
        waiting_id = client.post("/v1/runs", json={"goal": "mail ops", "plan": approval}).json()["run_id"]
    page.fill("#search", "mail ops")
    page.click(f"#runs li[data-run-id='{waiting_id}']", timeout=15_000)
    page.wait_for_selector("#pending:not([hidden])", timeout=15_000)
    assert "send_email" in page.inner_text("#pending-text")
    page.click("#approve-button")
    page.wait_for_selector("#run-status.completed", timeout=30_000)
    assert "sent to ops@example.com" in page.inner_text("#answer")
    assert server.calls().count("send_email ops@example.com hi") == 1
    if os.environ.get("PAGE_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["PAGE_SCREENSHOT"])


def test_a_server_with_a_token_signs_the_page_in_through_its_form(browser, tmp_path, example_kb):
    """With --token the page signs in through the form, then runs, watches and cancels with its
    session (its writes carry the CSRF token); a session that ends sends it back to the form."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "kb").symlink_to(example_kb)
    with Server(home, "--token", "page-token") as server:
        bearer = {"Authorization": "Bearer page-token"}
        with server.client(headers=bearer) as client:
            slow_id = client.post("/v1/runs", json={"goal": "cancel me", "plan": slow_plan(40, 0.5)}).json()["run_id"]
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        # A link to a run leads to the form; a wrong token shows the form again, saying so.
        page.goto(f"{server.url}/runs/{slow_id}")
        assert page.url.startswith(f"{server.url}/signin?next=")
        page.fill("#token", "not-it")
        page.click("form button[type=submit]")
        page.wait_for_selector("#signin-error")
        assert "not this server's token" in page.inner_text("#signin-error")

        # The right token opens the run the link named: running, in the list; cancelled from the page.
        page.fill("#token", "page-token")
        page.click("form button[type=submit]")
        page.wait_for_selector("#run-status.running", timeout=15_000)
        assert page.url == f"{server.url}/runs/{slow_id}"
        cookie = next(c for c in context.cookies() if c["name"] == "planvm_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and "page-token" not in cookie["value"]
        page.wait_for_selector(f"#runs li[data-run-id='{slow_id}']", timeout=15_000)
        page.click("#cancel-button")
        page.wait_for_selector("#run-status.cancelled", timeout=15_000)
        with server.client(headers=bearer) as client:
            assert client.get(f"/v1/runs/{slow_id}").json()["status"] == "cancelled"

        # A goal asked from the page runs to its answer.
        page.fill("#goal", "How do I resume a run?")
        page.click("#ask button")
        page.wait_for_selector("#run-status.completed", timeout=60_000)
        assert "planvm resume" in page.inner_text("#answer")

        # The session gone (here: its cookie dropped), the page's next request leads to the form.
        context.clear_cookies()
        page.click(f"#runs li[data-run-id='{slow_id}'] a")
        page.wait_for_url(f"{server.url}/signin?next=*", timeout=15_000)

        # Signed in again, then out: the page is closed until the form is used again.
        page.fill("#token", "page-token")
        page.click("form button[type=submit]")
        page.wait_for_selector("#signout:not([hidden])", timeout=15_000)
        page.click("#signout")
        page.wait_for_url(f"{server.url}/signin", timeout=15_000)
        page.goto(f"{server.url}/")
        assert page.url.startswith(f"{server.url}/signin?next=")
        context.close()
        assert errors == []
