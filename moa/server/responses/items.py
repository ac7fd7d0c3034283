"""The items of a Responses conversation, and their translation into the chat messages an ensemble reads.

``input`` is a string (one user message) or a list of items; each item is checked with the model of its
``type`` (``ITEM_TYPES``; a message may leave ``type`` out) and kept in the stored form, with an ``id``, so
that ``input_items`` lists it and a later ``previous_response_id`` reads it back. ``to_messages`` turns the
whole conversation into ``moa.types.Message``s: every item type has one translation (``_TRANSLATIONS``), a
message's text parts joined by newlines (its ``input_image`` parts as chat ``image_url`` parts), ``developer`` a
``developer`` turn, a ``function_call`` an assistant turn's tool call (consecutive calls one turn), a
``function_call_output`` the ``tool`` turn answering it. Item types and parts moa reads nowhere yet (reasoning,
files, images by ``file_id``) are refused naming the item, never dropped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from moa.config import config_error
from moa.errors import ConfigError
from moa.tools import FUNCTION_NAME, ToolCall
from moa.types import Message, Role

Item = dict[str, Any]


def new_id(prefix: str) -> str:
    """An id in OpenAI's shape (``msg_...``, ``resp_...``): the prefix and 48 random hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class InputText(_Part):
    type: Literal["input_text"]
    text: str


class OutputText(_Part):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = None


class Refusal(_Part):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Part):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto", "original"] = "auto"


class InputFile(_Part):
    type: Literal["input_file"]
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


Part = Annotated[InputText | OutputText | Refusal | InputImage | InputFile, Field(discriminator="type")]
PARTS: TypeAdapter[Part] = TypeAdapter(Part)
PART_TYPES = frozenset({"input_text", "output_text", "refusal", "input_image", "input_file"})


