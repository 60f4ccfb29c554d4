"""Tools: typed Python functions the VM can call, and the registry that holds them by name.

::

    from tools import tool, ToolRegistry

    @tool
    def convert(amount: float, rate: float = 1.0) -> float:
        \"\"\"Convert an amount with an exchange rate.

        Args:
            amount: The amount to convert.
            rate: Units of the target currency per unit of the source.
        \"\"\"
        return amount * rate

    registry = ToolRegistry([convert])

A tool's parameters become a Pydantic model that validates every call before it happens; its
docstring becomes the description the planner sees (per-parameter text comes from the ``Args:``
section). A parameter annotated :class:`vm.CallContext` is not a tool parameter: the VM passes
the calling step's context there (its ``output_vars`` and the run's LLM).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from vm.errors import ToolParamsInvalid, ToolRegistrationError
from vm.tooling import CallContext

__all__ = ["Tool", "ToolRegistry", "load_plugin", "tool"]


class Tool:
    """A registered function: name, description, parameter model, and the function itself."""

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None, side_effects: bool = False,
    ) -> None:
        if not callable(fn):
            raise ToolRegistrationError(f"a tool must be a function, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or fn.__name__
        if not self.name.isidentifier():
            raise ToolRegistrationError(f"tool name {self.name!r} is not an identifier; pass name=...", tool_name=self.name)
        self.is_async = inspect.iscoroutinefunction(fn)
        # Changes something outside the run (writes, sends, pays): never started before its plan is
        # whole and valid (a plan streamed from the planner runs its other calls as they arrive).
        self.side_effects = side_effects
        doc = docstring_parser.parse(inspect.getdoc(fn) or "")
        summary = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
        self.description = (description or summary or "").strip()
        param_docs = {p.arg_name: (p.description or "").strip() for p in doc.params}
        self.context_param, self.params_model = self._build_model(param_docs)
        # Numbers that true / false must not pass as (pydantic's lax mode reads true as 1).
        self._numbers = frozenset(n for n, f in self.params_model.model_fields.items() if _numeric(f.annotation))
        self.__doc__ = fn.__doc__
        self.__name__ = self.name

    def _build_model(self, param_docs: dict[str, str]) -> tuple[str | None, type[BaseModel]]:
        try:
            hints = typing.get_type_hints(self.fn, include_extras=True)
        except Exception as exc:  # a name in an annotation that cannot be resolved
            raise ToolRegistrationError(f"tool '{self.name}': cannot read its type hints ({exc})", tool_name=self.name) from exc
        fields: dict[str, Any] = {}
        context_param = None
        for pname, param in inspect.signature(self.fn).parameters.items():
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise ToolRegistrationError(
                    f"tool '{self.name}': *{pname} / **{pname} cannot be described to a planner; name every parameter",
                    tool_name=self.name,
                )
            annotation = hints.get(pname, Any)
            if annotation is CallContext:
                context_param = pname
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (annotation, Field(default, description=param_docs.get(pname) or None))
        config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
        model = create_model(f"{self.name}_parameters", __config__=config, **fields)
        return context_param, model

    # --- what the VM needs (vm.tooling.ToolSpec) -----------------------------------------------

    @property
    def parameter_names(self) -> frozenset[str]:
        return frozenset(self.params_model.model_fields)

    @property
    def required_parameters(self) -> frozenset[str]:
        return frozenset(n for n, f in self.params_model.model_fields.items() if f.is_required())

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``params`` against the tool's signature; return the keyword arguments."""
        for name in self._numbers:
            if isinstance(params.get(name), bool):
                raise ToolParamsInvalid(self.name, name, f"{name}: a number is needed, got {str(params[name]).lower()}; "
                                        f"pass a number (true and false are not numbers)")
        try:
            model = self.params_model.model_validate(params)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            first = errors[0]
            parameter = str(first["loc"][0]) if first["loc"] else None
            details = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {_describe(e)}" for e in errors
            )
            raise ToolParamsInvalid(self.name, parameter, details) from None
        return {name: getattr(model, name) for name in self.params_model.model_fields}

    def call(self, bound: dict[str, Any], ctx: CallContext) -> Any:
        if self.context_param is not None:
            return self.fn(**bound, **{self.context_param: ctx})
        return self.fn(**bound)

    # --- for planners and documentation --------------------------------------------------------

    def parameters_schema(self) -> dict[str, Any]:
        """JSON Schema of the tool's parameters."""
        return self.params_model.model_json_schema()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (decorating does not change how it is called)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.name}({', '.join(self.params_model.model_fields)})>"


