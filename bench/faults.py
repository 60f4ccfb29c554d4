"""The model boundary's waits, and the service's event loop under its store's outages and a large
plan, measured.

    python bench/faults.py                      # every case below, on this machine
    python bench/faults.py outage-15 big-plan   # some of them

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

`planvm serve` on PostgreSQL (PLANVM_TEST_POSTGRES_URL, default the local server) through a TCP
proxy (tests/tcp_proxy.py), its default retry budget (30 s), 12 runs of 20 steps of 0.5 s:

  outage-15    the database cut off for 15 s (within the retry budget): /healthz latency during
               the cut (median, slowest, how many 503), and how the runs ended
  outage-60    cut off for 60 s (twice the budget): the same; then every run resumed
  big-plan     a 100,000-instruction plan (7 MB) posted to /v1/runs of a `planvm serve` on SQLite:
               /healthz latency while it is read, checked, stored and run
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

LOOP_CASES = ("outage-15", "outage-60", "big-plan")

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


class Prober:
    """/healthz asked every 0.1 s from a thread: (status, seconds) of each answer."""

    def __init__(self, url: str) -> None:
        import threading

        self.url, self.answers = url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self._stop.is_set():
                asked = time.perf_counter()
                try:
                    status = client.get("/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((status, time.perf_counter() - asked))
                self._stop.wait(0.1)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(130)

    def figures(self) -> str:
        times = sorted(took for _, took in self.answers)
        return (f"{statistics.median(times) * 1000:7.0f} {times[-1] * 1000:7.0f}  {len(times)} probes, "
                f"{sum(s == 503 for s, _ in self.answers)} answered 503")


def chain(run: int, steps: int, seconds: float) -> list[dict]:
    plan = [{"seq_no": i, "type": "calling", "parameters": {
        "tool_name": "slow_echo", "tool_params": {"text": f"run{run}-step{i}" + (" ${r%d}" % (i - 1) if i else ""), "seconds": seconds},
        "output_vars": [f"r{i}"]}} for i in range(steps)]
    return plan + [{"seq_no": steps, "type": "assign", "parameters": {"final_answer": "${r%d}" % (steps - 1)}}]


def statuses(client, ids: list[str], wanted: set[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = [client.get(f"/v1/runs/{i}").json()["status"] for i in ids]
        except Exception:  # noqa: BLE001 - the store may still be coming back
            found = []
        if (found and all(s in wanted for s in found)) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def outage(seconds: float, folder: Path) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from databases import postgres_store_url
    from serve_helpers import Server
    from tcp_proxy import TcpProxy

    with postgres_store_url() as url:
        parts = urlsplit(url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        where = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}"))
        home = folder / f"outage-{seconds:g}"
        home.mkdir()
        server = Server(home, "--store", where, "--no-builtins").start()
        try:
            with server.client() as client:
                ids = [client.post("/v1/runs", json={"goal": f"run {k}", "plan": chain(k, 20, 0.5)}).json()["run_id"] for k in range(12)]
                time.sleep(1)
                with Prober(server.url) as prober:
                    proxy.cut()
                    time.sleep(seconds)
                    proxy.restore()
                ended = statuses(client, ids, {"completed", "failed", "interrupted"}, 120)
                outcome = ", ".join(f"{ended.count(s)} {s}" for s in sorted(set(ended)))
                resumed = ""
                if "interrupted" in ended:
                    for i, status in zip(ids, ended):
                        if status == "interrupted":
                            client.post(f"/v1/runs/{i}/resume")
                    after = statuses(client, ids, {"completed", "failed"}, 120)
                    resumed = "; resumed: " + ", ".join(f"{after.count(s)} {s}" for s in sorted(set(after)))
            print(f"{f'outage-{seconds:g}':<12} {prober.figures()}; runs: {outcome}{resumed}")
        finally:
            server.stop()
            proxy.stop()


def big_plan(folder: Path) -> None:
    import httpx

    from serve_helpers import Server

    n = 100_000
    plan = [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}] + [
        {"seq_no": i, "type": "assign", "parameters": {f"v{i}": i}} for i in range(1, n)]
    body = json.dumps({"goal": "a large plan", "plan": plan}).encode()
    home = folder / "big-plan"
    home.mkdir()
    with Server(home, "--no-builtins", "--max-body-bytes", str(64 * 1024 * 1024)) as server:
        with Prober(server.url) as prober:
            time.sleep(0.5)
            began = time.perf_counter()
            answer = httpx.post(f"{server.url}/v1/runs", params={"wait": "true"}, content=body,
                                headers={"Content-Type": "application/json"}, timeout=300)
            took = time.perf_counter() - began
            time.sleep(0.5)
    print(f"{'big-plan':<12} {prober.figures()}; {n:,} instructions ({len(body) / 1e6:.1f} MB): "
          f"run {answer.json().get('status')} {took:.1f} s after it was sent")


def main() -> None:
    chosen = sys.argv[1:] or ["ctrl-c", "ctrl-c-run", "stalled", "headers", *LOOP_CASES]
    unknown = set(chosen) - {"ctrl-c", "ctrl-c-run", "stalled", *LOOP_CASES}
    if unknown:
        sys.exit(f"unknown case {', '.join(sorted(unknown))}; choose among ctrl-c, ctrl-c-run, stalled, {', '.join(LOOP_CASES)}")
    folder = Path(tempfile.mkdtemp(prefix="planvm-bench-faults-"))
    model_cases = [c for c in ("ctrl-c", "ctrl-c-run", "stalled", "headers") if c in chosen]
    if model_cases:
        model_boundary(model_cases, folder)
    loop_cases = [c for c in LOOP_CASES if c in chosen]
    if loop_cases:
        print(f"\n{'case':<12} {'/healthz median ms':>7} {'slowest ms':>7}")
        for case in loop_cases:
            if case.startswith("outage"):
                outage(float(case.split("-")[1]), folder)
            else:
                big_plan(folder)


def model_boundary(cases: list[str], folder: Path) -> None:
    rounds = 5
    plan = folder / "ask.json"
    plan.write_text(json.dumps(ASK))
    print(f"{'case':<12} {'median s':>9} {'worst s':>8}  outcome")
    for case in cases:
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
