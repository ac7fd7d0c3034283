"""The final answer's tool calls checked against the request's tools (``moa.repair`` runs the check).

A request that constrains its tool calls (``tool_choice`` ``none``, ``required`` or a named function,
``parallel_tool_calls: false``, or a ``strict`` tool) asks this of the answer: under ``none`` no call; under
``required`` at least one; under a named function, calls of that function only; with ``parallel_tool_calls: false``
one call at most; every call names one of the tools, with arguments that are one JSON object; a ``strict`` tool's
arguments are valid under its ``parameters`` (JSON Schema draft 2020-12, the first violation named at its JSON
path). An answer that breaks one gets one repair call quoting the problem, then ``InvalidToolCallError`` (the
server's 502 ``invalid_tool_call``); its ``param`` is the request field the answer broke.

Tools under ``auto`` (or no ``tool_choice``) with no strict tool are not checked, as OpenAI does not check them:
a checked answer cannot be streamed before its check, and an agent's final text should stream.
"""

from __future__ import annotations

import json

import jsonschema
import referencing.exceptions
from jsonschema.exceptions import best_match

from moa.errors import InvalidToolCallError
from moa.repair import AnswerCheck
from moa.structured import json_path
from moa.tools import ToolCall, ToolSpec
from moa.types import ChatRequest, Generation

#: at most this much of a call's refused arguments is quoted in the problem
_QUOTE = 80


def tool_check(request: ChatRequest) -> AnswerCheck | None:
    """The check of the final answer's tool calls that ``request``'s tools ask for; ``None`` when it offers none."""
    spec = request.tools
    if spec is None or not spec.tools or not _constrained(spec):
        return None
    validators = {
        t.function.name: jsonschema.Draft202012Validator(t.function.parameters)
        for t in spec.tools
        if t.function.strict and t.function.parameters is not None
    }

    def check(answer: Generation) -> InvalidToolCallError | None:
        return _choice_problem(spec, answer.tool_calls) or next(
            (p for call in answer.tool_calls if (p := _call_problem(spec, validators, call)) is not None), None
        )

    return check


def _constrained(spec: ToolSpec) -> bool:
    """Whether ``spec`` asks anything of the answer's calls beyond what the model chooses."""
    strict = any(t.function.strict for t in spec.tools)
    return strict or spec.tool_choice not in (None, "auto") or spec.parallel_tool_calls is False


def _choice_problem(spec: ToolSpec, calls: tuple[ToolCall, ...]) -> InvalidToolCallError | None:
    names = ", ".join(repr(c.name) for c in calls)
    choice = spec.tool_choice
    if choice == "none" and calls:
        return InvalidToolCallError(f"tool_choice is 'none', but the answer calls {names}")
    if choice == "required" and not calls:
        return InvalidToolCallError("tool_choice is 'required', but the answer calls no tool")
    named = spec.named
    if named is not None:
        if not calls:
            return InvalidToolCallError(f"tool_choice names {named!r}, but the answer calls no tool")
        others = [c.name for c in calls if c.name != named]
        if others:
            return InvalidToolCallError(f"tool_choice names {named!r}, but the answer calls {others[0]!r}")
    if spec.parallel_tool_calls is False and len(calls) > 1:
        return InvalidToolCallError(
            f"parallel_tool_calls is false, but the answer makes {len(calls)} calls ({names})", "parallel_tool_calls"
        )
    return None


def _call_problem(
    spec: ToolSpec, validators: dict[str, jsonschema.Draft202012Validator], call: ToolCall
) -> InvalidToolCallError | None:
    if spec.by_name(call.name) is None:
        offered = ", ".join(repr(t.function.name) for t in spec.tools)
        return InvalidToolCallError(
            f"the answer calls {call.name!r}, which is not one of the tools ({offered})", "tools"
        )
    try:
        arguments = json.loads(call.arguments)
    except (ValueError, RecursionError) as e:
        return InvalidToolCallError(
            f"the arguments of {call.name!r} are not valid JSON ({e}): {_quoted(call)}", "tools"
        )
    if not isinstance(arguments, dict):
        return InvalidToolCallError(f"the arguments of {call.name!r} are not a JSON object: {_quoted(call)}", "tools")
    validator = validators.get(call.name)
    try:
        error = None if validator is None else best_match(validator.iter_errors(arguments))
    except (jsonschema.exceptions.SchemaError, referencing.exceptions.Unresolvable, RecursionError) as e:
        return InvalidToolCallError(f"the parameters of {call.name!r} cannot be applied: {e}", "tools")
    if error is not None:
        return InvalidToolCallError(
            f"the arguments of {call.name!r} do not match its parameters: at {json_path(error.absolute_path)}: "
            f"{error.message}",
            "tools",
        )
    return None


def _quoted(call: ToolCall) -> str:
    text = call.arguments
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "...")


__all__ = ["tool_check"]
