"""A request's tools as the server and the SDK take them: ``spec_of`` validates ``tools``, ``tool_choice``,
``parallel_tool_calls`` and the legacy ``functions`` / ``function_call`` into one ``moa.tools.ToolSpec``, each problem
a ``ConfigError`` naming the field."""

from __future__ import annotations

from typing import Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from moa.errors import ConfigError
from moa.tools import FunctionDefinition, NamedFunction, Tool, ToolChoice, ToolSpec


def spec_of(
    tools: list[Tool] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
    functions: list[FunctionDefinition] | None = None,
    function_call: Literal["none", "auto"] | NamedFunction | None = None,
) -> ToolSpec | None:
    """A request's tools, validated (tools or the legacy functions; a choice names one of them; names unique; a
    strict tool's parameters a valid JSON schema); ``None`` when it offers none. Each problem is a ``ConfigError``
    naming the field."""
    if functions is not None:
        if tools is not None:
            raise ConfigError("send tools or the legacy functions, not both", "functions")
        if tool_choice is not None:
            raise ConfigError("send function_call with functions (tool_choice goes with tools)", "tool_choice")
        legacy = {"name": function_call.name} if isinstance(function_call, NamedFunction) else function_call
        return _checked(ToolSpec.from_legacy(functions, legacy), "functions", "function_call")
    if function_call is not None:
        raise ConfigError("only allowed with functions", "function_call")
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ConfigError("only allowed when tools are given", "tool_choice")
        return None
    spec = ToolSpec(tools=tuple(tools), tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls)
    return _checked(spec, "tools", "tool_choice")


def _checked(spec: ToolSpec, at: str, choice_at: str) -> ToolSpec:
    seen: set[str] = set()
    for i, tool in enumerate(spec.tools):
        where = f"{at}[{i}]" if at == "functions" else f"{at}[{i}].function"
        name = tool.function.name
        if name in seen:
            raise ConfigError(f"{name!r} is offered twice", f"{where}.name")
        seen.add(name)
        if tool.function.parameters is not None:
            try:
                Draft202012Validator.check_schema(tool.function.parameters)
            except SchemaError as e:
                raise ConfigError(f"not a valid JSON schema: {e.message}", f"{where}.parameters") from None
    named = spec.named
    if named is not None and named not in seen:
        field = f"{choice_at}.name" if choice_at == "function_call" else f"{choice_at}.function.name"
        raise ConfigError(f"names {named!r}, which is not one of the tools", field)
    return spec


__all__ = ["spec_of"]
