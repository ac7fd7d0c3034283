"""The ``/v1/chat/completions`` request: which OpenAI fields moa honours, ignores or refuses.

Honoured: ``model`` (an ensemble's name), ``messages``, ``stream``, ``stream_options.include_usage``, ``n``, and
every sampling field (``moa.types.SamplingFields``: ``temperature``, ``max_tokens`` or ``max_completion_tokens``,
``stop``, ``response_format``, ...); they set the final answer's sampling (the proposers keep their configured sampling). A sampling
field that a backend the request reaches cannot honour is refused when the ensemble runs it
(``UnsupportedFieldError``, a 400 naming the field and the backend). Extensions: ``moa_trace`` (return the
calls behind the answer), ``moa_<name>`` for each of ``moa.sampling.RequestExtensions`` (``moa_deadline_s``,
``moa_max_cost_usd``) and ``stream_options.include_progress`` (stream a ``moa.progress`` chunk as each model call
starts and ends).

Ignored, because they cannot change the answer: ``user``, ``metadata``, ``store``, ``service_tier``,
``safety_identifier``, ``prompt_cache_key``.

Tools (``moa.tools``): ``tools``, ``tool_choice``, ``parallel_tool_calls`` and the legacy ``functions`` /
``function_call`` (read as tools) reach every proposer and the aggregator. The conversation may hold assistant
``tool_calls`` (or a legacy ``function_call``) and ``tool`` (or legacy ``function``) results; ``name`` is kept on
every message.

``max_tokens`` (or ``max_completion_tokens``) above ``MAX_TOKENS`` (2**20 = 1,048,576 tokens, far more than
any model writes in one answer) is refused: the server does not know each upstream model's context, and a
larger value would only reach the upstream servers as an absurd number.

Refused unless left at their neutral value (``_NEUTRAL``): OpenAI's fields that are not sampling fields moa
declares (logprobs, audio and the like), which an ensemble cannot honour. Any other field
is refused as unknown. Every refusal is a ``ConfigError`` whose path names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moa.config import config_error
from moa.ensemble import build_messages
from moa.errors import ConfigError
from moa.logprobs import requested
from moa.sampling import MAX_TOKENS as MAX_TOKENS  # the ceiling of max_tokens, re-exported
from moa.sampling import (
    MaxTokens,
    RequestExtensions,
    SamplingFields,
    extensions,
    sampling_params,
    server_alias,
)
from moa.tool_requests import spec_of
from moa.tools import FunctionDefinition, NamedFunction, Tool, ToolChoice
from moa.types import ChatRequest

#: ``n`` above this is refused: each choice is a whole ensemble run
MAX_N = 16
#: ``stop`` with more sequences than this is refused
MAX_STOP = 16

#: OpenAI fields with the values that ask for nothing (``None`` always does): refused otherwise, unless moa declares
#: the field (``SamplingFields``)
_OPENAI_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
}
#: the OpenAI fields moa cannot honour
_NEUTRAL = {name: values for name, values in _OPENAI_NEUTRAL.items() if name not in SamplingFields.model_fields}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    include_progress: bool = False  # moa's extension: ``moa.progress`` chunks before the answer's tokens


class ChatCompletionRequest(SamplingFields, RequestExtensions):
    """The body as sent: the sampling fields, moa's extensions as ``moa_<name>``, and OpenAI's other fields;
    messages are checked by ``moa.ensemble.build_messages``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, alias_generator=server_alias)

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    max_completion_tokens: MaxTokens | None = None  # OpenAI's newer name of max_tokens
    moa_trace: bool = False
    # the final answer's log-probabilities (the aggregator's call), with top_logprobs alternatives a position
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    moa_include_proposals: bool = False  # the panel (moa.server.panel): each proposal with its call's figures
    # accepted and ignored: they do not change the answer
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # tools (moa.tools): every proposer and the aggregator get them
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None  # legacy: read as tools
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # legacy: read as tool_choice
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if stop is not None and len(stop) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are accepted, got {len(stop)}")
        return stop


@dataclass(frozen=True, slots=True)
class ParsedChat:
    """A request the server can run: which ensemble, the validated request, and how to answer."""

    model: str
    request: ChatRequest
    n: int
    stream: bool
    include_usage: bool
    trace: bool
    include_progress: bool = False
    #: ``--lenient``: the fields accepted but ignored, which the response names (``x-moa-ignored-fields``)
    ignored: tuple[str, ...] = ()
    #: ``moa_include_proposals``: the panel, as ``moa.proposals`` (whole) or ``moa.proposal`` chunks (streamed)
    include_proposals: bool = False


