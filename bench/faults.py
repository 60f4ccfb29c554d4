"""The model boundary's waits, measured: Ctrl-C to exit, and a stalled model server to a failed run.

    python bench/faults.py            # 5 rounds of each, on this machine

A scripted model server on loopback (tests/fake_openai.py: the real openai SDK and httpx talk to
it) that never answers in time. Each round is a fresh `planvm` process:

  ctrl-c       `planvm run GOAL --planner llm` while the planner's request hangs (a 60 s server,
               120 s request timeout): seconds from SIGINT to the process's exit, and its code
  ctrl-c-run   `planvm exec PLAN` while its llm_generate step's request hangs: the same, and the
               run's status in the store afterwards (interrupted)
  stalled      `planvm exec PLAN` with PLANVM_LLM_TIMEOUT=2 against a server that sends its reply
               one byte every 0.2 s: seconds from start to the failed run, and its error
  headers      `planvm exec PLAN` with PLANVM_LLM_TIMEOUT=3 against a server that sends even its
               status line and headers one byte every 0.3 s (60 s to send them all): the same
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_openai import FakeChatServer, chat_reply  # noqa: E402

ASK = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "Say hi."},
                                                       "output_vars": ["final_answer"]}}]


def env(server: FakeChatServer, home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PLANVM_HOME": str(home), "PLANVM_LLM_BASE_URL": server.url, "PLANVM_LLM_MODEL": "m",
            "PLANVM_LLM_MAX_RETRIES": "0", **extra}


def interrupt(args: list[str], home: Path) -> tuple[float, int, str | None]:
    with FakeChatServer() as server:
        server.actions.append(("sleep", 60, chat_reply("too late")))
        proc = subprocess.Popen([sys.executable, "-m", "planvm", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env(server, home, PLANVM_LLM_TIMEOUT="120"))
        while not server.requests:
            time.sleep(0.02)
        time.sleep(0.3)
        began = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        took = time.perf_counter() - began
    status = None
    if (home / "runs.sqlite").exists():
        from vm import RunStore

        runs = RunStore(home / "runs.sqlite", readonly=True).list_runs(1)
        status = runs[0]["status"] if runs else None
    return took, proc.returncode, status


def stalled(plan: Path, home: Path, headers: bool = False) -> tuple[float, int, str]:
    with FakeChatServer() as server:
        if headers:
            server.actions.append(("trickle_headers", 0.3, chat_reply("a reply whose very headers crawl")))
        else:
            server.actions.append(("trickle", 0.2, chat_reply("a reply sent one byte at a time, far too slowly")))
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "planvm", "exec", str(plan), "--json"], cwd=ROOT, capture_output=True, text=True,
                              env=env(server, home, PLANVM_LLM_TIMEOUT="3" if headers else "2"), timeout=120)
        took = time.perf_counter() - began
    return took, done.returncode, json.loads(done.stdout)["error"]


def main() -> None:
    rounds = 5
    folder = Path(tempfile.mkdtemp(prefix="planvm-bench-faults-"))
    plan = folder / "ask.json"
    plan.write_text(json.dumps(ASK))
    print(f"{'case':<12} {'median s':>9} {'worst s':>8}  outcome")
    for case in ("ctrl-c", "ctrl-c-run", "stalled", "headers"):
        times, outcomes = [], set()
        for i in range(rounds):
            home = folder / f"{case}-{i}"
            if case in ("stalled", "headers"):
                took, code, error = stalled(plan, home, headers=case == "headers")
                outcomes.add(f"exit {code}, {error.split(';')[0][-90:]}")
            else:
                args = ["run", "What is planvm?", "--planner", "llm"] if case == "ctrl-c" else ["exec", str(plan)]
                took, code, status = interrupt(args, home)
                outcomes.add(f"exit {code}" + (f", run {status}" if status else ""))
            times.append(took)
        print(f"{case:<12} {statistics.median(times):9.2f} {max(times):8.2f}  {'; '.join(sorted(outcomes))}")


if __name__ == "__main__":
    main()