def _numeric(annotation: Any) -> bool:
    """Whether a parameter takes numbers and not booleans: int, float, or an Optional / Union of them."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return bool(args) and any(a in (int, float) for a in args) and bool not in args and all(
        a in (int, float, type(None)) for a in args)


def _describe(error: Any) -> str:
    if error["type"] == "missing":
        return "missing; add it to tool_params"
    if error["type"] == "extra_forbidden":
        return "not a parameter of this tool; remove it"
    return f"{error['msg']} (got {error.get('input')!r})"


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None, side_effects: bool = False,
) -> Any:
    """Decorator: turn a typed function (sync or async) into a :class:`Tool`.

    Use bare (``@tool``) or with options (``@tool(name="search")``). ``side_effects=True`` marks a
    tool that changes something outside the run: a streamed plan (``--stream-plan``) starts it
    only once the whole plan has arrived and is valid, never while the planner is still writing.
    """
    if fn is None:
        return lambda f: Tool(f, name=name, description=description, side_effects=side_effects)
    return Tool(fn, name=name, description=description, side_effects=side_effects)


class ToolRegistry:
    """Tools by name. Registering a second tool under a taken name is an error, never an overwrite."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._owned: list[Any] = []  # what the tools need kept open (MCP sessions), closed with the registry
        for t in tools:
            self.register(t)

    def own(self, resource: Any) -> None:
        """Keep ``resource`` (anything with ``close()``) open as long as this registry is used."""
        self._owned.append(resource)

    def close(self) -> None:
        """Close what the tools hold open (MCP servers' sessions); the registry is not used after."""
        while self._owned:
            self._owned.pop().close()

    def register(self, fn: Tool | Callable[..., Any], *, name: str | None = None) -> Tool:
        t = fn if isinstance(fn, Tool) and name is None else Tool(
            getattr(fn, "fn", fn), name=name, side_effects=getattr(fn, "side_effects", False))
        if t.name in self._tools:
            raise ToolRegistrationError(
                f"a tool named '{t.name}' is already registered; rename one of them (tool(name=...)) "
                f"or leave out the built-ins (--no-builtins)",
                tool_name=t.name,
            )
        self._tools[t.name] = t
        return t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """A registry with only ``names`` (each must be registered)."""
        wanted = list(names)
        unknown = [n for n in wanted if n not in self._tools]
        if unknown:
            raise ToolRegistrationError(
                f"cannot limit the run to unknown tool(s) {', '.join(unknown)} (registered: {', '.join(self.names()) or 'none'})"
            )
        return ToolRegistry(self._tools[n] for n in wanted)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._tools)


def load_plugin(path: str | Path) -> list[Tool]:
    """Import a Python file and return every :class:`Tool` it defines (decorated with ``@tool``)."""
    path = Path(path)
    if not path.is_file():
        raise ToolRegistrationError(f"plugin {path}: no such file; pass the path of a .py file")
    module_name = f"planvm_plugin_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ToolRegistrationError(f"plugin {path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ToolRegistrationError(f"plugin {path}: importing it raised {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:  # a plugin that calls sys.exit() while loading does not end the program
        sys.modules.pop(module_name, None)
        raise ToolRegistrationError(
            f"plugin {path}: importing it called sys.exit({exc.code!r}); a plugin only defines tools"
        ) from None
    found = [v for v in vars(module).values() if isinstance(v, Tool) and getattr(v.fn, "__module__", None) == module_name]
    if not found:
        raise ToolRegistrationError(f"plugin {path}: defines no tools; decorate its functions with @tool (from tools import tool)")
    return found
