"""The ``POST /v1/responses`` request: the fields moa honours, ignores or refuses, and its translation into the
one request an ensemble runs (``moa.server.schema.ParsedChat``, the same object chat completions make).

Honoured: ``model`` (an ensemble's name), ``input`` (a string, or items: ``moa.server.responses.items``),
``instructions`` (the system message, not carried to a continuation, as OpenAI does), ``max_output_tokens``,
``temperature``, ``top_p``, ``text.format`` (``text``, ``json_object``, ``json_schema``: the chat request's
``response_format``, ``formats.py``), function ``tools``, ``tool_choice``, ``parallel_tool_calls`` (the chat
request's tools, ``tools.py``), ``metadata`` (kept and returned), ``store``, ``previous_response_id``, ``stream``,
and moa's extensions as on chat completions: ``moa_trace``, ``moa_<name>`` of ``RequestExtensions``,
``stream_options.include_progress``.

Ignored, since they cannot change the answer: ``user``, ``service_tier``, ``safety_identifier``,
``prompt_cache_key``, ``prompt_cache_retention``, ``include``, ``truncation``,
``stream_options.include_obfuscation``.

Refused unless neutral (``_NEUTRAL``): ``reasoning``, ``top_logprobs``, ``background``, ``max_tool_calls``, ``prompt``,
``conversation``. Any other field is refused as unknown. Every refusal is a ``ConfigError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from moa.config import config_error
from moa.ensemble import build_messages
from moa.errors import ConfigError
from moa.response_format import JSONFormat
from moa.sampling import MaxTokens, RequestExtensions, Temperature, TopP, extensions, server_alias
from moa.server.responses.formats import TextConfig, chat_format
from moa.server.responses.items import Item, input_items, to_messages, translated
from moa.server.responses.tools import tool_spec
from moa.server.schema import ParsedChat, asks_nothing, without_neutral
from moa.tools import ToolSpec
from moa.types import ChatRequest, SamplingParams

#: OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512
MAX_METADATA, MAX_KEY, MAX_VALUE = 16, 64, 512

#: fields with the values that ask for nothing (``None`` always does); any other value is refused
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "reasoning": ({},),
    "top_logprobs": (0,),
    "background": (False,),
    "max_tool_calls": (),
    "prompt": (),
    "conversation": (),
    "context_management": (),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_obfuscation: bool | None = None  # accepted, ignored: moa sends no obfuscation padding
    include_progress: bool = False  # moa's extension: ``moa.progress`` events before the answer


class ResponsesRequest(RequestExtensions):
    """The body as sent; ``input`` is checked item by item (``items.input_items``)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, alias_generator=server_alias)

    model: str
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None  # null or absent: true, as OpenAI
    previous_response_id: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    text: TextConfig | None = None
    tools: list[Any] | None = None  # function tools, checked by ``tools.tool_spec``
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    moa_trace: bool = False
    # accepted and ignored: they do not change the answer
    user: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None


@dataclass(frozen=True, slots=True)
class ParsedResponses:
    """A checked Responses request: the body's model, its input as stored items, and what to answer with."""

    body: ResponsesRequest
    input: list[Item]
    response_format: JSONFormat | None = None
    tools: ToolSpec | None = None
    #: ``--lenient``: the fields accepted but ignored, which the response names (``x-moa-ignored-fields``)
    ignored: tuple[str, ...] = ()

    @property
    def include_progress(self) -> bool:
        return self.body.stream_options is not None and self.body.stream_options.include_progress

    def field_of(self, history: list[Item], path: str | None) -> str | None:
        """The request's field for a path into the chat request's messages (``messages[2].content[1]`` ->
        ``input[1].content[1]``), so an error the ensemble raises names what the client sent."""
        if path is None or not path.startswith("messages["):
            return path
        index, _, rest = path.removeprefix("messages[").partition("]")
        origins = translated(self.body.instructions, history, self.input)[1]
        if not index.isdigit() or int(index) >= len(origins):
            return path
        origin = origins[int(index)]
        return origin + rest if origin.startswith("input[") else origin

    def chat(self, history: list[Item]) -> ParsedChat:
        """The one request the ensemble runs, continuing ``history`` (the items of the previous response)."""
        req = self.body
        messages = build_messages(to_messages(req.instructions, history, self.input))
        params = SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=req.max_output_tokens,
            response_format=self.response_format,
            tools=self.tools,
        )
        request = ChatRequest(messages, params, **extensions(req))
        return ParsedChat(req.model, request, 1, req.stream, True, req.moa_trace, self.include_progress, self.ignored)


#: every name the body may use for a field
_KNOWN = frozenset(f.alias or name for name, f in ResponsesRequest.model_fields.items())


def parse_responses_request(body: Any, *, lenient: bool = False) -> ParsedResponses:
    """Validate a decoded JSON body; every problem is a ``ConfigError`` naming the field. ``lenient``
    (``moa serve --lenient``): a field moa cannot honour (``reasoning``, ``background``, ...) or does not know is
    dropped and listed in ``ignored`` instead of refused, as on chat completions."""
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object", None)
    ignored: tuple[str, ...] = ()
    if lenient:
        ignored = tuple(k for k, v in body.items() if k not in _KNOWN and not asks_nothing(k, v, _NEUTRAL))
        body = {k: v for k, v in body.items() if k in _KNOWN}
    try:
        req = ResponsesRequest.model_validate(without_neutral(body, _NEUTRAL))
    except ValidationError as e:
        raise config_error(e) from None
    if req.stream_options is not None and not req.stream:
        raise ConfigError("only allowed when stream is true", "stream_options")
    _check_metadata(req.metadata)
    spec = tool_spec(req.tools, req.tool_choice, req.parallel_tool_calls)
    return ParsedResponses(req, input_items(req.input), chat_format(req.text), spec, ignored)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA:
        raise ConfigError(f"at most {MAX_METADATA} pairs are accepted", "metadata")
    for key, value in metadata.items():
        if len(key) > MAX_KEY:
            raise ConfigError(f"keys are at most {MAX_KEY} characters", f"metadata.{key[:MAX_KEY]}")
        if len(value) > MAX_VALUE:
            raise ConfigError(f"values are at most {MAX_VALUE} characters", f"metadata.{key}")
