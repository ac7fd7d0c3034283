"""Tools, as OpenAI's chat completions API names them: the functions a request offers (``Tool``), which one it asks
for (``tool_choice``), and the calls an answer makes (``ToolCall``).

``ToolSpec`` is what one request offers, validated at the edge (server, SDK) and carried to every call of the
request on its ``SamplingParams.tools``: each backend writes it in its own wire format (``ToolSpec.wire``: OpenAI's
body fields) or refuses it by name (``moa.tool_requests`` validates a request's). The legacy ``functions`` /
``function_call`` fields become the same spec (``from_legacy``). A ``ToolCall`` is one call an answer makes; its text form (``call_text``) is what later layers,
the aggregator and the defenses read of a proposal that calls tools.

Imports only pydantic, so every layer may use it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: OpenAI's rule for a function's name
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunctionDefinition(_Strict):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    #: the arguments' JSON schema (an object schema); none: the function takes no arguments
    parameters: dict[str, Any] | None = None
    #: the arguments must match ``parameters``: moa checks the final answer's calls with ``jsonschema``
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]


class NamedToolChoice(_Strict):
    """``tool_choice`` naming one function: the answer must call it."""

    type: Literal["function"] = "function"
    function: NamedFunction


#: ``none``: answer in text; ``auto``: the model decides; ``required``: at least one call; or one named function
ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolSpec(_Strict):
    """The tools one request offers and how it asks for them; ``None`` fields are the upstream's defaults."""

    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def by_name(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.function.name == name), None)

    @property
    def named(self) -> str | None:
        """The function ``tool_choice`` names, if it names one."""
        return self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None

    def wire(self) -> dict[str, Any]:
        """OpenAI's body fields for this spec (the ones it sets)."""
        body: dict[str, Any] = {}
        if self.tools:
            body["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
        if self.tool_choice is not None:
            choice = self.tool_choice
            body["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
        if self.parallel_tool_calls is not None and self.tools:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        return body

    @classmethod
    def from_legacy(cls, functions: list[FunctionDefinition], function_call: Any) -> ToolSpec:
        """The legacy ``functions`` / ``function_call`` fields as tools: ``{"name": f}`` names a function."""
        choice: ToolChoice | None
        if isinstance(function_call, dict):
            choice = NamedToolChoice(function=NamedFunction(name=function_call["name"]))
        else:
            choice = function_call
        return cls(tools=tuple(Tool(function=f) for f in functions), tool_choice=choice)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call an answer makes: ``arguments`` as the model wrote them (a JSON object's text, when well made)."""

    id: str
    name: str
    arguments: str = "{}"

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's ``tool_calls[i]`` object."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def parsed_arguments(self) -> Any:
        """The arguments as JSON; ``None`` when they do not parse (a ``None`` argument list reads as ``None`` too,
        which no object schema accepts)."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return None

    def same_call(self, other: ToolCall) -> bool:
        """The same function with the same arguments (as parsed JSON; as written when they do not parse)."""
        if self.name != other.name:
            return False
        mine, theirs = self.parsed_arguments(), other.parsed_arguments()
        if mine is None or theirs is None:
            return self.arguments == other.arguments
        return bool(mine == theirs)


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One streamed piece of the ``index``-th call of an answer: its id and name come in its first piece, the
    arguments in pieces after (OpenAI's ``delta.tool_calls[i]``)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_dict(self) -> dict[str, Any]:
        piece: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.id is not None:
            piece["id"] = self.id
            piece["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        piece["function"] = function
        return piece


class StreamedIds:
    """The ids of one streamed response's calls: each call's first piece carries its id (the upstream's, unless
    another call of the response has it already, else a new one) and ``type``; later pieces carry none."""

    def __init__(self) -> None:
        self._ids: dict[int, str] = {}

    def pieces(self, pieces: tuple[ToolCallDelta, ...]) -> tuple[ToolCallDelta, ...]:
        return tuple(self._piece(p) for p in pieces)

    def _piece(self, piece: ToolCallDelta) -> ToolCallDelta:
        if piece.index in self._ids:
            return ToolCallDelta(piece.index, None, piece.name, piece.arguments)
        used = set(self._ids.values())
        call_id = piece.id if piece.id and piece.id not in used else new_call_id()
        self._ids[piece.index] = call_id
        return ToolCallDelta(piece.index, call_id, piece.name, piece.arguments)


def as_pieces(calls: tuple[ToolCall, ...]) -> tuple[ToolCallDelta, ...]:
    """A whole answer's calls as one streamed piece each."""
    return tuple(ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(calls))


def new_call_id() -> str:
    """A tool-call id unique to its response, for a call whose upstream sent none."""
    return f"call_{uuid.uuid4().hex[:24]}"


def call_text(calls: tuple[ToolCall, ...] | list[ToolCall]) -> str:
    """The calls as later layers, the aggregator and the defenses read them: one line each, the function and its
    arguments."""
    return "\n".join(f"[tool call] {c.name}({c.arguments})" for c in calls)


def with_call_text(text: str, calls: tuple[ToolCall, ...] | list[ToolCall]) -> str:
    """An answer's text form: its text, then its calls (``call_text``)."""
    if not calls:
        return text
    return "\n".join(part for part in (text.strip(), call_text(calls)) if part)


def calls_of(pieces: list[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """A streamed answer's calls, assembled from their pieces in index order (an id made where none came)."""
    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    args: dict[int, list[str]] = {}
    for piece in pieces:
        if piece.id:
            ids.setdefault(piece.index, piece.id)
        if piece.name:
            names[piece.index] = names.get(piece.index, "") + piece.name
        args.setdefault(piece.index, []).append(piece.arguments)
    return tuple(
        ToolCall(ids.get(i) or new_call_id(), names.get(i, ""), "".join(args.get(i, [])) or "{}")
        for i in sorted(set(ids) | set(names) | set(args))
    )


def unique_ids(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    """The calls, each with an id unique among them: the upstream's kept, a new one where it sent none or repeated
    one."""
    seen: set[str] = set()
    out = []
    for call in calls:
        call_id = call.id if call.id and call.id not in seen else new_call_id()
        seen.add(call_id)
        out.append(call if call_id == call.id else ToolCall(call_id, call.name, call.arguments))
    return tuple(out)


__all__ = [
    "FunctionDefinition",
    "NamedFunction",
    "NamedToolChoice",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "StreamedIds",
    "ToolSpec",
    "as_pieces",
    "call_text",
    "calls_of",
    "new_call_id",
    "unique_ids",
    "with_call_text",
]
