"""VM overhead per executed instruction, with small and large variable stores.

    python bench/vm_overhead.py            # full run (10,000 instructions per plan)
    python bench/vm_overhead.py --quick    # 2,000 instructions, fewer repeats

Plans:
* ``mix``  — 10,000 ``assign`` steps cycling through a literal, a template with two references,
  and arithmetic over two references; once with 50 and once with 1,000 variables in the store;
* ``loop`` — a counter loop: ``assign i = ${i} + 1`` then a conditional ``jmp`` back, answered
  by an in-process LLM that replies instantly (so the figure is the VM's own cost);
* ``mix`` again with the run store on (a SQLite file in a temporary folder): the cost of
  recording each step, and the bytes the store grows by per step with 50 and 1,000 variables;
* ``mix`` and ``loop`` with OpenTelemetry tracing off (no ``OTEL_*`` variables: the figures
  above) and on (the SDK with a processor that drops every span, so the figure is the cost of
  making spans, not of sending them).

Prints microseconds per executed instruction (best of the repeats), compile time per
instruction, and the ratio of the 1,000- to the 50-variable figure.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vm import VM, Completion, Limits, RunStore  # noqa: E402


def mix_plan(n_instructions: int, n_vars: int) -> list[dict]:
    prelude = {f"v{i}": i + 1 for i in range(n_vars)}
    plan = [{"seq_no": 0, "type": "assign", "parameters": prelude}]
    for k in range(n_instructions):
        a, b = f"v{(k * 7) % n_vars}", f"v{(k * 13 + 1) % n_vars}"
        kind = k % 3
        if kind == 0:
            params = {"lit": 42}
        elif kind == 1:
            params = {"text": f"value ${{{a}}} and ${{{b}}}"}
        else:
            params = {"num": f"${{{a}}} + ${{{b}}} * 2"}
        plan.append({"seq_no": k + 1, "type": "assign", "parameters": params})
    plan.append({"seq_no": n_instructions + 1, "type": "assign", "parameters": {"final_answer": "${num}"}})
    return plan


class CountingLLM:
    """Answers "Is N below M?" instantly, in process."""

    _NUMS = re.compile(r"Is (\d+) below (\d+)\?")

    async def acomplete(self, prompt, *, system=None, json_schema=None):
        i, limit = map(int, self._NUMS.search(prompt).groups())
        return Completion('{"result": %s, "explanation": ""}' % ("true" if i < limit else "false"))

    def complete(self, prompt, *, system=None, json_schema=None):  # pragma: no cover - the VM prefers acomplete
        raise NotImplementedError


def loop_plan(iterations: int) -> list[dict]:
    return [
        {"seq_no": 0, "type": "assign", "parameters": {"i": 0}},
        {"seq_no": 1, "type": "assign", "parameters": {"i": "${i} + 1"}},
        {"seq_no": 2, "type": "jmp", "parameters": {"condition_prompt": f"Is ${{i}} below {iterations}?", "jump_if_true": 1, "jump_if_false": 3}},
        {"seq_no": 3, "type": "assign", "parameters": {"final_answer": "${i}"}},
    ]


def measure(vm: VM, plan: list[dict], repeats: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    program = vm.compile(plan)
    compile_s = time.perf_counter() - started
    best = float("inf")
    steps = 0
    for _ in range(repeats):
        started = time.perf_counter()
        result = vm.run(program)
        elapsed = time.perf_counter() - started
        result.raise_for_error()
        steps = result.steps
        best = min(best, elapsed)
    return best / steps * 1e6, compile_s / len(plan) * 1e6, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer instructions and repeats")
    args = parser.parse_args()
    n, repeats = (2_000, 3) if args.quick else (10_000, 7)
    limits = Limits(max_steps=10 * n, max_llm_calls=None)
    vm = VM(limits=limits)
    print(f"{'plan':<28}{'steps':>8}{'us/step':>10}{'compile us/instr':>18}")
    figures = {}
    for n_vars in (50, 1000):
        per_step, per_compile, steps = measure(vm, mix_plan(n, n_vars), repeats)
        figures[n_vars] = per_step
        print(f"{f'mix, {n_vars} variables':<28}{steps:>8}{per_step:>10.2f}{per_compile:>18.2f}")
    loop_vm = VM(llm=CountingLLM(), limits=limits)
    per_step, per_compile, steps = measure(loop_vm, loop_plan(n // 2), repeats)
    print(f"{'loop (assign + jmp)':<28}{steps:>8}{per_step:>10.2f}{per_compile:>18.2f}")
    print(f"ratio 1000/50 variables: {figures[1000] / figures[50]:.2f}x")
    print()
    print(f"{'tracing (50 variables)':<28}{'steps':>8}{'us/step':>10}{'vs off':>10}")
    from vm import telemetry

    if telemetry.tracer is not None:
        print("(OTEL_* variables turned tracing on for the figures above; run without them)")
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:
        print("(opentelemetry-sdk not installed: pip install 'planvm[otel]')")
    else:
        class Drop(SpanExporter):
            def export(self, spans):  # noqa: ANN001, ANN201 - the SDK's interface
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Drop()))
        telemetry.use(provider)
        traced, _, steps = measure(vm, mix_plan(n, 50), repeats)
        print(f"{'mix, spans made':<28}{steps:>8}{traced:>10.2f}{traced / figures[50]:>9.1f}x")
        traced_loop, _, steps = measure(loop_vm, loop_plan(n // 2), repeats)
        print(f"{'loop, spans made':<28}{steps:>8}{traced_loop:>10.2f}{traced_loop / per_step:>9.1f}x")
        telemetry.use(False)
    print()
    print(f"{'with the run store':<28}{'steps':>8}{'us/step':>10}{'added ms/step':>15}{'bytes/step':>12}")
    with tempfile.TemporaryDirectory() as folder:
        for n_vars in (50, 1000):
            store = RunStore(Path(folder) / f"runs{n_vars}.sqlite")
            stored_vm = VM(limits=limits, store=store)
            plan = mix_plan(n, n_vars)
            stored_vm.run([{"seq_no": 0, "type": "assign", "parameters": {"final_answer": 1}}])  # warm the file up
            store.checkpoint()
            before = store.size_bytes()
            per_step, _, steps = measure(stored_vm, plan, 1)
            store.checkpoint()
            grown = (store.size_bytes() - before) / steps
            added_ms = (per_step - figures[n_vars]) / 1000
            print(f"{f'mix, {n_vars} variables':<28}{steps:>8}{per_step:>10.2f}{added_ms:>15.3f}{grown:>12.0f}")
            store.close()


if __name__ == "__main__":
    main()
