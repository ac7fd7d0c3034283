"""Tools in process on vLLM under ``tool_choice: auto``: the model decides, writing a call in its own syntax, and a
vLLM tool parser (``backends.<name>.tool_parser``: any name vLLM's ``ToolParserManager`` knows, e.g. ``hermes``)
reads it back, as vLLM's own server does with ``--tool-call-parser``.

A whole answer is split by the parser into text and calls; a stream is fed to it piece by piece and comes out as
text pieces and OpenAI's tool-call pieces (``moa.tools.ToolCallDelta``). With ``parallel_tool_calls: false`` only
the first call is kept. The choices that leave the model none (a named function, ``required``) are written by
structured outputs instead (``proposers.vllm_tools``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import vllm.tool_parsers  # noqa: F401  # registers vLLM's built-in parsers by name
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.tool_parsers import ToolParser, ToolParserManager

from moa.errors import ConfigError
from moa.tools import ToolCall, ToolCallDelta, ToolSpec, new_call_id


def parser_class(name: str, backend: str) -> type[ToolParser]:
    """vLLM's tool parser registered as ``name``; an unknown name is a ``ConfigError`` naming the field and the
    names vLLM knows."""
    try:
        return ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = ", ".join(ToolParserManager.list_registered())
        raise ConfigError(
            f"vLLM has no tool parser {name!r}; it knows: {known}", f"backends.{backend}.tool_parser"
        ) from None


def parses(spec: ToolSpec | None) -> bool:
    """Whether ``spec`` leaves the call to the model (``auto``, or no choice given, with tools offered)."""
    return spec is not None and bool(spec.tools) and spec.tool_choice in (None, "auto")


@dataclass(frozen=True, slots=True)
class Parsed:
    """A whole answer read by the parser: its text (without the calls' markup) and its calls."""

    text: str
    calls: tuple[ToolCall, ...]


@dataclass
class AutoCalls:
    """One answer's parsing: parsers keep state (as vLLM's server does, one an answer, whole or streamed)."""

    parser: ToolParser
    request: ChatCompletionRequest
    single: bool  # parallel_tool_calls: false
    #: a stream: the text and token ids read so far, and the calls whose first piece (id, name) was sent
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    sent: set[int] = field(default_factory=set)
    written: str = ""  # the text given out

    @classmethod
    def start(cls, parser: type[ToolParser], tokenizer: Any, spec: ToolSpec, model: str) -> AutoCalls:
        request = ChatCompletionRequest.model_validate(
            {
                "model": model,
                "messages": [],
                "tools": [t.model_dump(exclude_none=True) for t in spec.tools],
                "tool_choice": "auto",
                "parallel_tool_calls": spec.parallel_tool_calls is not False,
            }
        )
        offered: list[Any] = list(request.tools or ())
        instance = parser(tokenizer, tools=offered)
        adjusted = instance.adjust_request(request)
        if not isinstance(adjusted, ChatCompletionRequest):  # a chat request comes back as one
            adjusted = request
        return cls(instance, adjusted, single=spec.parallel_tool_calls is False)

    @property
    def skip_special_tokens(self) -> bool:
        """Whether the answer's text may leave special tokens out (a parser whose call markers are special tokens
        in some models asks for them: Hermes)."""
        return bool(self.request.skip_special_tokens)

    def whole(self, text: str) -> Parsed:
        info = self.parser.extract_tool_calls(text, self.request)
        if not info.tools_called:
            return Parsed(text, ())
        calls = tuple(ToolCall(c.id or new_call_id(), c.function.name, c.function.arguments) for c in info.tool_calls)
        return Parsed(info.content or "", calls[:1] if self.single else calls)

    def piece(self, delta_text: str, delta_ids: Sequence[int]) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The text and call pieces one streamed piece of the answer makes (either may be empty)."""
        previous_text, previous_ids = self.text, list(self.token_ids)
        self.text += delta_text
        self.token_ids += delta_ids
        message = self.parser.extract_tool_calls_streaming(
            previous_text, self.text, delta_text, previous_ids, self.token_ids, list(delta_ids), self.request
        )
        if message is None:
            return "", ()
        pieces = []
        for call in message.tool_calls:
            if self.single and call.index > 0:
                continue
            function = call.function
            first_id = None
            if call.index not in self.sent:
                self.sent.add(call.index)
                first_id = call.id or new_call_id()
            name = function.name if function is not None else None
            arguments = (function.arguments if function is not None else None) or ""
            pieces.append(ToolCallDelta(call.index, first_id, name, arguments))
        self.written += message.content or ""
        return message.content or "", tuple(pieces)

    def unsent_text(self) -> str:
        """At the end of a stream that made no call: the text the parser held back (the start of a call marker
        that never came, e.g. ``<tool``)."""
        if self.sent or not self.text.startswith(self.written):
            return ""
        return self.text[len(self.written) :]

    def rest(self) -> tuple[ToolCallDelta, ...]:
        """At the stream's end: the arguments the parser read for its last call but had not sent yet (none when
        that call's first piece, its name, was never sent: e.g. the token cap cut it)."""
        last = len(self.parser.prev_tool_call_arr) - 1
        if last not in self.sent:
            return ()
        remaining = self.parser.get_remaining_unstreamed_args()
        return (ToolCallDelta(last, None, None, remaining),) if remaining else ()

    @property
    def called(self) -> bool:
        """A stream made at least one call."""
        return bool(self.sent)


__all__ = ["AutoCalls", "Parsed", "parser_class", "parses"]
