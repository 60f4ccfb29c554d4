"""Constrained decoding: a local model writes its reasoning freely, then a plan that fits the schema.

:class:`ConstrainedLocal` wraps a :class:`tools.llm_local.LocalChat`. Generation runs in two
phases: the reasoning, unconstrained, until ``</think>`` (or a token budget); then, after
``</think>`` and an opening ```` ```json ```` fence, the plan under an xgrammar grammar compiled from
the plan's JSON Schema (generated from the VM's models). The grammar bounds every string, list and
object (see :func:`decoding_schema`), so even a model that has learned nothing ends with a
schema-valid plan within the token budget.

xgrammar is imported only here (install it with :data:`INSTALL_LINE` beside the
``local`` extra).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from vm.errors import LLMError
from vm.llm import Completion
from vm.plan import plan_json_schema

__all__ = ["ConstrainedLocal", "decoding_schema"]

#: How to install constrained decoding (xgrammar's own requirements would pull in GPU-only packages).
INSTALL_LINE = "pip install -e '.[constrained]' && pip install --no-deps 'xgrammar==0.2.8'"

_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]{0,39}$"


def _scalar(max_text: int) -> dict[str, Any]:
    return {"anyOf": [{"type": "string", "maxLength": max_text}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]}


def _value(max_text: int) -> dict[str, Any]:
    """A bounded JSON value: a scalar, a short list of scalars, or a small object of scalars."""
    scalar = _scalar(max_text)
    return {
        "anyOf": [
            *scalar["anyOf"],
            {"type": "array", "items": scalar, "maxItems": 8},
            {"type": "object", "additionalProperties": scalar, "maxProperties": 6, "propertyNames": {"type": "string", "pattern": _NAME_PATTERN}},
        ]
    }


def decoding_schema(schema: dict[str, Any] | None = None, max_steps: int = 24, max_text: int = 600) -> dict[str, Any]:
    """A plan schema (default: the VM's) with every string, list and open object bounded, for
    decoding. Anything this schema accepts, the plan's own schema accepts too.
    """
    schema = copy.deepcopy(schema if schema is not None else plan_json_schema())

    def bound(node: Any) -> Any:
        if isinstance(node, list):
            return [bound(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = {k: bound(v) for k, v in node.items() if k not in ("discriminator", "title", "description", "default")}
        if node == {}:
            return _value(max_text)
        if node.get("type") == "string":
            node.setdefault("maxLength", max_text)
        if node.get("type") == "integer":  # seq_no and jump targets: no endless digits
            node.setdefault("minimum", 0)
            node.setdefault("maximum", 9999)
        if node.get("type") == "array":
            node.setdefault("maxItems", 8)
        if node.get("type") == "object" and node.get("additionalProperties") is True:
            node["additionalProperties"] = _value(max_text)
            node["propertyNames"] = {"type": "string", "pattern": _NAME_PATTERN}
            node.setdefault("maxProperties", 8)
        return node

    schema = bound(schema)
    schema["minItems"] = 1
    schema["maxItems"] = max_steps
    return schema


class ConstrainedLocal:
    """A ``vm.LLM`` over a local model whose plans are constrained to the plan schema."""

    supports_plan_schema = True

    def __init__(self, local: Any, *, max_think_tokens: int = 512, max_plan_tokens: int = 4096, max_steps: int = 24, max_text: int = 600) -> None:
        self.local = local
        self.max_think_tokens = max_think_tokens
        self.max_plan_tokens = max_plan_tokens
        self.max_steps = max_steps
        self.max_text = max_text

    @property
    def model(self) -> str:
        return self.local.model

    def grammar(self, plan_schema: dict[str, Any]) -> Any:
        """The compiled grammar for ``plan_schema`` (bounded), for this model's tokenizer."""
        # Key order matters: the grammar emits object properties in the order the schema lists them.
        schema = json.dumps(decoding_schema(plan_schema, self.max_steps, self.max_text))
        return _processor(self.local.model_name, self.local.adapter, self.local.device, schema)

    def complete(self, prompt: str, *, system: str | None = None, json_schema: dict[str, Any] | None = None, plan_schema: dict[str, Any] | None = None) -> Completion:
        if plan_schema is None:
            return self.local.complete(prompt, system=system, json_schema=json_schema)
        return self._plan(prompt, system, plan_schema, None)

    def stream(self, prompt: str, *, system: str | None = None, on_delta: Any, plan_schema: dict[str, Any] | None = None) -> Completion:
        """As :meth:`complete`, with ``on_delta`` given the reply as it is written: the reasoning
        once it is done, then the plan's JSON token by token (a streamed plan, planner.stream)."""
        if plan_schema is None:
            return self.local.stream(prompt, system=system, on_delta=on_delta)
        return self._plan(prompt, system, plan_schema, on_delta)

    def _plan(self, prompt: str, system: str | None, plan_schema: dict[str, Any], on_delta: Any) -> Completion:
        _model, tokenizer, device = self.local.loaded()
        inputs = self.local.prompt_ids(prompt, system)
        # Phase 1: free reasoning, up to </think>.
        thinking, prompt_tokens, think_tokens = self.local.generate(
            inputs, max_new_tokens=self.max_think_tokens, stop_strings=["</think>"], tokenizer=tokenizer
        )
        reasoning = thinking.split("</think>")[0].replace("<think>", "").strip()
        # Phase 2: the plan, under the grammar, after a fixed "</think>\n```json\n".
        head = tokenizer.decode(inputs["input_ids"][0]) + (thinking.split("</think>")[0] if "</think>" in thinking else thinking)
        ids = tokenizer(head + "</think>\n```json\n", return_tensors="pt", add_special_tokens=False)
        ids = {k: v.to(device) for k, v in ids.items()}
        closing = _ClosingBias(_fresh(self.grammar(plan_schema)), _closing_weights(self.local.model_name, self.local.adapter, self.local.device), ids["input_ids"].shape[1], self.max_plan_tokens)
        extra: dict[str, Any] = {}
        if on_delta is not None:
            from transformers import TextStreamer

            on_delta(f"<think>{reasoning}</think>\n```json\n")

            class _Forward(TextStreamer):
                def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                    if text:
                        on_delta(text)

            extra["streamer"] = _Forward(tokenizer, skip_prompt=True, skip_special_tokens=True)
        plan_text, _, plan_tokens = self.local.generate(ids, max_new_tokens=self.max_plan_tokens, logits_processor=[closing], **extra)
        try:
            # strict=False: the grammar lets control characters into strings; re-serialising escapes them.
            plan = json.loads(plan_text, strict=False)
        except json.JSONDecodeError as exc:
            raise LLMError(
                f"constrained decoding ran out of its {self.max_plan_tokens}-token budget before the plan was complete; "
                f"raise max_plan_tokens or lower max_steps"
            ) from exc
        return Completion(
            text=f"```json\n{json.dumps(plan, ensure_ascii=False)}\n```", reasoning=reasoning, model=self.local.model,
            prompt_tokens=prompt_tokens, completion_tokens=think_tokens + plan_tokens,
        )


@lru_cache(maxsize=8)
def _processor(model: str, adapter: str | None, device: str, schema: str) -> Any:
    """The compiled grammar for a model's tokenizer (compiling takes a moment; done once)."""
    try:
        import xgrammar as xgr
    except ImportError as exc:
        raise LLMError(f"constrained decoding needs xgrammar: {INSTALL_LINE}") from exc
    from tools.llm_local import load_model

    loaded, tokenizer, _device = load_model(model, adapter, device)
    vocab_size = loaded.get_output_embeddings().weight.shape[0]
    with _native_stderr_silenced():  # xgrammar's C++ side prints notes on tokenizers straight to fd 2
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        return xgr.GrammarCompiler(info).compile_json_schema(schema, any_whitespace=False)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null for the duration."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@lru_cache(maxsize=4)
def _closing_weights(model: str, adapter: str | None, device: str) -> Any:
    """Per token: 2 when it only closes (a string, list or object), 1 when it closes or separates
    without opening anything, else 0. ("}, {" closes one object and opens the next: 0.)"""
    import torch

    from tools.llm_local import load_model

    loaded, tokenizer, _device = load_model(model, adapter, device)
    size = loaded.get_output_embeddings().weight.shape[0]
    weights = torch.zeros(size)
    for token_id in range(min(size, len(tokenizer))):
        text = tokenizer.decode([token_id])
        if not text.strip() or any(c in text for c in "[{"):
            continue
        if all(c in '"]} \n' for c in text):
            weights[token_id] = 2.0
        elif all(c in '"]}, \n' for c in text):
            weights[token_id] = 1.0
    return weights


class _ClosingBias:
    """The grammar's mask, and near the end of the token budget a strong preference for tokens that
    close what is open, so the plan always ends inside the budget. (Lists and objects are bounded
    by the schema, so closing first and adding items second ends every structure quickly.)"""

    def __init__(self, grammar: Any, weights: Any, prompt_length: int, budget: int) -> None:
        self.grammar = grammar
        self.weights = weights
        self.start_closing = prompt_length + budget - min(512, budget // 3)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores = self.grammar(input_ids, scores)
        if input_ids.shape[1] >= self.start_closing:
            scores = scores + 1e4 * self.weights.to(scores.device, scores.dtype)[: scores.shape[-1]]
        return scores


def _fresh(compiled: Any) -> Any:
    """A new logits processor (it keeps the matcher's state, so one per generation)."""
    import xgrammar as xgr

    return xgr.contrib.hf.LogitsProcessor(compiled)
