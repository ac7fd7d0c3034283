"""The Responses API's function tools as the chat request's (``moa.tools.ToolSpec``, checked by ``spec_of``), and
an answer's calls as ``function_call`` output items.

The Responses API writes a function tool flat (``{"type": "function", "name", "description", "parameters",
"strict"}``) and a named ``tool_choice`` as ``{"type": "function", "name"}``; chat completions nest both under
``function``. Other tool types (web search, file search, computer use, MCP) are refused naming the tool.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moa.config import config_error
from moa.errors import ConfigError
from moa.tool_requests import spec_of
from moa.tools import FUNCTION_NAME, FunctionDefinition, NamedFunction, NamedToolChoice, Tool, ToolChoice, ToolSpec


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)


def tool_spec(tools: list[Any] | None, tool_choice: Any, parallel_tool_calls: bool | None) -> ToolSpec | None:
    """The request's tools in the chat request's terms; ``None`` when it offers none."""
    chat_tools = None if tools is None else [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    try:
        return spec_of(chat_tools, _choice(tool_choice), parallel_tool_calls)
    except ConfigError as e:
        raise _renamed(e) from None


def _tool(tool: Any, where: str) -> Tool:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise ConfigError("only function tools are supported by moa ensembles", f"{where}.type")
    try:
        t = FunctionTool.model_validate(tool)
    except ValidationError as e:
        raise config_error(e, where) from None
    return Tool(
        function=FunctionDefinition(name=t.name, description=t.description, parameters=t.parameters, strict=t.strict)
    )


def _choice(choice: Any) -> ToolChoice | None:
    if choice is None or choice in ("none", "auto", "required"):
        return choice  # type: ignore[no-any-return]
    if not isinstance(choice, dict) or choice.get("type") != "function":
        raise ConfigError("must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}", "tool_choice")
    try:
        named = NamedFunctionChoice.model_validate(choice)
    except ValidationError as e:
        raise config_error(e, "tool_choice") from None
    return NamedToolChoice(function=NamedFunction(name=named.name))


def _renamed(error: ConfigError) -> ConfigError:
    """``spec_of``'s paths (``tools[0].function.name``, ``tool_choice.function.name``) in the Responses terms."""
    path = (error.path or "").replace(".function.", ".")
    message = str(error).removeprefix(f"{error.path}: ") if error.path else str(error)
    return ConfigError(message, path or None)


def echoed_tools(spec: ToolSpec | None) -> tuple[list[dict[str, Any]], Any, bool]:
    """The response object's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, in the Responses shape."""
    if spec is None:
        return [], "auto", True
    tools = [{"type": "function", **t.function.model_dump(exclude_none=True)} for t in spec.tools]
    choice: Any = spec.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        choice = {"type": "function", "name": choice.function.name}
    return tools, choice, spec.parallel_tool_calls is not False


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    """A ``function_call`` output item."""
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
