"""The run store: recording, resume (after SIGKILL too), fork, export, and bad stores."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, ScriptedLLM, assign, call, jmp, make_registry
from databases import BACKENDS, store_url_for

from tools import ToolRegistry, tool
from vm import VM, ForkError, RunBusy, RunNotFound, RunStore, StoreError, StoredRun


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    """A fresh store on each backend: SQLite, PostgreSQL, MariaDB (see tests/databases.py)."""
    with store_url_for(request.param, tmp_path) as url:
        s = RunStore(url)
        yield s
        s.close()


PLAN = [
    assign(0, a=2, b=3),
    call(1, "add", "s", a="${a}", b="${b}"),
    call(2, "echo", ["x", "y"], value={"x": "${s}", "y": "why"}),
    assign(3, final_answer="${x} and ${y}"),
]


def test_every_step_is_recorded_as_a_delta(store):
    result = VM(make_registry(), store=store).run(PLAN, goal="add things", metadata={"lang": "en"})
    assert result.ok and result.run_id
    run = store.get(result.run_id)
    assert run.status == "completed" and run.final_answer == "5.0 and why"
    assert run.goal == "add things" and run.metadata == {"lang": "en"}
    assert [s.seq_no for s in run.steps] == [0, 1, 2, 3]
    assert run.steps[1].outputs == {"s": 5.0}  # only what the step set
    assert run.steps[1].inputs == {"a": 2, "b": 3}
    assert run.steps[2].result == {"x": 5.0, "y": "why"}  # the raw reply
    assert run.variables_at(2) == {"a": 2, "b": 3, "s": 5.0}
    assert run.variables_at() == result.variables
    assert run.owner is None


def test_failed_run_is_recorded_with_its_error(store):
    result = VM(make_registry(), store=store).run([call(0, "fail", "x", message="nope"), assign(1, final_answer="${x}")])
    run = store.get(result.run_id)
    assert run.status == "failed" and "nope" in run.error
    assert run.steps[0].error and "nope" in run.steps[0].error


def test_export_round_trip(store):
    result = VM(make_registry(), store=store).run(PLAN)
    data = json.loads(json.dumps(store.get(result.run_id).to_dict()))
    again = StoredRun.from_dict(data)
    assert again.plan == store.get(result.run_id).plan
    assert [s.to_dict() for s in again.steps] == data["steps"]
    with pytest.raises(StoreError, match="not a planvm run export"):
        StoredRun.from_dict({"plan": []})


def test_store_size_grows_with_changes_not_with_variables(store):
    def plan(n_vars):
        big = assign(0, **{f"v{i}": "x" * 20 for i in range(n_vars)})
        return [big] + [assign(i, counter=i) for i in range(1, 200)] + [assign(200, final_answer=1)]

    vm = VM(store=store, concurrency=1)
    sizes = []
    for n_vars in (10, 500):
        before = sum(len(r[0] or "") for r in store.query("SELECT outputs FROM steps"))
        vm.run(plan(n_vars))
        after = sum(len(r[0] or "") for r in store.query("SELECT outputs FROM steps"))
        sizes.append(after - before)
    # 490 more variables only grow the first step's row (by ~490 * 30 bytes), not the other 200.
    assert sizes[1] - sizes[0] < 490 * 40


# --- resume ---------------------------------------------------------------------------------


def test_resume_after_failure_skips_completed_steps(store):
    calls = []
    down = {"now": True}

    @tool
    def flaky(n: int) -> int:
        """Fails for n=2 while the service is down; logs every call."""
        calls.append(n)
        if n == 2 and down["now"]:
            raise RuntimeError("service down")
        return n * 10

    vm = VM(ToolRegistry([flaky]), store=store, concurrency=1)
    plan = [call(0, "flaky", "a", n=1), call(1, "flaky", "b", n=2), assign(2, final_answer="${a} + ${b}")]
    failed = vm.run(plan)
    assert failed.status == "failed" and calls == [1, 2]
    down["now"] = False
    resumed = vm.resume(failed.run_id)
    assert resumed.ok and resumed.final_answer == 30
    assert calls == [1, 2, 2]  # seq_no 0 was not executed again
    assert resumed.run_id == failed.run_id
    assert [r.seq_no for r in resumed.trace] == [0, 1, 2]
    stored = store.get(failed.run_id)
    assert stored.status == "completed" and len(stored.steps) == 3 and all(s.error is None for s in stored.steps)


def test_resume_continues_after_a_jump(store):
    llm = ScriptedLLM('{"result": true, "explanation": ""}')
    plan = [assign(0, n=1), jmp(1, condition_prompt="skip?", jump_if_true=3), assign(2, n=2), call(3, "fail", "x", message="n=${n}"), assign(4, final_answer="${x}")]
    vm = VM(make_registry(), llm=llm, store=store)
    failed = vm.run(plan)
    assert failed.status == "failed"
    # Resume with a registry whose 'fail' works now: it must continue at seq_no 3 (after the jump), n == 1.
    @tool
    def fail(message: str) -> str:
        """Works now."""
        return f"got {message}"

    resumed = VM(ToolRegistry([fail]), store=store).resume(failed.run_id)
    assert resumed.final_answer == "got n=1"
    assert [r.seq_no for r in resumed.trace] == [0, 1, 3, 4]


def test_resume_refuses_completed_unknown_and_busy_runs(store):
    vm = VM(make_registry(), store=store)
    done = vm.run(PLAN)
    with pytest.raises(StoreError, match="already completed"):
        vm.resume(done.run_id)
    with pytest.raises(RunNotFound, match="no run with id 'nope'"):
        vm.resume("nope")
    # A run whose owner is a live process (this one) is busy.
    run_id = store.create_run(PLAN)
    with pytest.raises(RunBusy, match="another live process"):
        vm.resume(run_id)


def test_resume_needs_a_store():
    with pytest.raises(ValueError, match="needs a run store"):
        VM().resume("x")


KILLABLE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tools import ToolRegistry, tool
    from vm import VM, RunStore

    import os

    @tool
    def slow(n: int) -> int:
        \"\"\"Sleeps, logs the call, returns n squared.\"\"\"
        with Path(os.environ["KILL_LOG"]).open("a") as f:
            f.write(f"{n}\\n")
        time.sleep(float(os.environ["KILL_DELAY"]))
        return n * n

    def registry():
        return ToolRegistry([slow])

    if __name__ == "__main__":
        store = RunStore(sys.argv[1])
        plan = [{"seq_no": i, "type": "calling", "parameters": {"tool_name": "slow", "tool_params": {"n": i}, "output_vars": f"v{i}"}} for i in range(8)]
        plan.append({"seq_no": 8, "type": "assign", "parameters": {"final_answer": "${v7} + ${v6}"}})
        VM(registry(), store=store, concurrency=1).run(plan)
    """
)


