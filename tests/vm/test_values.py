"""References, templates and the arithmetic rule (DESIGN semantics points 2 and 4)."""

from __future__ import annotations

import re
import time

import pytest

from vm import ExpressionError, ReferencePathError, VariableUndefined
from vm.values import ValueSyntaxError, compile_value, render_text, shorten, to_number

STORE = {
    "a": 5,
    "b": "7",
    "f": "8.10",
    "y": 2024,
    "m": 10,
    "d": 15,
    "s": "Bob",
    "obj": {"k": [1, {"z": "deep"}], "with space": 3},
    "lst": ["first", "second"],
    "injected": "${a}",
    "flag": True,
    "none": None,
    "big": 9,
}


def ev(value, arithmetic=True):
    return compile_value(value, arithmetic=arithmetic).evaluate(STORE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${obj}", STORE["obj"]),
        ("${lst}", ["first", "second"]),
        ("${a}", 5),
        ("${flag}", True),
        ("${none}", None),
        ("${ a }", 5),
        ("${obj.k[1].z}", "deep"),
        ("${obj.k[0]}", 1),
        ("${lst[-1]}", "second"),
        ("${lst.1}", "second"),
        ("${obj['with space']}", 3),
        ('${obj["with space"]}', 3),
    ],
)
def test_whole_reference_keeps_type(value, expected):
    assert ev(value) == expected
    assert type(ev(value)) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Name: ${s}", "Name: Bob"),
        ("List: ${lst}", 'List: ["first", "second"]'),
        ("Obj: ${obj.k}", 'Obj: [1, {"z": "deep"}]'),
        ("Flag ${flag}, none ${none}", "Flag true, none null"),
        ("n=${a}", "n=5"),
        ("${s}${s}", "BobBob"),
    ],
)
def test_template_renders_json_never_repr(value, expected):
    assert ev(value) == expected


def test_template_unicode_is_not_escaped():
    store = {"x": ["café"]}
    assert compile_value("v: ${x}").evaluate(store) == 'v: ["café"]'


def test_references_resolve_inside_nested_containers():
    value = {"q": "${s}", "items": ["${a}", {"inner": "${obj.k}"}], "n": 3, "t": "x ${a}"}
    assert ev(value, arithmetic=False) == {"q": "Bob", "items": [5, {"inner": [1, {"z": "deep"}]}], "n": 3, "t": "x 5"}


def test_value_containing_reference_syntax_is_never_expanded_again():
    assert ev("${injected}") == "${a}"
    assert ev("got ${injected}") == "got ${a}"
    assert ev({"k": "${injected}"}) == {"k": "${a}"}


# --- the arithmetic rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${a} + ${b} / 3", 5 + 7 / 3),
        ("${a} * ${b}", 35),
        ("${a}*${b}", 35),
        ("${big}**2", 81),
        ("${a} - ${b}", -2),
        ("(${a} + ${b}) / 2", 6.0),
        ("-${a} * 2", -10),
        ("+${a}", 5),
        ("${a} % 3", 2),
        ("${f} * 10", 81.0),
        ("${a} ** -1", 0.2),
        ("2 + 3", 5),
        ("${a} / 2", 2.5),
    ],
)
def test_arithmetic_gives_numbers(value, expected):
    result = ev(value)
    assert result == pytest.approx(expected)
    assert isinstance(result, (int, float)) and not isinstance(result, bool)


