"""Independent steps overlap; what a caller observes equals sequential execution."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import assign, call

from tools import ToolRegistry, tool
from vm import VM, ToolFailed


class Probe:
    """Records when each call starts and ends, and the most calls in flight at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.events: list[tuple[str, str]] = []

    def enter(self, name: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.events.append(("start", name))

    def leave(self, name: str) -> None:
        with self.lock:
            self.in_flight -= 1
            self.events.append(("end", name))


def registry(probe: Probe, delay: float = 0.05) -> ToolRegistry:
    @tool
    async def fetch(query: str, pause: float = delay) -> str:
        """Async retrieval stand-in."""
        probe.enter(query)
        await asyncio.sleep(pause)
        probe.leave(query)
        return f"<{query}>"

    @tool
    def fetch_sync(query: str) -> str:
        """Sync retrieval stand-in (runs in the VM's thread pool)."""
        probe.enter(query)
        time.sleep(delay)
        probe.leave(query)
        return f"[{query}]"

    @tool
    async def combine(a: str, b: str) -> str:
        """Join two results."""
        probe.enter(f"combine {a}")
        await asyncio.sleep(delay / 5)
        probe.leave(f"combine {a}")
        return f"{a}+{b}"

    @tool
    async def broken(query: str) -> str:
        """Fails after a short pause."""
        await asyncio.sleep(delay / 5)
        raise RuntimeError("broken tool")

    return ToolRegistry([fetch, fetch_sync, combine, broken])


def three_questions() -> list[dict]:
    """The planners' pattern: graph + vector search on one question, then an answer; three times."""
    plan = []
    seq = 0
    for q in ("q1", "q2", "q3"):
        plan.append(call(seq, "fetch", f"kg_{q}", query=f"kg {q}"))
        plan.append(call(seq + 1, "fetch_sync", f"vs_{q}", query=f"vs {q}"))
        plan.append(call(seq + 2, "combine", f"ans_{q}", a=f"${{kg_{q}}}", b=f"${{vs_{q}}}"))
        seq += 3
    plan.append(assign(seq, final_answer="${ans_q1} | ${ans_q2} | ${ans_q3}"))
    return plan


def test_parallel_equals_sequential_and_overlaps():
    results = {}
    probes = {}
    for concurrency in (1, 8):
        probe = Probe()
        seen: list[int] = []
        vm = VM(registry(probe), concurrency=concurrency, on_step=lambda r, seen=seen: seen.append(r.seq_no))
        results[concurrency] = (vm.run(three_questions()), seen)
        probes[concurrency] = probe
    (seq_result, seq_seen), (par_result, par_seen) = results[1], results[8]
    assert par_result.final_answer == seq_result.final_answer == "<kg q1>+[vs q1] | <kg q2>+[vs q2] | <kg q3>+[vs q3]"
    assert par_result.variables == seq_result.variables
    assert [r.seq_no for r in par_result.trace] == [r.seq_no for r in seq_result.trace] == list(range(10))
    assert [r.to_dict()["outputs"] for r in par_result.trace] == [r.to_dict()["outputs"] for r in seq_result.trace]
    assert par_seen == seq_seen == list(range(10))  # on_step in seq_no order
    assert probes[1].peak == 1
    assert probes[8].peak >= 6  # all six retrievals in flight together


def test_dependent_step_waits_only_for_what_it_reads():
    probe = Probe()
    VM(registry(probe)).run(three_questions())
    events = probe.events
    for q in ("q1", "q2", "q3"):
        combine_start = events.index(("start", f"combine <kg {q}>"))
        assert events.index(("end", f"kg {q}")) < combine_start
        assert events.index(("end", f"vs {q}")) < combine_start


def test_concurrency_limit():
    probe = Probe()
    VM(registry(probe), concurrency=2).run(three_questions())
    assert probe.peak == 2


def test_write_after_read_sees_the_old_value():
    probe = Probe()
    plan = [
        assign(0, x="old"),
        call(1, "fetch", "first", query="${x}", pause=0.05),
        call(2, "fetch", "x", query="new", pause=0.0),  # overwrites x; must not leak into step 1
        assign(3, final_answer="${first} ${x}"),
    ]
    assert VM(registry(probe)).run(plan).final_answer == "<old> <new>"


def test_failure_commits_nothing_after_the_failing_step():
    probe = Probe()
    plan = [
        call(0, "fetch", "a", query="a", pause=0.01),
        call(1, "broken", "b", query="b"),
        call(2, "fetch", "c", query="c", pause=0.0),  # independent and fast: finishes first
        assign(3, final_answer="${a}"),
    ]
    seen = []
    result = VM(registry(probe), on_step=lambda r: seen.append(r.seq_no)).run(plan)
    assert isinstance(result.error, ToolFailed) and result.error.seq_no == 1
    assert [r.seq_no for r in result.trace] == [0, 1] and seen == [0, 1]
    assert "c" not in result.variables and result.variables == {"a": "<a>"}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_step_budget_inside_a_parallel_stretch(concurrency):
    from vm import Limits, StepLimitExceeded

    probe = Probe()
    result = VM(registry(probe), concurrency=concurrency, limits=Limits(max_steps=4)).run(three_questions())
    assert isinstance(result.error, StepLimitExceeded)
    assert [r.seq_no for r in result.trace] == [0, 1, 2, 3]
    assert result.error.seq_no == 4