def _steps_written(db: Path) -> int:
    try:
        row = sqlite3.connect(db).execute("SELECT count(*) FROM steps").fetchone()
    except sqlite3.OperationalError:  # not created yet
        return 0
    return row[0] or 0


def _start_and_kill(tmp_path: Path, monkeypatch, delay: str, after_steps: int) -> tuple[Path, Path]:
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    log = tmp_path / "calls.log"
    db = tmp_path / "runs.sqlite"
    monkeypatch.setenv("KILL_LOG", str(log))
    monkeypatch.setenv("KILL_DELAY", delay)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script), str(db)], env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _steps_written(db) < after_steps:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return db, log


def test_resume_after_sigkill(tmp_path, monkeypatch):
    db, log = _start_and_kill(tmp_path, monkeypatch, "0.15", after_steps=3)
    store = RunStore(db)
    (summary,) = store.list_runs()
    assert summary["status"] == "running"  # killed: never finished
    completed = summary["steps"]
    assert 3 <= completed < 9
    calls_before = log.read_text().split()

    sys.path.insert(0, str(tmp_path))
    try:
        import killable  # the same tools the killed process used
    finally:
        sys.path.remove(str(tmp_path))
    result = VM(killable.registry(), store=store, concurrency=1).resume(summary["id"])
    assert result.ok and result.final_answer == 49 + 36
    calls = log.read_text().split()
    # Completed steps ran once; only the step in flight at the kill (if any) ran twice.
    assert calls[: len(calls_before)] == calls_before
    assert calls[len(calls_before):] == [str(n) for n in range(completed, 8)]
    assert result.variables == {f"v{i}": i * i for i in range(8)} | {"final_answer": 85}
    assert store.get(summary["id"]).status == "completed"