def test_numeric_strings_from_llms_count_as_numbers():
    store = {"n": " 42\n", "m": "1e3", "k": ".5"}
    assert compile_value("${n} + ${m} * ${k}", arithmetic=True).evaluate(store) == 542.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-10-15", "2024-10-15"),
        ("8.10", "8.10"),
        ("555-1234", "555-1234"),
        ("v7.5.0", "v7.5.0"),
        ("10/15/2024", "10/15/2024"),
        ("${y}-${m}-${d}", "2024-10-15"),
        ("${m}/${d}/${y}", "10/15/2024"),
        ("${a}-${b}", "5-7"),
        ("${f}", "8.10"),
        ("Total: ${a} + ${b}", "Total: 5 + 7"),
        ("${a} +", "5 +"),
        ("(${a}", "(5"),
        ("1.2.3 - 4", "1.2.3 - 4"),
        ("50%", "50%"),
        # arithmetic-shaped, but an operand is not a number: rendered as a template
        ("${s} + 1", "Bob + 1"),
        ("${s} - ${lst}", 'Bob - ["first", "second"]'),
        ("${flag} + 1", "true + 1"),
        ("${none} * 2", "null * 2"),
    ],
)
def test_text_stays_text(value, expected):
    assert ev(value) == expected


def test_arithmetic_only_in_assign_values():
    # tool_params and jmp prompts are compiled without the arithmetic rule: plain templates.
    assert ev("${a} + ${b}", arithmetic=False) == "5 + 7"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${a} / 0", "division by zero"),
        ("${a} % 0", "division by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("9**9**9", "too large"),
        ("${big} ** ${big} ** ${big}", "too large"),
        ("10 ** 100000", "too large"),
        ("(-8) ** 0.5", "not a finite real number"),
        ("1e308 * 10", "not a finite real number"),
    ],
)
def test_arithmetic_errors_are_clear_and_fast(value, message):
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match=re.escape(message)) as info:
        ev(value)
    assert time.perf_counter() - started < 0.5
    assert info.value.expression == value


def test_repeated_squaring_is_bounded():
    store = {"x": 2**3000}
    with pytest.raises(ExpressionError, match="too large"):
        compile_value("${x} * ${x}", arithmetic=True).evaluate(store)


@pytest.mark.parametrize("value", ["__import__('os')", "${a}.__class__", "[x for x in ()]", "${a} if 1 else 2", "abs(${a})"])
def test_no_python_evaluation(value):
    # Anything outside the numeric grammar is text, never evaluated.
    assert isinstance(ev(value), str)


# --- reference errors ------------------------------------------------------------------------


def test_undefined_variable_names_it():
    with pytest.raises(VariableUndefined) as info:
        ev("${missing}")
    assert info.value.variable == "missing"
    with pytest.raises(VariableUndefined):
        ev("text ${missing}")
    with pytest.raises(VariableUndefined):
        ev("${missing} + 1")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${obj.nope}", "no key 'nope' (keys: k, with space)"),
        ("${lst[5]}", "index 5 is out of range for a list of 2"),
        ("${s.key}", "the value there is a str"),
        ("${lst.key}", "'key' is a key, but the value there is a list"),
    ],
)
def test_path_errors_say_what_is_there(value, message):
    with pytest.raises(ReferencePathError) as info:
        ev(value)
    assert message in str(info.value)


@pytest.mark.parametrize("value", ["${bad name}", "${1abc}", "${a..b}", "${}", "${a[x]}"])
def test_malformed_reference_is_a_compile_error(value):
    with pytest.raises(ValueSyntaxError, match="not a valid reference"):
        compile_value(value)


def test_helpers():
    assert to_number("12") == 12 and isinstance(to_number("12"), int)
    assert to_number("1.50") == 1.5
    assert to_number(True) is None
    assert to_number("1,000") is None
    assert to_number("1" * 5000) is None
    assert render_text({"a": 1}) == '{"a": 1}'
    assert shorten("a\n  b") == "a b"
    assert shorten({"k": "v" * 50}, 20) == '{"k": "vvvvvvvvvvvv…'
    assert len(shorten("x" * 500, 200)) == 200


def test_one_compiled_expression_evaluates_correctly_from_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    value = compile_value("${a} * ${b} + 1", arithmetic=True)

    def work(i):
        return [value.evaluate({"a": i, "b": k}) == i * k + 1 for k in range(300)]

    with ThreadPoolExecutor(8) as pool:
        assert all(all(r) for r in pool.map(work, range(64)))
