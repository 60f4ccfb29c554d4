"""The tool registry: typed functions become validated tools; names never clash silently."""

from __future__ import annotations

import textwrap

import pytest
from conftest import add, echo

from tools import Tool, ToolRegistry, default_registry, load_plugin, tool
from vm import CallContext, ToolParamsInvalid, ToolRegistrationError


def test_decorated_function_becomes_a_described_tool():
    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.description == "Add two numbers."
    schema = add.parameters_schema()
    assert schema["properties"]["a"]["description"] == "First number."
    assert schema["required"] == ["a"]
    assert add.required_parameters == {"a"} and add.parameter_names == {"a", "b"}
    assert add(2, 3) == 5  # still callable as a function


def test_decorator_options_and_async_detection():
    @tool(name="lookup", description="Look a word up.")
    async def find(word: str) -> str:
        return word

    assert find.name == "lookup" and find.description == "Look a word up." and find.is_async


def test_context_parameter_is_not_a_tool_parameter():
    @tool
    def uses_ctx(x: int, ctx: CallContext) -> int:
        """Use the context."""
        return x

    assert uses_ctx.parameter_names == {"x"}
    assert uses_ctx.context_param == "ctx"


@pytest.mark.parametrize(
    ("params", "parameter", "fragment"),
    [
        ({}, "a", "missing; add it to tool_params"),
        ({"a": "x"}, "a", "valid number"),
        ({"a": 1, "z": 2}, "z", "not a parameter of this tool"),
    ],
)
def test_bind_validates(params, parameter, fragment):
    with pytest.raises(ToolParamsInvalid) as info:
        add.bind(params)
    assert info.value.parameter == parameter and info.value.tool_name == "add"
    assert fragment in str(info.value)


def test_bind_returns_keyword_arguments_with_defaults():
    assert add.bind({"a": "2"}) == {"a": 2.0, "b": 0.0}


def test_duplicate_names_are_an_error():
    registry = ToolRegistry([echo])
    with pytest.raises(ToolRegistrationError, match="already registered") as info:
        registry.register(tool(lambda value: value, name="echo"))
    assert info.value.tool_name == "echo"
    assert registry.get("echo") is echo  # not overwritten


def test_builtin_names_clash_with_a_users_tool():
    registry = default_registry()
    assert registry.names() == ["llm_generate", "retrieve_knowledge_graph", "vector_search"]
    with pytest.raises(ToolRegistrationError, match="--no-builtins"):
        registry.register(tool(lambda prompt: prompt, name="llm_generate"))


def test_register_under_another_name():
    registry = ToolRegistry([echo])
    registry.register(echo, name="echo2")
    assert registry.names() == ["echo", "echo2"]


def test_subset():
    registry = ToolRegistry([echo, add])
    assert registry.subset(["add"]).names() == ["add"]
    with pytest.raises(ToolRegistrationError, match="unknown tool"):
        registry.subset(["nope"])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(*args): pass", "name every parameter"),
        ("def f(**kw): pass", "name every parameter"),
    ],
)
def test_unsupported_signatures(source, message):
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - builds a function with the signature under test
    with pytest.raises(ToolRegistrationError, match=message):
        tool(namespace["f"])


def test_bad_names():
    with pytest.raises(ToolRegistrationError, match="not an identifier"):
        tool(lambda: 1, name="two words")


def test_plugin_loading(tmp_path):
    plugin = tmp_path / "my_tools.py"
    plugin.write_text(
        textwrap.dedent(
            '''
            from __future__ import annotations
            from tools import tool
            from conftest import echo  # imported tools are not re-registered

            @tool
            def double(x: int) -> int:
                """Double x."""
                return 2 * x

            def helper():  # not a tool
                return 1
            '''
        )
    )
    tools = load_plugin(plugin)
    assert [t.name for t in tools] == ["double"]
    assert tools[0].bind({"x": "4"}) == {"x": 4}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("raise RuntimeError('broken')", "importing it raised RuntimeError: broken"),
        ("x = 1", "defines no tools"),
        ("def (", "importing it raised SyntaxError"),
    ],
)
def test_plugin_errors(tmp_path, content, message):
    path = tmp_path / "plugin.py"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ToolRegistrationError, match=message):
        load_plugin(path)


@pytest.mark.parametrize("params, refused", [
    ({"amount": True}, "amount"),
    ({"amount": 5, "count": False}, "count"),
])
def test_true_and_false_are_not_numbers(params, refused):
    from tools import ToolRegistry, tool
    from vm import ToolParamsInvalid

    @tool
    def pay(amount: float, count: int | None = 1, confirm: bool = False) -> float:
        """Pay."""
        return amount

    spec = ToolRegistry([pay]).get("pay")
    with pytest.raises(ToolParamsInvalid, match="a number is needed") as caught:
        spec.bind(params)
    assert caught.value.parameter == refused
    # Numbers, numeric text (as LLMs write it) and real booleans still pass.
    assert spec.bind({"amount": "5", "count": 3, "confirm": True}) == {"amount": 5.0, "count": 3, "confirm": True}