def test_two_processes_resuming_one_run(tmp_path, monkeypatch):
    db, _log = _start_and_kill(tmp_path, monkeypatch, "0.05", after_steps=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run_id = RunStore(db).list_runs()[0]["id"]
    resume = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import killable
        from vm import VM, RunStore, StoreError
        try:
            r = VM(killable.registry(), store=RunStore({str(db)!r}), concurrency=1).resume({run_id!r})
            print("resumed", r.status)
        except StoreError as e:
            print("refused", type(e).__name__, e)
        """
    )
    import sys as _sys

    procs = [subprocess.Popen([_sys.executable, "-c", resume], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["refused", "resumed"], outs
    refused = next(o for o in outs if o.startswith("refused"))
    assert "RunBusy" in refused or "already completed" in refused
    assert RunStore(db).get(run_id).status == "completed"


# --- fork -----------------------------------------------------------------------------------


def test_fork_reuses_the_prefix_and_links_the_parent(store):
    counted = []

    @tool
    def count(v: str) -> str:
        """Count calls."""
        counted.append(v)
        return v.upper()

    vm = VM(ToolRegistry([count]), store=store, concurrency=1)
    plan = [call(0, "count", "a", v="one"), call(1, "count", "b", v="two"), assign(2, final_answer="${a}/${b}")]
    parent = vm.run(plan)
    assert counted == ["one", "two"]
    new_plan = plan[:1] + [call(1, "count", "b", v="deux"), assign(2, final_answer="${a}+${b}")]
    child = vm.fork(parent.run_id, 1, new_plan)
    assert child.final_answer == "ONE+DEUX"
    assert counted == ["one", "two", "deux"]  # seq_no 0 reused, not re-run
    assert [r.seq_no for r in child.trace] == [0, 1, 2]
    stored = store.get(child.run_id)
    assert stored.parent_id == parent.run_id and stored.fork_seq == 1
    assert len(stored.steps) == 3 and stored.steps[0].outputs == {"a": "ONE"}
    assert store.children(parent.run_id) == [{"id": child.run_id, "status": "completed", "fork_seq": 1, "score": None, "best_of": None}]
    assert store.lineage(child.run_id) == [parent.run_id, child.run_id]
    assert store.get(parent.run_id).final_answer == "ONE/TWO"  # the parent is untouched


def test_fork_errors(store):
    vm = VM(make_registry(), store=store)
    parent = vm.run(PLAN)
    with pytest.raises(ForkError, match="never reached seq_no 9"):
        vm.fork(parent.run_id, 9, PLAN)
    changed = [assign(0, a=20, b=3), *PLAN[1:]]
    with pytest.raises(ForkError, match="changes seq_no 0, which the run already executed before seq_no 2"):
        vm.fork(parent.run_id, 2, changed)
    with pytest.raises(ForkError, match="has no seq_no 2"):
        vm.fork(parent.run_id, 2, [PLAN[0], PLAN[1], assign(5, final_answer=1)])
    with pytest.raises(RunNotFound):
        vm.fork("missing", 0, PLAN)


# --- bad stores and concurrent writers ------------------------------------------------------


def test_corrupt_store_file(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable planvm run store"):
        RunStore(path)


def test_foreign_sqlite_file(tmp_path):
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a planvm run store"):
        RunStore(path)


def test_locked_store(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = RunStore(path, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(StoreError, match="stayed locked by another process"):
            store.create_run(PLAN)
        assert time.monotonic() - started < 3
    finally:
        holder.execute("ROLLBACK")
    assert store.list_runs() == []  # nothing half-written


def test_concurrent_writers_keep_the_store_consistent(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    code = textwrap.dedent(
        f"""
        from vm import VM, RunStore
        store = RunStore({str(path)!r})
        plan = [{{"seq_no": i, "type": "assign", "parameters": {{"v": i}}}} for i in range(30)]
        plan.append({{"seq_no": 30, "type": "assign", "parameters": {{"final_answer": "${{v}}"}}}})
        for _ in range(5):
            assert VM(store=store).run(plan).ok
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    # and threads in this process, sharing one store object
    store = RunStore(path)
    threads = [threading.Thread(target=lambda: VM(store=store).run([assign(0, final_answer=1)])) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = store.list_runs(limit=100)
    assert len(runs) == 4 * 5 + 8
    for run in runs:
        rows = store.query("SELECT count(*) FROM steps WHERE run_id = :r", {"r": run["id"]})[0][0]
        assert run["status"] == "completed" and run["steps"] == rows


def test_default_location_follows_planvm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANVM_HOME", str(tmp_path / "home"))
    store = RunStore()
    assert store.path == Path(tmp_path / "home" / "runs.sqlite") and store.path.exists()


def test_fork_of_a_run_that_executed_no_step_says_so(store):
    vm = VM(make_registry(), store=store)
    never_ran = store.create_run(PLAN, goal="queued, never taken")
    with pytest.raises(ForkError) as raised:
        vm.fork(never_ran, 0, PLAN)
    message = str(raised.value)
    assert "executed no step, so there is no seq_no 0 to fork from" in message and "start a new run" in message
    assert "seq_no )" not in message


def test_fork_compares_instructions_by_meaning_not_spelling(store):
    vm = VM(make_registry(), store=store)
    parent = vm.run([assign(0, a=1), assign(1, final_answer="${a}")])
    respelled = [
        {"parameters": {"a": 1}, "type": "assign", "seq_no": 0, "note": None},  # other key order, a null note
        assign(1, final_answer="${a} + 1"),
    ]
    assert vm.fork(parent.run_id, 1, respelled).final_answer == 2


def test_canonical_instruction():
    from vm.plan import canonical_instruction

    assert canonical_instruction({"type": "jmp", "seq_no": 3, "parameters": {"target_seq": 0, "context": None}}) == {
        "seq_no": 3, "type": "jmp", "parameters": {"target_seq": 0},
    }
    assert canonical_instruction({"type": "teleport"}) == {"type": "teleport"}  # invalid: as given


# The schema of store version 1, as planvm 0.1 wrote it.
V1_SCHEMA = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL, status TEXT NOT NULL, goal TEXT,
    metadata TEXT, plan TEXT NOT NULL, variables TEXT NOT NULL, parent_id TEXT REFERENCES runs(id),
    fork_seq INTEGER, final_answer TEXT, error TEXT, owner TEXT, steps INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs(id), idx INTEGER NOT NULL, seq_no INTEGER NOT NULL, type TEXT NOT NULL,
    tool TEXT, inputs TEXT, outputs TEXT, result TEXT, llm_calls TEXT, next_seq INTEGER, duration_s REAL,
    error TEXT, PRIMARY KEY (run_id, idx)
);
CREATE INDEX runs_parent ON runs(parent_id);
"""


def test_a_version_1_store_is_upgraded_without_losing_a_run(tmp_path):
    """A store written before runs kept their limits opens, keeps its runs, and replays them."""
    from vm import replay

    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("PRAGMA application_id = 1886156397")
    conn.execute("PRAGMA user_version = 1")
    plan = '[{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 42}}]'
    conn.execute(
        "INSERT INTO runs (id, created_at, updated_at, status, plan, variables, final_answer, steps) "
        "VALUES ('0123456789abcdef', 1, 2, 'completed', ?, '{}', '42', 1)",
        (plan,),
    )
    conn.execute(
        "INSERT INTO steps (run_id, idx, seq_no, type, inputs, outputs, result, llm_calls, duration_s) "
        "VALUES ('0123456789abcdef', 0, 0, 'assign', '{}', '{\"final_answer\": 42}', 'null', '[]', 0.0)"
    )
    conn.commit()
    conn.close()
    store = RunStore(path)
    run = store.get("0123")  # a prefix of the id
    assert run.final_answer == 42 and run.limits is None and len(run.steps) == 1
    assert store.query("SELECT version_num FROM alembic_version")[0][0] == "0008"
    assert replay(run).ok


def test_a_store_made_by_the_version_3_code_is_upgraded_and_its_runs_go_on(tmp_path):
    # tests/golden/store_v3.sqlite was written by the store code before leases and Alembic: one
    # completed run, one interrupted after its first step.
    path = tmp_path / "runs.sqlite"
    path.write_bytes((ROOT / "tests" / "golden" / "store_v3.sqlite").read_bytes())
    store = RunStore(path)
    done = store.get("13b741518b6b4c89")
    assert done.status == "completed" and done.final_answer == 2 and done.goal == "made by the version-3 store"
    assert done.metadata == {"lang": "en"} and done.limits == {"max_steps": 10} and len(done.steps) == 2
    assert store.query("SELECT version_num FROM alembic_version")[0][0] == "0008"
    resumed = VM(make_registry(), store=store).resume("c8371ccab2dd4381")
    assert resumed.ok and resumed.final_answer == 2 and len(resumed.trace) == 2
    assert {r["id"]: r["status"] for r in store.list_runs()} == {"c8371ccab2dd4381": "completed", "13b741518b6b4c89": "completed"}


def test_a_server_store_behind_the_schema_asks_for_store_upgrade(tmp_path):
    from databases import postgres_store_url

    with postgres_store_url() as url:
        RunStore(url).close()
        import sqlalchemy as sa

        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:  # as if the store had been made before the leases migration
            conn.exec_driver_sql("DROP TABLE plan_library")  # its index goes with it
            conn.exec_driver_sql("DROP TABLE namespaces")
            conn.exec_driver_sql("DROP TABLE usage")
            conn.exec_driver_sql("DROP INDEX runs_namespace")
            conn.exec_driver_sql("ALTER TABLE runs DROP COLUMN namespace")
            conn.exec_driver_sql("ALTER TABLE runs DROP COLUMN judgement, DROP COLUMN score, DROP COLUMN best_of, DROP COLUMN tools, DROP COLUMN spent_s")
            conn.exec_driver_sql("DROP TABLE leases")
            conn.exec_driver_sql("DROP INDEX runs_status")
            conn.exec_driver_sql("ALTER TABLE steps DROP COLUMN notes, DROP COLUMN started_at")
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
        engine.dispose()
        with pytest.raises(StoreError, match="planvm store upgrade"):
            RunStore(url)
        out = subprocess.run([sys.executable, "-m", "planvm", "store", "upgrade", "--store", url], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "from schema version 0001 to 0008" in out.stdout, out.stderr
        store = RunStore(url)
        run_id = store.create_run([assign(0, final_answer=1)])
        assert store.get(run_id).owner == store.worker_id
        store.close()


def test_an_unknown_store_location_is_refused(tmp_path):
    with pytest.raises(StoreError, match="not a store location"):
        RunStore("redis://127.0.0.1/0")
    with pytest.raises(StoreError, match="sqlite:///"):
        RunStore("sqlite://relative")
