"""What only the page asks the service for: what it can do (/v1/info) and the plan library
(list, remove), through FastAPI's TestClient on a real engine and store; and the page's shell at
every address it knows, with its Content-Security-Policy."""

from __future__ import annotations

from fastapi.testclient import TestClient

from planner.library import PlanLibrary
from planvm.engine import Engine
from planvm.server import create_app


def test_info_the_library_and_the_page_addresses(tmp_path):
    engine = Engine({"store_path": str(tmp_path / "runs.sqlite"), "no_builtins": True})
    plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "kept"}}]
    with TestClient(create_app(engine)) as client:
        info = client.get("/v1/info").json()
        assert info["models"] == {"planner": False, "answer": False, "condition": False, "judge": False}
        assert client.get("/v1/library").json() == {"entries": []}
        run_id = client.post("/v1/runs?wait=true", json={"goal": "keep me", "plan": plan}).json()["run_id"]
        entry_id, _ = PlanLibrary.for_settings(engine.store, engine.settings).keep(engine.store.get(run_id), label="demo")
        entries = client.get("/v1/library").json()["entries"]
        assert [(e["id"], e["goal"], e["label"], e["run_id"]) for e in entries] == [(entry_id, "keep me", "demo", run_id)]
        assert client.delete(f"/v1/library/{entry_id[:6]}").json() == {"removed": entry_id}
        missing = client.delete("/v1/library/nothing")
        assert missing.status_code == 409 and "no best plan 'nothing'" in missing.json()["error"]["message"]
        for path in ("/", f"/runs/{run_id}", f"/runs/{run_id}?step=0&tab=graph", "/library"):
            page = client.get(path)
            assert page.status_code == 200 and '<script type="module" src="/static/main.js">' in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/static/vendor/dagre.esm.js").status_code == 200
        assert "openapi" not in client.get("/runs/x").text  # the shell, whatever the id (the page says when there is no such run)
        unknown = client.get("/runs/ffffffff")
        assert unknown.status_code == 200 and '<div id="view"' in unknown.text
        assert client.get("/runs/x/steps").status_code == 404  # only the addresses the page knows
