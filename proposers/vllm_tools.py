"""Tools in process on vLLM, where the caller leaves the model no choice: a named ``tool_choice`` or ``required``.

vLLM's structured outputs make the answer the call itself, as vLLM's own server does for these choices: under a
named function the answer is its arguments (a JSON object under the function's ``parameters``); under
``required`` a JSON array of ``{"name", "arguments"}`` objects, each naming an offered tool with arguments under
its schema (one item at most with ``parallel_tool_calls: false``). ``none`` leaves the tools out. ``auto`` would
need a tool parser reading the model's own call syntax: refused by name (``tools_refusal``).
"""

from __future__ import annotations

import json
from typing import Any

from moa.errors import MalformedResponseError
from moa.tools import ToolCall, ToolSpec, new_call_id

#: an offered function without ``parameters`` takes any JSON object
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def forced(spec: ToolSpec | None) -> bool:
    """Whether ``spec`` makes the answer a call (a named function, or ``required``)."""
    return spec is not None and bool(spec.tools) and (spec.named is not None or spec.tool_choice == "required")


def call_schema(spec: ToolSpec) -> dict[str, Any]:
    """The JSON schema the answer must match under ``spec`` (``forced``)."""
    named = spec.named
    if named is not None:
        tool = spec.by_name(named)
        return (tool.function.parameters if tool is not None else None) or ANY_OBJECT
    defs: dict[str, Any] = {}
    variants = []
    for t in spec.tools:
        arguments = dict(t.function.parameters or ANY_OBJECT)
        defs.update(arguments.pop("$defs", {}))  # lifted to the root, where their "#/$defs/..." refs point
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": variants}, "minItems": 1}
    if spec.parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def calls_from(text: str, spec: ToolSpec, backend: str) -> tuple[ToolCall, ...]:
    """The calls an answer written under ``call_schema(spec)`` makes; text that does not parse (the token cap cut
    it) is a ``MalformedResponseError`` naming the backend."""
    named = spec.named
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MalformedResponseError(
            f"{backend}: the forced tool call is not complete JSON ({e}); raise max_tokens", backend=backend
        ) from None
    if named is not None:
        return (ToolCall(new_call_id(), named, json.dumps(value)),)
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) and "arguments" in item for item in value
    ):
        raise MalformedResponseError(f"{backend}: the forced tool calls are not a list of calls", backend=backend)
    return tuple(ToolCall(new_call_id(), item["name"], json.dumps(item["arguments"])) for item in value)


__all__ = ["call_schema", "calls_from", "forced"]
