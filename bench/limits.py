"""Hostile inputs stay bounded: time and peak memory of each, measured in a fresh process.

    python bench/limits.py            # every case, about a minute on 2 cores
    python bench/limits.py --case chain

Cases:
  doubling     a 40-step plan doubling a 1 KiB string ("${s}${s}"): stopped by max_value_bytes
  doubling-list  the same with ["${s}", "${s}"]
  chain        a 100,000-step chain v_i = "${v_(i-1)} + 1": validated (static data flow)
  big-plan     recording cost per step with a 65 MB plan vs a small one, store on
  big-result   a tool returning 100 MB of text, and one returning a list of 100 MB
Peak memory is the process's maximum resident set, and "over baseline" subtracts what the
process held after its imports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import peak_mb  # noqa: E402

CASES = ("doubling", "doubling-list", "chain", "big-plan", "big-result")


def assign(seq: int, **values: object) -> dict:
    return {"seq_no": seq, "type": "assign", "parameters": values}


def doubling(as_list: bool) -> None:
    from tools import ToolRegistry
    from vm import VM

    plan = [assign(0, s0="x" * 1024)]
    for i in range(1, 40):
        value = [f"${{s{i - 1}}}"] * 2 if as_list else f"${{s{i - 1}}}${{s{i - 1}}}"
        plan.append(assign(i, **{f"s{i}": value}))
    plan.append(assign(40, final_answer="${s39}"))
    base = peak_mb()
    started = time.perf_counter()
    result = VM(ToolRegistry()).run(plan)
    seconds = time.perf_counter() - started
    print(f"{'doubling (list)' if as_list else 'doubling':<16} {seconds:8.3f} s  peak {peak_mb():7.1f} MB "
          f"({peak_mb() - base:+.1f} over baseline)  -> {type(result.error).__name__} after {len(result.trace)} steps")


def chain() -> None:
    from vm import validate_plan

    n = 100_000
    plan = [assign(0, v0=1)] + [assign(i, **{f"v{i}": f"${{v{i - 1}}} + 1"}) for i in range(1, n)]
    plan.append(assign(n, final_answer=f"${{v{n - 1}}}"))
    text = json.dumps(plan)
    del plan
    base = peak_mb()
    started = time.perf_counter()
    program, problems = validate_plan(text)
    seconds = time.perf_counter() - started
    print(f"{'chain 100k':<16} {seconds:8.3f} s  peak {peak_mb():7.1f} MB ({peak_mb() - base:+.1f} over baseline)"
          f"  -> {'valid' if not problems else problems[:2]}")


def big_plan() -> None:
    from tools import ToolRegistry
    from vm import VM, Limits, RunStore

    steps = 400
    small = [assign(i, **{f"v{i}": i}) for i in range(steps)] + [assign(steps, final_answer="done")]
    large = json.loads(json.dumps(small))
    large[0]["note"] = "n" * (65 * 1024 * 1024)  # free text: the plan is 65 MB, its values are not
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in (("small plan", small), ("65 MB plan", large)):
            store = RunStore(Path(tmp) / f"{name.replace(' ', '_')}.sqlite")
            spent = [0.0]
            record_step = store.record_step

            def timed(*args: object, record_step=record_step, spent=spent) -> None:
                started = time.perf_counter()
                record_step(*args)  # type: ignore[arg-type]
                spent[0] += time.perf_counter() - started

            store.record_step = timed  # type: ignore[method-assign]
            with VM(ToolRegistry(), store=store, limits=Limits(max_plan_bytes=128 * 1024 * 1024)) as machine:
                started = time.perf_counter()
                result = machine.run(plan)
                total = time.perf_counter() - started
            assert result.ok
            print(f"{name:<16} {total:8.3f} s for {len(result.trace)} steps (validation included): recording "
                  f"{spent[0] / len(result.trace) * 1000:.3f} ms/step, peak {peak_mb():7.1f} MB")


def big_result() -> None:
    from tools import ToolRegistry, tool
    from vm import VM

    @tool
    def text_100mb() -> str:
        """100 MB of text."""
        return "z" * (100 * 1024 * 1024)

    @tool
    def list_100mb() -> list:
        """A list of 100 MB of strings."""
        return ["y" * 100] * (1024 * 1024)

    for name in ("text_100mb", "list_100mb"):
        plan = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": name, "output_vars": "r"}}, assign(1, final_answer="${r}")]
        started = time.perf_counter()
        result = VM(ToolRegistry([text_100mb, list_100mb])).run(plan)
        seconds = time.perf_counter() - started
        print(f"{name:<16} {seconds:8.3f} s  peak {peak_mb():7.1f} MB  -> {type(result.error).__name__}")


def run_case(case: str) -> None:
    {"doubling": lambda: doubling(False), "doubling-list": lambda: doubling(True), "chain": chain,
     "big-plan": big_plan, "big-result": big_result}[case]()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process")
    args = parser.parse_args()
    if args.case:
        run_case(args.case)
        return
    for case in CASES:  # each in a fresh process, so peaks do not add up
        subprocess.run([sys.executable, __file__, "--case", case], check=True)


if __name__ == "__main__":
    main()
