"""`planvm serve` under load: many clients submitting runs over HTTP and waiting for their answers.

    python bench/serve.py                          # 64 clients, 1,000 runs, 3 steps of 50 ms
    python bench/serve.py --clients 1 --runs 100   # the overhead of one run alone
    python bench/serve.py --readers 10             # a 400-step run's time with 10 live event streams, and with none
    python bench/serve.py --stuck-readers 22       # 22 streams that never read a run of 40 steps of 500 KB (--stall-timeout 5)
    python bench/serve.py --stuck-readers 22 --max-connections 23   # ...holding every connection the server allows
    python bench/serve.py --clients 1 --runs 200 --code /tmp/previous   # this checkout, then another, in one run
    python bench/serve.py --namespaces 8           # runs spread over 8 namespaces (a token each) vs all in 1
    python bench/serve.py --clients 1 --runs 200 --floor   # ...and the same load on a server doing only what a run needs

One server process (the real `planvm serve`, its own store in a temporary folder); the clients
are asyncio tasks of this process sharing one httpx connection pool, each posting
`POST /v1/runs?wait=true` with a plan of --steps calls in a chain, each call waiting --tool-ms
(an async tool, so waits overlap). The plan's critical path is steps × tool-ms; a run's service
overhead is its latency as the client saw it minus that path: HTTP, validation, recording every
step, the event loop and waiting for the CPU. Reported: throughput, latency and overhead
percentiles, errors, and the overhead inside the VM alone (run time in the store minus the tool
time of its steps).

With --namespaces N, the server's settings declare N namespaces, each with its own token, and the
clients' runs go round them (run i with namespace i mod N's token); the same load on a server of
one namespace (with one token) is measured in the same way, the two alternately (--rounds), and
their throughputs compared: the cost of isolation (each namespace its own engine, tools, quotas
and view of the store).

With --floor, the same load is then sent to bench/_floor_server.py, a server doing only what such a
run cannot do without (an HTTP request and answer, the plan parsed, a commit to SQLite for the run
and for each step, in a store thread, and the tools' waits), and this machine's CPU cost of one
event-loop wake-up after a tool's wait is measured: planvm's CPU per run above that floor is what
its own code costs. (A wake-up after an idle wait is not free: on a virtual machine it can cost
more CPU time than the work it wakes for.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def plan(steps: int) -> list[dict]:
    chain = []
    for i in range(steps):
        text = "${r%d}" % (i - 1) if i else "start"
        chain.append({"seq_no": i, "type": "calling", "parameters": {"tool_name": "remote_call", "tool_params": {"text": text},
                                                                     "output_vars": [f"r{i}"]}})
    chain.append({"seq_no": steps, "type": "assign", "parameters": {"final_answer": "${r%d}" % (steps - 1)}})
    return chain


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(url: str, runs: int, clients: int, body: dict, tokens: list[str] | None = None) -> tuple[list[float], int, float]:
    """``runs`` runs posted by ``clients`` clients; run i with ``tokens[i % len(tokens)]``, if any."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(runs):
        queue.put_nowait(i)
    # aiohttp: a client light enough that the server, not the load generator, is what is measured.
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"} if tokens else None
                started = time.perf_counter()
                async with client.post("/v1/runs", params={"wait": "true"}, json=body, headers=headers) as response:
                    answer = await response.json()
                elapsed = time.perf_counter() - started
                if response.status != 200 or answer.get("status") != "completed":
                    errors += 1
                else:
                    latencies.append(elapsed)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - began
    return latencies, errors, wall


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def timed_run(url: str, body: dict, readers: int) -> tuple[float, list[int]]:
    """Seconds from POST to the run's end, with ``readers`` live SSE streams reading it all along;
    and the number of events each stream got."""
    import aiohttp

    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=600)) as client:
        async with client.post("/v1/runs", json=body) as response:
            run_id = (await response.json())["run_id"]

        async def read() -> int:
            count = 0
            async with client.get(f"/v1/runs/{run_id}/events") as stream:
                async for line in stream.content:
                    if line.startswith(b"event:"):
                        count += 1
                        if line.strip() == b"event: done":
                            break
            return count

        counts = await asyncio.gather(*(read() for _ in range(readers)))
        while True:
            async with client.get(f"/v1/runs/{run_id}") as response:
                run = await response.json()
            if run["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.01)
        return run["updated_at"] - run["created_at"], list(counts)  # the run's own time, as the store recorded it


def big_run_plan(steps: int, value_kb: int) -> list[dict]:
    """Each step passes a value_kb text on (stored three times: input, output, tool result)."""
    chain = [{"seq_no": 0, "type": "assign", "parameters": {"r": "x" * (value_kb * 1024)}}]
    for i in range(1, steps + 1):
        chain.append({"seq_no": i, "type": "calling", "parameters": {"tool_name": "remote_call", "tool_params": {"text": "${r}"},
                                                                     "output_vars": ["r"]}})
    chain.append({"seq_no": steps + 1, "type": "assign", "parameters": {"final_answer": "done"}})
    return chain


def stuck_readers(url: str, server_pid: int, home: Path, readers: int, stall: float, steps: int, value_kb: int) -> None:
    """``readers`` clients ask for the event stream of a finished run and never read it: the
    server's memory while they sit and after, whether others are answered meanwhile, and when the
    stalled connections are closed (each should be reset --stall-timeout seconds after its buffers
    filled)."""
    import socket

    body = {"goal": "big", "plan": big_run_plan(steps, value_kb)}
    answer = httpx.post(f"{url}/v1/runs?wait=true", json=body, timeout=600).json()
    run_id = answer["run_id"]
    size = sum(Path(str(home / "runs.sqlite") + suffix).stat().st_size for suffix in ("", "-wal")
               if Path(str(home / "runs.sqlite") + suffix).exists())
    time.sleep(1)
    before = rss_mb(server_pid)
    host, port = url.rsplit("/", 1)[1].split(":")
    sockets = []
    began = time.monotonic()
    for _ in range(readers):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        sockets.append(s)  # and never read
    peak = before
    probes: list[tuple[float, str]] = []  # (seconds since the streams opened, what a new client got)
    closed_at = None
    while time.monotonic() - began < stall + 60:
        time.sleep(0.25)
        peak = max(peak, rss_mb(server_pid))
        try:
            health = httpx.get(f"{url}/healthz", timeout=5)
            kind = "limit 503" if health.text == "Service Unavailable" else str(health.status_code)
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
        probes.append((time.monotonic() - began, kind))
        if closed_at is None and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 1 for s in sockets):  # not ESTABLISHED
            closed_at = time.monotonic() - began
        if closed_at is not None and time.monotonic() - began > closed_at + 3:
            break
    after = rss_mb(server_pid)
    started = 0
    for s in sockets:  # each stream was answered (its first bytes wait in the socket), then held back by its reader
        s.setblocking(False)
        try:
            started += s.recv(65536).startswith(b"HTTP/1.1 200")
        except (BlockingIOError, ConnectionError):
            pass
        s.close()
    print(f"planvm serve --stall-timeout {stall:g}: {readers} event streams that never read, on a finished run of "
          f"{answer['steps']} steps of {value_kb} KB ({size / 1e6:.0f} MB in the store); {started} of {readers} streams answered")
    print(f"  server memory     {before:7.1f} MB before, peak {peak:7.1f} MB (+{peak - before:.1f} MB), "
          f"{after:7.1f} MB 3 s after they were closed (+{after - before:.1f} MB)")
    print(f"  connections       all {readers} reset by the server after {closed_at:.1f} s" if closed_at is not None else
          f"  connections       still open after {stall + 60:g} s")
    kinds = sorted({k for _, k in probes})
    print(f"  /healthz probes   {len(probes)} (one every 0.25 s): " + "; ".join(
        f"{sum(k == kind for _, k in probes)} {kind}" + ("" if kind == "200" else f" (the last at {max(t for t, k in probes if k == kind):.1f} s)")
        for kind in kinds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tool-ms", type=float, default=50.0)
    parser.add_argument("--readers", type=int, default=None, help="Live event streams on one run of --steps (400 if not given).")
    parser.add_argument("--stuck-readers", type=int, default=None, help="Streams that never read, on a finished run of big steps.")
    parser.add_argument("--stall-timeout", type=float, default=5.0, help="With --stuck-readers: the server's --stall-timeout.")
    parser.add_argument("--max-connections", type=int, default=2048, help="The server's --max-connections.")
    parser.add_argument("--value-kb", type=int, default=500, help="With --stuck-readers: the size of each step's value.")
    parser.add_argument("--namespaces", type=int, default=None,
                        help="Spread the runs over this many namespaces (a token each) and compare with one namespace.")
    parser.add_argument("--floor", action="store_true", help="Also measure the same load on a server doing only what a run needs.")
    parser.add_argument("--rounds", type=int, default=3, help="With --namespaces: measurements of each, taken alternately.")
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="Another checkout whose server is measured the same way after this one's.")
    args = parser.parse_args()
    for code in [ROOT, *args.code]:
        if args.code:
            print(f"--- {code}")
        if args.namespaces is not None:
            compare_namespaces(args, code)
        else:
            measure(args, code)


def namespace_settings(home: Path, count: int) -> list[str]:
    """A planvm.toml in ``home`` declaring ``count`` namespaces, each with its own token; the tokens."""
    tokens = [f"bench-token-{i:02d}-{os.urandom(8).hex()}" for i in range(count)]
    (home / "planvm.toml").write_text("".join(f'[namespaces.team-{i:02d}]\nserve_token = "{t}"\n\n' for i, t in enumerate(tokens)))
    return tokens


def compare_namespaces(args: argparse.Namespace, code: Path) -> None:
    """The same load on a server of one namespace and on one of ``--namespaces``, alternately."""
    body = {"goal": "bench", "plan": plan(args.steps)}
    rates: dict[int, list[float]] = {1: [], args.namespaces: []}
    cpu: dict[int, list[float]] = {1: [], args.namespaces: []}
    failed: dict[int, int] = {1: 0, args.namespaces: 0}
    for _round in range(args.rounds):
        for count in rates:
            home = Path(tempfile.mkdtemp(prefix="planvm-bench-serve-"))
            tokens = namespace_settings(home, count)
            server, url = start_server(args, code, home, {"PLANVM_CONFIG": str(home / "planvm.toml")})
            try:
                asyncio.run(load(url, 20, min(args.clients, 8), body, tokens))  # warm up (every namespace's engine made)
                cpu_before = cpu_seconds(server.pid)
                latencies, errors, wall = asyncio.run(load(url, args.runs, args.clients, body, tokens))
                cpu[count].append((cpu_seconds(server.pid) - cpu_before) / args.runs * 1000)
            finally:
                server.terminate()
                server.wait(15)
            rates[count].append(len(latencies) / wall)
            failed[count] += errors
    print(f"planvm serve: {args.runs} runs, {args.clients} concurrent clients, {args.steps} chained steps of {args.tool_ms:g} ms, "
          f"{args.rounds} rounds (one server per measurement, a token per namespace)")
    for count, seen in rates.items():
        print(f"  {count:2d} namespace{'s' if count > 1 else ' '}  throughput {statistics.median(seen):8.1f} runs/s median  "
              f"({', '.join(f'{r:.1f}' for r in seen)}; {failed[count]} errors)   "
              f"server CPU {statistics.median(cpu[count]):5.2f} ms per run")
    one, many = statistics.median(rates[1]), statistics.median(rates[args.namespaces])
    print(f"  ratio         {many / one:.3f} ({args.namespaces} namespaces / 1); server CPU per run "
          f"{statistics.median(cpu[args.namespaces]) / statistics.median(cpu[1]):.3f}")


def floor(args: argparse.Namespace, body: dict, home: Path) -> tuple[float, float]:
    """The same load on bench/_floor_server.py: its CPU per run (ms) and overhead p50 (ms)."""
    port = 17000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_floor_server.py"), str(port), str(home / "floor.sqlite"),
                               str(args.tool_ms / 1000)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        asyncio.run(load(url, 20, min(args.clients, 8), body))  # warm up
        before = cpu_seconds(server.pid)
        latencies, errors, _wall = asyncio.run(load(url, args.runs, args.clients, body))
        if errors:
            raise SystemExit(f"the floor server failed {errors} runs: {server.stderr.read() if server.poll() is not None else ''}")
        critical = args.steps * args.tool_ms / 1000
        return (cpu_seconds(server.pid) - before) / args.runs * 1000, percentile([(t - critical) * 1000 for t in latencies], 0.5)
    finally:
        server.terminate()
        server.wait(15)


def wake_cost(seconds: float, wakes: int = 100) -> float:
    """CPU seconds this machine charges a thread for one event-loop wake-up after ``seconds`` idle
    (an asyncio.sleep loop doing nothing else, measured from the thread's /proc schedstat)."""
    import threading

    def thread_ns() -> int:
        return int(Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").read_text().split()[0])

    async def sleeper() -> float:
        await asyncio.sleep(seconds)
        before = thread_ns()
        for _ in range(wakes):
            await asyncio.sleep(seconds)
        return (thread_ns() - before) / 1e9 / wakes

    return asyncio.run(sleeper())


def start_server(args: argparse.Namespace, code: Path, home: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A `planvm serve` of checkout ``code`` with its store in ``home``, answering /healthz."""
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "PLANVM_HOME": str(home), "PLANVM_BENCH_TOOL_SECONDS": str(args.tool_ms / 1000), **(extra_env or {})}
    server = subprocess.Popen(
        [sys.executable, "-m", "planvm", "serve", "--port", str(port), "--no-builtins", "--plugin", str(ROOT / "bench" / "_serve_tools.py"),
         "--max-connections", str(args.max_connections),
         *(["--stall-timeout", str(args.stall_timeout)] if args.stuck_readers is not None else [])],
        cwd=code, env={**env, "PYTHONPATH": str(code)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return server, url


def wait_ready(url: str) -> None:
    """Until the server at ``url`` answers /healthz with 200 (at most a minute)."""
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


def measure(args: argparse.Namespace, code: Path) -> None:
    if args.readers is not None and args.steps == 3:
        args.steps = 400
    if args.readers is not None and args.tool_ms == 50.0:
        args.tool_ms = 5.0

    home = Path(tempfile.mkdtemp(prefix="planvm-bench-serve-"))
    server, url = start_server(args, code, home)
    try:
        body = {"goal": "bench", "plan": plan(args.steps)}
        if args.stuck_readers is not None:
            stuck_readers(url, server.pid, home, args.stuck_readers, args.stall_timeout, 40 if args.steps == 3 else args.steps,
                          args.value_kb)
            return
        if args.readers is not None:
            alone, _ = asyncio.run(timed_run(url, body, 0))
            watched, counts = asyncio.run(timed_run(url, body, args.readers))
            print(f"planvm serve: one run of {args.steps} chained steps of {args.tool_ms:g} ms")
            print(f"  no stream         {alone:7.2f} s")
            print(f"  {args.readers:3d} live streams  {watched:7.2f} s  ({watched / alone:.2f}x; each stream got "
                  f"{min(counts)}-{max(counts)} events)")
            return
        asyncio.run(load(url, 20, min(args.clients, 8), body))  # warm up
        cpu_before, client_before = cpu_seconds(server.pid), cpu_seconds(os.getpid())
        latencies, errors, wall = asyncio.run(load(url, args.runs, args.clients, body))
        server_cpu = (cpu_seconds(server.pid) - cpu_before) / args.runs * 1000
        client_cpu = (cpu_seconds(os.getpid()) - client_before) / args.runs * 1000
        critical = args.steps * args.tool_ms / 1000
        overhead = [(t - critical) * 1000 for t in latencies]
        from vm import RunStore

        store = RunStore(home / "runs.sqlite", readonly=True)
        inside = []
        for run in store.list_runs(args.runs):
            stored = store.get(run["id"])
            inside.append((stored.updated_at - stored.created_at - sum(s.duration_s for s in stored.steps)) * 1000)
        print(f"planvm serve: {args.runs} runs, {args.clients} concurrent clients, {args.steps} chained steps of {args.tool_ms:g} ms "
              f"(critical path {critical * 1000:.0f} ms), 1 server process")
        print(f"  throughput        {len(latencies) / wall:8.1f} runs/s  ({wall:.1f} s, {errors} errors)")
        print(f"  latency           p50 {percentile(latencies, 0.5) * 1000:7.1f} ms   p95 {percentile(latencies, 0.95) * 1000:7.1f} ms")
        print(f"  service overhead  p50 {percentile(overhead, 0.5):7.1f} ms   p95 {percentile(overhead, 0.95):7.1f} ms   "
              f"mean {statistics.fmean(overhead):.1f} ms  (latency minus the critical path)")
        print(f"  server CPU        {server_cpu:7.2f} ms per run (all of it: HTTP, validation, VM, store); "
              f"the clients' {client_cpu:.2f} ms")
        print(f"  inside the VM     p50 {percentile(inside, 0.5):7.1f} ms   p95 {percentile(inside, 0.95):7.1f} ms  "
              f"(run time in the store minus its steps' tool time)")
        if args.floor:
            server.terminate()
            server.wait(15)
            floor_cpu, floor_overhead = floor(args, body, home)
            wake = wake_cost(args.tool_ms / 1000)
            print(f"  the floor         {floor_cpu:7.2f} ms per run, overhead p50 {floor_overhead:.1f} ms (bench/_floor_server.py: "
                  f"HTTP, one commit per run and per step in a store thread, the tools' waits; nothing of planvm)")
            print(f"  planvm's own      {server_cpu - floor_cpu:7.2f} ms per run above the floor; one event-loop wake-up after "
                  f"{args.tool_ms:g} ms idle costs {wake * 1000:.2f} ms of CPU on this machine")
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