class MessageItem(BaseModel):
    """A message item: OpenAI's ``EasyInputMessage`` (content a string) and its ``message`` item (a list of parts)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Any]  # the parts are checked one by one (``_check_parts``), so errors name the part
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: str | None = None


class FunctionCallItem(BaseModel):
    """A call the model made (an earlier answer's ``output``, sent back or stored): an assistant turn's tool call."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(BaseModel):
    """A call's result, as the client ran it: a ``tool`` turn answering ``call_id``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[Any]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


#: item type -> the model that checks it
ITEM_TYPES: dict[str, type[BaseModel]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}
#: OpenAI's other item types: known, not read by moa yet
_NOT_READ = frozenset(
    {
        "reasoning",
        "item_reference",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "web_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "custom_tool_call",
        "custom_tool_call_output",
        "compaction",
    }
)


def input_items(value: str | list[Any]) -> list[Item]:
    """The request's ``input`` as stored items, each checked and given an id (``msg_...``) unless it has one."""
    if isinstance(value, str):
        return [_stored(MessageItem(role="user", content=[InputText(type="input_text", text=value)]))]
    if not value:
        raise ConfigError("must be a string or a non-empty list of items", "input")
    return [_check_item(item, f"input[{i}]") for i, item in enumerate(value)]


def _check_item(item: Any, where: str) -> Item:
    if not isinstance(item, dict):
        raise ConfigError("must be an object (an input item)", where)
    kind = item.get("type", "message")
    model = ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        if kind in _NOT_READ:
            raise ConfigError(f"items of type {kind!r} are not supported by moa ensembles yet", f"{where}.type")
        raise ConfigError(f"unknown item type {kind!r}", f"{where}.type")
    try:
        checked = model.model_validate(item)
    except ValidationError as e:
        raise config_error(e, where) from None
    if isinstance(checked, MessageItem) and isinstance(checked.content, list):
        checked.content = [_check_part(part, f"{where}.content[{j}]") for j, part in enumerate(checked.content)]
    if isinstance(checked, FunctionCallOutputItem) and isinstance(checked.output, list):
        checked.output = [_check_part(part, f"{where}.output[{j}]") for j, part in enumerate(checked.output)]
    return _stored(checked)


def _check_part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ConfigError("must be a content part: an object with a type", where)
    if part["type"] not in PART_TYPES:
        raise ConfigError(f"unknown content part type {part['type'][:100]!r}", f"{where}.type")
    try:
        checked: BaseModel = PARTS.validate_python(part)
    except ValidationError as e:
        raise config_error(e, where) from None
    return checked.model_dump(exclude_none=True)


def _stored(item: BaseModel) -> Item:
    """The item as kept: every field set, an id, a message's string content as one ``input_text`` part."""
    data = item.model_dump(exclude_none=True)
    if isinstance(item, MessageItem):
        data["type"] = "message"
        if isinstance(item.content, str):
            kind = "output_text" if item.role == "assistant" else "input_text"
            part: dict[str, Any] = {"type": kind, "text": item.content}
            if kind == "output_text":
                part["annotations"] = []
            data["content"] = [part]
    data.setdefault("status", "completed")
    prefixes = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
    data.setdefault("id", new_id(prefixes.get(data["type"], "item")))
    return data


def _parts_text(parts: list[dict[str, Any]], where: str) -> str:
    """The text of parts that may only be text (a function call's output)."""
    text, chat_parts = _chat_parts(parts, where)
    if chat_parts is not None:
        j = next(j for j, p in enumerate(parts) if p["type"] == "input_image")
        raise ConfigError("a function_call_output takes text parts only", f"{where}[{j}].type")
    return text


def _chat_parts(parts: list[dict[str, Any]], where: str) -> tuple[str, tuple[dict[str, Any], ...] | None]:
    """Responses content parts as a chat message's: its text (text parts joined by newlines), and its chat parts
    (``text``, ``image_url``) when an image is among them, else ``None`` (``moa.content``'s shape)."""
    chat: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = part["type"]
        if kind in ("input_text", "output_text"):
            chat.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            chat.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image":
            chat.append(_image(part, f"{where}[{j}]"))
        else:
            raise ConfigError(f"{kind} parts are not supported by moa ensembles yet", f"{where}[{j}].type")
    text = "\n".join(p["text"] for p in chat if p["type"] == "text")
    return text, tuple(chat) if any(p["type"] != "text" for p in chat) else None


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An ``input_image`` part as chat's ``image_url`` part; a ``file_id`` image needs the Files API moa lacks."""
    url = part.get("image_url")
    if not url:
        field = "file_id" if part.get("file_id") else "image_url"
        raise ConfigError(
            "moa has no Files API: send the image as image_url (a URL or a data: URL)", f"{where}.{field}"
        )
    image: dict[str, Any] = {"url": url}
    if part.get("detail") in ("low", "high"):  # "auto" is chat's default; "original" has no chat equivalent
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system", "developer": "developer"}


def _message(item: Item, where: str) -> Message:
    text, parts = _chat_parts(item["content"], f"{where}.content")
    return Message(_ROLES[item["role"]], text, parts=parts)


def _function_call(item: Item, where: str) -> Message:
    return Message("assistant", "", (ToolCall(item["call_id"], item["name"], item["arguments"]),))


def _function_call_output(item: Item, where: str) -> Message:
    output = item["output"]
    text = output if isinstance(output, str) else _parts_text(output, f"{where}.output")
    return Message("tool", text, tool_call_id=item["call_id"])


#: item type -> its chat message
_TRANSLATIONS: dict[str, Callable[[Item, str], Message]] = {
    "message": _message,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
}


def _joined(messages: list[Message], message: Message) -> bool:
    """Append ``message``; a tool call right after an assistant turn joins it (parallel calls are one turn).
    Whether it was appended (not joined)."""
    last = messages[-1] if messages else None
    if message.tool_calls and last is not None and last.role == "assistant" and not message.content:
        messages[-1] = replace(last, tool_calls=last.tool_calls + message.tool_calls)
        return False
    messages.append(message)
    return True


def to_messages(instructions: str | None, history: list[Item], new: list[Item]) -> list[Message]:
    """The chat conversation of a request: its instructions as the system message, then the items of the
    response it continues (``history``), then its own ``input`` (``new``, whose paths name ``input[i]``)."""
    return translated(instructions, history, new)[0]


def translated(instructions: str | None, history: list[Item], new: list[Item]) -> tuple[list[Message], list[str]]:
    """``to_messages``'s conversation, and where each of its messages came from (``instructions``,
    ``previous_response_id`` or ``input[i]``), so an error the chat request meets can name the request's field."""
    messages = [Message("system", instructions)] if instructions else []
    origins = ["instructions"] if instructions else []
    calls: set[str] = set()
    for i, item in enumerate([*history, *new]):
        own = i >= len(history)
        where = f"input[{i - len(history)}]" if own else f"previous_response_id: item {i}"
        if item["type"] == "function_call_output" and item["call_id"] not in calls:
            raise ConfigError("names no function_call before it", f"{where}.call_id")
        if item["type"] == "function_call":
            calls.add(item["call_id"])
        if _joined(messages, _TRANSLATIONS[item["type"]](item, where)):
            origins.append(where if own else "previous_response_id")
    if messages[-1].role not in ("user", "tool"):
        where = f"input[{len(new) - 1}]" if new else "input"
        where += ".role" if new and new[-1]["type"] == "message" else ""
        raise ConfigError("the last input item must be a user message or a function_call_output", where)
    return messages, origins