#: every name the body may use for a field (``moa_deadline_s``, ``max_completion_tokens``, ...)
_KNOWN = frozenset(f.alias or name for name, f in ChatCompletionRequest.model_fields.items())


def parse_chat_request(body: Any, *, lenient: bool = False) -> ParsedChat:
    """Validate a decoded JSON body; every problem is a ``ConfigError`` naming the field. ``lenient``
    (``moa serve --lenient``): a field moa cannot honour, or does not know, is dropped and listed in ``ignored``
    instead of refused."""
    if not isinstance(body, dict):
        raise ConfigError(f"the request body must be a JSON object, got {_json_type(body)}")
    ignored: list[str] = []
    if lenient:
        ignored = [k for k, v in body.items() if k not in _KNOWN and not asks_nothing(k, v)]
        body = {k: v for k, v in body.items() if k in _KNOWN}
    try:
        req = ChatCompletionRequest.model_validate(without_neutral(body))
    except ValidationError as e:
        raise config_error(e) from None
    if req.stream_options is not None and not req.stream:
        raise ConfigError("only allowed when stream is true", "stream_options")
    logprobs = requested(req.logprobs, req.top_logprobs)
    max_tokens = _max_tokens(req)
    messages = build_messages([_normalize_message(m, i) for i, m in enumerate(_legacy_calls(req.messages))])
    tools = spec_of(req.tools, req.tool_choice, req.parallel_tool_calls, req.functions, req.function_call)
    params = sampling_params(req, max_tokens=max_tokens, tools=tools).merged(logprobs=logprobs)
    request = ChatRequest(messages, params, **extensions(req))
    options = req.stream_options or StreamOptions()
    return ParsedChat(
        req.model,
        request,
        req.n,
        req.stream,
        options.include_usage,
        req.moa_trace,
        options.include_progress,
        tuple(ignored),
        req.moa_include_proposals,
    )


def asks_nothing(name: str, value: Any, table: Mapping[str, tuple[Any, ...]] | None = None) -> bool:
    """A field moa cannot honour (in ``table``, by default chat completions' ``_NEUTRAL``), left at a value that
    asks for nothing (not worth naming as ignored)."""
    table = _NEUTRAL if table is None else table
    return value is None or (name in table and value in table[name])


def without_neutral(body: dict[str, Any], table: Mapping[str, tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """The body less the fields moa cannot honour (``table``, as ``asks_nothing``), which must ask for nothing."""
    table = _NEUTRAL if table is None else table
    for name, neutral in table.items():
        value = body.get(name)
        if value is not None and value not in neutral:
            allowed = " or ".join(repr(v) for v in neutral)
            hint = f" (only {allowed} is accepted)" if allowed else ""
            raise ConfigError(f"not supported by moa ensembles{hint}", name)
    return {k: v for k, v in body.items() if k not in table}


def _max_tokens(req: ChatCompletionRequest) -> int | None:
    a, b = req.max_tokens, req.max_completion_tokens
    if a is not None and b is not None and a != b:
        raise ConfigError("conflicts with max_tokens; send one of them", "max_completion_tokens")
    return b if b is not None else a


def _legacy_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The legacy function-calling turns as tool turns: an assistant's ``function_call`` is a tool call with the id
    ``call_<index>``, and the ``function`` message after it that call's ``tool`` result (by that id)."""
    out = []
    last_id: str | None = None
    for i, message in enumerate(messages):
        call = message.get("function_call")
        if message.get("role") == "assistant" and call is not None:
            if not isinstance(call, dict):
                raise ConfigError("must be an object {name, arguments}", f"messages[{i}].function_call")
            last_id = f"call_{i}"
            rest = {k: v for k, v in message.items() if k != "function_call"}
            message = {**rest, "tool_calls": [{"id": last_id, "type": "function", "function": call}]}
        elif message.get("role") == "function":
            if last_id is None:
                raise ConfigError("a function result must follow the assistant's function_call", f"messages[{i}]")
            message = {**message, "role": "tool", "tool_call_id": last_id}
        out.append(message)
    return out


def _normalize_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """A message in the shape ``build_messages`` checks (its content parts, ``developer`` role and all)."""
    return message


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
