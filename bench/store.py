"""The run store on each backend: recording cost per step, and workers sharing a queue.

    python bench/store.py                       # SQLite, PostgreSQL and MariaDB on this machine
    python bench/store.py --runs 400 --tool-ms 50

Recording: 2,000 steps written one transaction each (lease check included) into a fresh store,
per backend. Workers: --runs queued runs of 3 chained calls to a tool that waits --tool-ms
(I/O bound, as an LLM or a remote service is), taken by 1, 2 and 4 `planvm worker` processes
(each executing one run at a time) on one PostgreSQL store; throughput, and a check that every
committed step ran exactly once. Database URLs: PLANVM_TEST_POSTGRES_URL, PLANVM_TEST_MYSQL_URL
(defaults: the local servers).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from databases import mysql_store_url, postgres_store_url  # noqa: E402

from vm import RunStore  # noqa: E402
from vm.trace import StepRecord  # noqa: E402

TOOL = '''
import asyncio, os
from tools import tool

@tool
async def wait_call(run: str, step: int, after: str = "") -> str:
    """Log the call and wait like a remote service.

    Args:
        run: Which run calls.
        step: Which step calls.
        after: The step before's result (so the steps run in a chain).
    """
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write(f"{run} {step}\\n")
    await asyncio.sleep(float(os.environ["TOOL_SECONDS"]))
    return f"{run}:{step}"
'''


def recording(url: str, steps: int = 2000) -> float:
    store = RunStore(url)
    run_id = store.create_run([{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}])
    record = StepRecord(0, "assign")
    record.outputs = {"answer": "a short value", "n": 42}
    for i in range(50):  # warm the connection and the statement cache
        store.record_step(run_id, i, record)
    started = time.perf_counter()
    for i in range(50, 50 + steps):
        store.record_step(run_id, i, record)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed / steps * 1000


def workers(url: str, count: int, runs: int, tool_ms: float, folder: Path) -> tuple[float, int, int]:
    tools = folder / "wait_tools.py"
    tools.write_text(TOOL)
    log = folder / f"calls-{count}.log"
    env = {**os.environ, "CALL_LOG": str(log), "TOOL_SECONDS": str(tool_ms / 1000), "PLANVM_HOME": str(folder)}
    store = RunStore(url)
    from planvm.engine import Engine

    engine = Engine({"store_path": url, "no_builtins": True, "plugins": [str(tools)]})
    for i in range(runs):
        plan = [{"seq_no": s, "type": "calling", "parameters": {"tool_name": "wait_call", "tool_params": {
            "run": f"r{i}", "step": s, **({"after": "${s%d}" % (s - 1)} if s else {})}, "output_vars": [f"s{s}"]}} for s in range(3)]
        plan.append({"seq_no": 3, "type": "assign", "parameters": {"final_answer": "${s2}"}})
        engine.enqueue(None, plan=plan)
    started = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-m", "planvm", "worker", "--store", url, "--no-builtins", "--plugin", str(tools), "--once",
                          "--concurrency", "1", "--poll-seconds", "0.1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    for proc in procs:
        proc.wait(3600)
    elapsed = time.perf_counter() - started
    done = sum(1 for r in store.list_runs(runs) if r["status"] == "completed")
    calls = Counter(log.read_text().splitlines())
    repeated = sum(n - 1 for n in calls.values() if n > 1)
    engine.close()
    store.close()
    return runs / elapsed, done, repeated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--tool-ms", type=float, default=50.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="planvm-bench-store-"))
    print("recording one step (a transaction with the lease check), ms per step:")
    print(f"  sqlite      {recording(str(folder / 'runs.sqlite')):.3f}")
    with postgres_store_url() as url:
        print(f"  postgresql  {recording(url):.3f}")
    with mysql_store_url() as url:
        print(f"  mariadb     {recording(url):.3f}")
    print(f"\nworkers on one PostgreSQL store: {args.runs} queued runs of 3 chained {args.tool_ms:g} ms calls, one run at a time per worker")
    base = None
    for count in (1, 2, 4):
        with postgres_store_url() as url:
            rate, done, repeated = workers(url, count, args.runs, args.tool_ms, folder)
        base = base or rate
        print(f"  {count} worker(s)  {rate:7.1f} runs/s  ({rate / base:.2f}x)  completed {done}/{args.runs}, repeated steps {repeated}")


if __name__ == "__main__":
    main()
