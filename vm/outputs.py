"""Mapping a tool's result onto a ``calling`` step's ``output_vars``.

* no names: the result is not stored;
* one name (a string or a one-element list): the whole result is stored under it;
* several names: each name takes the same-named key of the result, which must be a JSON object
  (a dict, or text holding one — fences and prose around it are fine). A missing key is an error
  naming the key and the keys that were there.
"""

from __future__ import annotations

from typing import Any

from vm.errors import OutputMappingError
from vm.jsontext import extract_json
from vm.values import shorten

__all__ = ["map_outputs"]


def map_outputs(result: Any, names: tuple[str, ...], tool_name: str) -> dict[str, Any]:
    if not names:
        return {}
    if len(names) == 1:
        return {names[0]: result}
    wanted = ", ".join(names)
    obj = result
    if isinstance(result, str):
        try:
            obj = extract_json(result, (dict,))
        except ValueError:
            raise OutputMappingError(
                f"tool '{tool_name}' returned text with no JSON object in it, so it cannot fill output_vars "
                f"[{wanted}]; ask the tool for a JSON object with those keys, or use one output var. "
                f"The text began: {shorten(result)!r}",
            ) from None
    if not isinstance(obj, dict):
        raise OutputMappingError(
            f"tool '{tool_name}' returned a {type(obj).__name__}, but output_vars [{wanted}] need a JSON object "
            f"with those keys; use one output var to store the whole result",
        )
    keys = [str(k) for k in obj]
    for name in names:
        if name not in obj:
            raise OutputMappingError(
                f"the result of tool '{tool_name}' has no key '{name}' for output_vars (keys there: "
                f"{', '.join(keys) or 'none'}); rename the output var to one of them",
                variable=name,
                keys=keys,
            )
    return {name: obj[name] for name in names}
