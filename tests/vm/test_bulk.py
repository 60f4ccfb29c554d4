"""vm.bulk: large JSON read and written in short C calls (the same values, text and errors as the
json module), objects made with the collector paused and kept from its passes while in use, and
large structures freed a slice at a time, never a shared one."""

from __future__ import annotations

import datetime
import gc
import json
import random
import threading
import time
from typing import Any

import pytest

from vm import bulk, compile_plan


def big_plan(n: int) -> list[dict[str, Any]]:
    return [{"seq_no": 0, "type": "assign", "parameters": {"final_answer": "done"}}] + [
        {"seq_no": i, "type": "assign", "parameters": {f"v{i}": i, "t": "é\u2028"}} for i in range(1, n)]


def outcome(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        return ("value", function(*args, **kwargs))
    except json.JSONDecodeError as exc:
        return ("JSONDecodeError", exc.msg, exc.pos, exc.lineno, exc.colno)
    except Exception as exc:  # noqa: BLE001 - compared with what the json module raises
        return (type(exc).__name__, str(exc))


@pytest.fixture
def pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text read in pieces, however short."""
    monkeypatch.setattr(bulk, "LARGE_TEXT", 0)


BAD_JSON = ["", " ", "[", "{", "[1,]", '{"a":1,}', "[1 2]", '{"a" 1}', "{1:2}", "[] x", '{"plan": [1, {"a": }]}',
            '{"plan": [1, 2', '{"plan" [', '["\\ud800", "\\x"]', "[[[]]]", "  [ ] ", "\ufeff[]", "NaN", '{"a": [1, 2],, }']


@pytest.mark.parametrize("text", BAD_JSON)
def test_loads_gives_what_json_loads_gives_value_or_error(text: str, pieces: None) -> None:
    assert outcome(bulk.loads, text) == outcome(json.loads, text)


def test_loads_agrees_with_json_loads_on_mutated_documents(pieces: None) -> None:
    rng = random.Random(7)
    base = json.dumps({"goal": "g", "plan": [{"seq_no": i, "parameters": {"v": [i, 1.5, None, True, "xé"]}} for i in range(4)],
                       "x": {"a": [], "b": {}}})
    alphabet = list('{}[],:"\\ 0123456789.eE+-truefalsnNIy\n\t') + ["\ud800", "\x00"]
    for _ in range(4000):
        chars = list(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars) + 1)
            roll = rng.random()
            if roll < 0.4 and chars:
                del chars[min(at, len(chars) - 1)]
            elif roll < 0.8:
                chars.insert(at, rng.choice(alphabet))
            else:
                chars = chars[:at]
        text = "".join(chars)
        assert outcome(bulk.loads, text) == outcome(json.loads, text), text


def test_loads_takes_bytes_and_options_as_json_loads_does(pieces: None) -> None:
    def refuse(name: str) -> None:
        raise ValueError(f"no {name}")

    for data in (b"[1, 2]", "[1]".encode("utf-16"), b"\xef\xbb\xbf[1]", b"[1,", b"[1, NaN]"):
        assert outcome(bulk.loads, data, parse_constant=refuse) == outcome(json.loads, data, parse_constant=refuse)
    deep = "[" * 100_000 + "]" * 100_000
    assert outcome(bulk.loads, deep)[0] == outcome(json.loads, deep)[0] == "RecursionError"


def test_a_large_document_is_read_a_value_at_a_time() -> None:
    doc = {"goal": "a large plan", "plan": big_plan(20_000)}
    text = json.dumps(doc)
    decoder = bulk._Decoder()
    spans: list[int] = []
    scan = decoder._c_scan

    def timed(s: str, at: int) -> tuple[Any, int]:
        value, end = scan(s, at)
        spans.append(end - at)
        return value, end

    decoder._c_scan = timed
    decoder.scan_once = decoder._outer(0)
    assert decoder.decode(text) == doc
    assert len(spans) > 20_000 and max(spans) < 200, max(spans)  # one instruction a call, never the document


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 60 if depth < 2 else 4))]
    if depth < 3 and roll < 0.5:
        keys = ["a", "é", f"k{rng.randint(0, 500)}", rng.randint(0, 5), 1.5, None, True]
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randint(0, 300 if depth == 0 else 6))}
    return rng.choice([1, -2, 1.25, 0.0, float("nan"), "s", "é\u2028", None, True, 10**30, ("a", 1), datetime.date(2020, 1, 1)])


@pytest.mark.parametrize("options", [{}, {"ensure_ascii": False}, {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")},
                                     {"default": str}, {"default": str, "allow_nan": False}])
def test_dumps_gives_what_json_dumps_gives_text_or_error(options: dict[str, Any]) -> None:
    rng = random.Random(3)
    for _ in range(400):
        value = random_value(rng)
        assert outcome(bulk.dumps, value, **options) == outcome(json.dumps, value, **options)
    loop: dict[str, Any] = {"a": [1]}
    loop["a"].append(loop)
    assert outcome(bulk.dumps, loop) == outcome(json.dumps, loop) == ("ValueError", "Circular reference detected")


def test_a_large_document_is_written_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run's record: a plan, steps, variables (many, small), beside a few named fields; and a plan alone.
    for doc in ({"id": "r1", "plan": big_plan(30_000), "steps": big_plan(3_000), "variables": {f"v{i}": [i] for i in range(20_000)}},
                big_plan(30_000)):
        expected = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        written: list[int] = []

        class Recording(json.JSONEncoder):
            def encode(self, o: Any) -> str:
                text = super().encode(o)
                written.append(len(text))
                return text

        monkeypatch.setattr(bulk.json, "JSONEncoder", Recording)
        assert bulk.dumps(doc, ensure_ascii=False, separators=(",", ":")) == expected
        monkeypatch.undo()
        assert len(expected) > 2_000_000 and max(written) < 300_000, max(written)


@pytest.fixture
def collector() -> Any:
    """The collector as a test found it, whatever the test did to it."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_making_pauses_collection_and_sets_aside_what_a_span_keeps_until_its_end(collector: None) -> None:
    gc.unfreeze()
    with bulk.keeping():
        with bulk.making():
            assert not gc.isenabled()
            made = [[i] for i in range(50_000)]  # (lists: tracked by the collector)
        assert gc.isenabled()
        assert gc.get_freeze_count() >= 50_000  # what was made is not walked by the collector's passes
        assert made[-1] == [49_999]
    assert gc.get_freeze_count() == 0  # the span over: back to the collector (a cycle among them can go)


def test_nothing_is_set_aside_outside_a_span(collector: None) -> None:
    gc.unfreeze()
    with bulk.making():
        made = [[i] for i in range(1_000)]
    assert gc.isenabled() and gc.get_freeze_count() == 0 and len(made) == 1_000


def test_a_collector_paused_before_stays_paused(collector: None) -> None:
    gc.disable()
    with bulk.keeping(), bulk.making():
        pass
    assert not gc.isenabled()


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def test_discard_frees_what_only_it_holds_and_leaves_what_is_shared_whole() -> None:
    shared = [{"i": i} for i in range(5_000)]
    kept_copy = list(shared)
    own = {"plan": [{"i": i} for i in range(5_000)], "shared": shared, "small": [1, 2]}
    plan = own["plan"]
    done = threading.Event()
    bulk.discard([own], then=done.set)
    del own
    assert done.wait(30)
    assert shared == kept_copy  # something else refers to it: untouched
    assert len(plan) == 5_000  # so does this: only the reference was dropped
    parts = [[{"i": i} for i in range(5_000)]]
    watch = parts[0]
    done.clear()
    bulk.discard(parts, then=done.set)
    assert done.wait(30)
    assert len(watch) == 5_000  # `watch` shares it (held when discard looked)
    del watch


def test_discard_takes_apart_a_large_list_nothing_else_holds() -> None:
    seen: list[int] = []

    class Item:
        def __del__(self) -> None:
            seen.append(threading.get_ident())

    done = threading.Event()
    bulk.discard([[Item() for _ in range(2_000)]], then=done.set)
    assert done.wait(30)
    assert len(seen) == 2_000 and set(seen) == {bulk._disposer[0].ident}  # freed in the background thread


def test_a_large_compiled_plan_is_kept_apart_while_it_lives_and_freed_in_the_background(collector: None) -> None:
    gc.unfreeze()
    program = compile_plan(big_plan(5_000))
    assert gc.get_freeze_count() > 5_000  # its objects: not walked by the collector's passes
    steps = program.steps
    del program
    wait_for(lambda: gc.get_freeze_count() == 0)  # gone: freed apart, the span ended
    assert len(steps) == 5_000  # what a caller still holds is left whole
    small = compile_plan(big_plan(10))
    assert gc.get_freeze_count() == 0 and len(small) == 10  # a small plan: nothing set aside
