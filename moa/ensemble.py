"""The public SDK: ``Ensemble.from_config(...)``, then ``acomplete``, ``complete`` or ``astream``.

A request's state (its deadline, budget, trace, progress sink: ``moa.context.RequestContext``) is made here, once
per run (``context``), and handed down to the engine; ``moa serve`` makes its own with ``context`` to share one
budget between a request's choices and to read every call of a run that failed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import replace
from functools import partial
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from defenses.deceptive import deceptive_messages
from moa import registry, structured
from moa.backend import Backend
from moa.budget import RequestBudget
from moa.config import EnsembleConfig, config_error, load_config
from moa.content import read_content, unread_part
from moa.context import RequestContext
from moa.engine import Agent, Deception, Layer, LayeredEngine
from moa.errors import ConfigError, InvalidStructuredOutputError, MoaError, UnsupportedFieldError
from moa.interfaces import Aggregator, Defense
from moa.logprobs import requested
from moa.progress import ProgressEvent, ProgressSink, with_progress
from moa.response_format import of_model
from moa.sampling import RequestExtensions, SamplingFields, extensions, sampling_params, set_fields
from moa.tool_requests import spec_of
from moa.tools import Tool, ToolCall, ToolChoice
from moa.types import ChatRequest, Completion, Delta, Message
from moa.validation import PathError


class _FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    arguments: str


class _ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: _FunctionCallIn


class _MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(pattern="^(system|developer|user|assistant|tool)$")
    content: str | list[Any] | None = None  # a list of content parts (``moa.content``); None only on tool calls
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _tool_fields(self) -> _MessageIn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only an assistant message makes tool calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("tool_call_id: a tool message names the call it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise PathError("content", "field required (null only on an assistant message with tool_calls)")
        return self

    def to_message(self, at: str) -> Message:
        """The turn as moa reads it; ``at`` is its path (``messages[1]``), for errors in its content parts."""
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        text, parts = read_content(self.content or "", f"{at}.content")
        return Message(self.role, text, calls, self.tool_call_id, self.name, parts)  # type: ignore[arg-type]


class _Overrides(SamplingFields, RequestExtensions):
    """What a caller may override per request: the final answer's sampling (``moa.types.SamplingFields``) and moa's
    extensions (``moa.sampling.RequestExtensions``)."""

    model_config = ConfigDict(extra="forbid")
    deception_target: str | None = Field(default=None, min_length=1, description="red-teaming: the option to argue for")
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    #: the final answer's log-probabilities (``result.choices[0].logprobs``), ``top_logprobs`` alternatives a token
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


def build_messages(messages: Sequence[Message | dict[str, Any]]) -> list[Message]:
    """Validate a caller's conversation; errors name the field (``messages[1].role: ...``)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ConfigError("must be a non-empty list of {role, content} messages", "messages")
    parsed: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            parsed.append(m)
            continue
        try:
            mi = _MessageIn.model_validate(m)
        except ValidationError as e:
            raise config_error(e, f"messages[{i}]") from None
        message = mi.to_message(f"messages[{i}]")
        made = {c.id for m in parsed for c in m.tool_calls}
        if message.tool_call_id is not None and message.tool_call_id not in made:
            raise ConfigError("names no call of an earlier assistant message", f"messages[{i}].tool_call_id")
        parsed.append(message)
    if parsed[-1].role not in ("user", "tool"):
        raise ConfigError(
            "the last message must come from the user (or be a tool's result)", f"messages[{len(parsed) - 1}].role"
        )
    return parsed


def build_request(messages: Sequence[Message | dict[str, Any]], overrides: dict[str, Any]) -> ChatRequest:
    """Validate a caller's messages and overrides; errors name the field (``messages[1].role: ...``). A pydantic
    model class as ``response_format`` is its strict ``json_schema`` format (``moa.response_format.of_model``)."""
    parsed = build_messages(messages)
    fmt = overrides.get("response_format")
    if isinstance(fmt, type) and issubclass(fmt, BaseModel):
        overrides = {**overrides, "response_format": of_model(fmt)}
    try:
        o = _Overrides.model_validate(overrides)
    except ValidationError as e:
        raise config_error(e) from None
    spec = spec_of(o.tools, o.tool_choice, o.parallel_tool_calls)
    params = sampling_params(o, tools=spec).merged(logprobs=requested(o.logprobs, o.top_logprobs))
    return ChatRequest(parsed, params, deception_target=o.deception_target, **extensions(o))


def refuse_unsupported(config: EnsembleConfig, request: ChatRequest) -> None:
    """Refuse a sampling field a request sets that a backend it reaches cannot honour (``UnsupportedFieldError``,
    naming both): every field reaches the aggregator's backend; the seed also every agent's that sets none, and the
    response format every agent's with ``structured: {proposers: true}``; tools every backend the request reaches
    (``tools_refusal``); logprobs the aggregator's (``logprobs_refusal``)."""
    seeded = sorted({a.backend for layer in config.layers for a in layer.agents if a.seed is None})
    structured = sorted({a.backend for layer in config.layers for a in layer.agents if config.structured.proposers})
    also = {"seed": seeded, "response_format": structured}
    if request.tools is not None:  # every agent and the aggregator are offered the tools
        reached = sorted({config.aggregator.backend, *(a.backend for layer in config.layers for a in layer.agents)})
        for name in reached:
            reason = config.backends[name].tools_refusal(request.tools)
            if reason is not None:
                raise UnsupportedFieldError(f"backend {name!r}: {reason}", "tools", field="tools", backend=name)
    if request.params.logprobs is not None:  # the final answer's: the aggregator's call
        name = config.aggregator.backend
        reason = config.backends[name].logprobs_refusal()
        if reason is not None:
            raise UnsupportedFieldError(f"backend {name!r}: {reason}", "logprobs", field="logprobs", backend=name)
    for field in set_fields(request.params):
        for name in [config.aggregator.backend, *also.get(field, [])]:
            reason = config.backends[name].field_support().refusal(field, name)
            if reason is not None:
                raise UnsupportedFieldError(reason, field, field=field, backend=name)


def without_unsupported(config: EnsembleConfig, request: ChatRequest) -> tuple[ChatRequest, list[str]]:
    """``request`` less every field ``refuse_unsupported`` would refuse, and their names (``moa serve --lenient``:
    accepted and ignored, as vLLM's server does, and named in a response header)."""
    dropped: list[str] = []
    while True:
        try:
            refuse_unsupported(config, request)
        except UnsupportedFieldError as e:
            if e.field in dropped:  # not a field setting None removes: refuse it after all
                raise
            dropped.append(e.field)
            request = replace(request, params=request.params.model_copy(update={e.field: None}))
        else:
            return request, dropped


def refuse_unread_parts(config: EnsembleConfig, request: ChatRequest) -> None:
    """Refuse a conversation holding a content part that no proposer of some layer reads (each would see a marker,
    or refuses it): a ``ConfigError`` naming the part and the layer's backends, never a silent strip."""
    for li, layer in enumerate(config.layers, 1):
        backends = sorted({a.backend for a in layer.agents})
        path = unread_part(request.messages, [config.backends[b].reads for b in backends])
        if path is not None:
            names = ", ".join(repr(b) for b in backends)
            which = f"backend {names} does" if len(backends) == 1 else f"backends {names} do"
            raise ConfigError(
                f"no proposer of layer {li} reads this content part: {which} not take it (input:; an openai "
                f"backend without input: forwards every part)",
                path,
            )


def _name(fmt: Any) -> str:
    return fmt.__name__ if isinstance(fmt, type) else "JSON"


def _build_engine(config: EnsembleConfig) -> LayeredEngine:
    """The engine for ``config``, handed what it must not import: the deceptive prompt builder, and a defense
    with its embedder."""
    backends: dict[str, Backend] = {}
    for name, bc in config.backends.items():
        backends[name] = Backend.from_config(name, bc)
    layers = []
    at = config.references.at
    deceptive = config.deceptive_agents()
    for li, lc in enumerate(config.layers, 1):
        agents = []
        for ai, ac in enumerate(lc.agents, 1):
            model = config.model_for(ac.backend, ac.model)
            name = config.agent_name(li - 1, ai - 1)
            dc = deceptive.get((li, ai))
            deception = None if dc is None else Deception(dc, partial(deceptive_messages, references_at=at))
            agents.append(
                Agent.from_config(ac, name, backends[ac.backend], model, deception=deception, references_at=at)
            )
        layers.append(Layer(li, agents, lc.min_proposals or config.min_proposals, config.wait_for(li - 1)))
    aggregator: Aggregator = registry.resolve("aggregator", config.aggregator.type)(config.aggregator, at)
    defense: Defense | None = None
    if config.defense is not None:
        from defenses.embeddings import make_embedder  # numpy: only configs with a defense load it

        embedder = make_embedder(config.defense.embeddings, Backend.for_embeddings)
        defense = registry.resolve("defense", config.defense.type)(config.defense, embedder)
    return LayeredEngine(config, backends, layers, aggregator=aggregator, defense=defense)


class Ensemble:
    """An ensemble built once from a config; safe to share across many concurrent requests.

    Use it from one event loop: the async methods from yours, or the sync ``complete`` from plain code
    (it keeps a private loop). ``async with`` (or ``aclose``) releases HTTP sessions and local engines.
    """

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config
        self._engine = _build_engine(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, source: str | os.PathLike[str] | dict[str, Any] | EnsembleConfig) -> Ensemble:
        """From a YAML/JSON path, a mapping, a validated config, or a shipped recipe's name."""
        return cls(load_config(source))

    @property
    def backends(self) -> Mapping[str, Backend]:
        """The ensemble's backends by name (their limits, for ``/health``, ``/ready`` and ``/metrics``)."""
        return self._engine.backends

    @property
    def name(self) -> str:
        return self.config.name

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise MoaError("this Ensemble is bound to another event loop; make one Ensemble per loop")

    async def acomplete(self, messages: Sequence[Message | dict[str, Any]], **overrides: Any) -> Completion:
        """Run the ensemble on a conversation; ``overrides`` set the final answer's sampling and deadline.

        With ``response_format`` (a pydantic model class, or OpenAI's ``json_object`` / ``json_schema`` dict) the
        answer is checked against it (one repair call, then ``InvalidStructuredOutputError``) and ``result.parsed``
        is the model's instance, or the decoded JSON, as openai's ``parse()`` returns it."""
        request = build_request(messages, overrides)
        result = await self.arun(request)
        fmt = overrides.get("response_format")
        if result.tool_calls and not result.text.strip():  # a turn of tool calls: nothing to parse yet
            return result
        try:
            if isinstance(fmt, type) and issubclass(fmt, BaseModel):
                result.parsed = fmt.model_validate_json(result.text)
            else:
                result.parsed = structured.parsed(request, result.text)
        except (ValueError, ValidationError) as e:
            raise InvalidStructuredOutputError(f"the answer does not parse as {_name(fmt)}: {e}") from None
        return result

    def budget_for(self, request: ChatRequest) -> RequestBudget | None:
        """The spending limit of ``request`` (``max_cost_usd``, its own or the config's); ``None`` without one.
        Raises ``ConfigError`` where the ensemble cannot keep a budget (prices or ``max_tokens`` missing)."""
        return self._engine.budget_for(request)

    def context(
        self,
        request: ChatRequest,
        *,
        request_id: str = "-",
        progress: ProgressSink | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> RequestContext:
        """A run's state for ``request``, its deadline running from now (the shorter of the request's own and the
        config's) and its budget (``budget_for``); ``choice()`` of it gives the sibling runs of one request
        (``n > 1``) one budget. ``progress``: where its calls' progress events go. With tracing on (``moa[otel]``,
        configured), its span's parent: ``trace_context``'s W3C ``traceparent`` (an incoming request's headers),
        else the caller's current span. Call it from the event loop."""
        return self._engine.context_for(request, request_id=request_id, progress=progress, trace_context=trace_context)

    async def arun(self, request: ChatRequest, context: RequestContext | None = None) -> Completion:
        """Run the ensemble on a request already validated (``build_request``'s, or ``moa serve``'s) under
        ``context`` (``context``'s; by default a fresh one)."""
        self._bind_loop()
        refuse_unsupported(self.config, request)
        refuse_unread_parts(self.config, request)
        return await self._engine.complete(request, context or self.context(request))

    @overload
    def astream(
        self, messages: Sequence[Message | dict[str, Any]], *, progress: Literal[False] = False, **overrides: Any
    ) -> AsyncGenerator[Delta, None]: ...

    @overload
    def astream(
        self, messages: Sequence[Message | dict[str, Any]], *, progress: bool, **overrides: Any
    ) -> AsyncGenerator[Delta | ProgressEvent, None]: ...

    def astream(
        self, messages: Sequence[Message | dict[str, Any]], *, progress: bool = False, **overrides: Any
    ) -> AsyncGenerator[Delta, None] | AsyncGenerator[Delta | ProgressEvent, None]:
        """The aggregator's tokens as they arrive; bad input raises here, before anything is sent.

        With ``progress=True`` the stream also yields a ``moa.progress.ProgressEvent`` as each model call starts,
        sends its first token and ends, and as each layer is done, before the answer's tokens.
        Closing the stream early (``aclose()``, or ``contextlib.aclosing`` around the loop) cancels every
        call under it and closes their connections before ``aclose`` returns.
        """
        return self.astream_request(build_request(messages, overrides), progress=progress)

    @overload
    def astream_request(
        self, request: ChatRequest, *, progress: Literal[False] = False, context: RequestContext | None = None
    ) -> AsyncGenerator[Delta, None]: ...

    @overload
    def astream_request(
        self,
        request: ChatRequest,
        *,
        progress: bool,
        context: RequestContext | None = None,
        proposals: bool = False,
    ) -> AsyncGenerator[Delta | ProgressEvent, None]: ...

    def astream_request(
        self,
        request: ChatRequest,
        *,
        progress: bool = False,
        context: RequestContext | None = None,
        proposals: bool = False,
    ) -> AsyncGenerator[Delta, None] | AsyncGenerator[Delta | ProgressEvent, None]:
        """``astream`` of a request already validated (``build_request``'s, or ``moa serve``'s) under ``context``
        as ``arun`` takes it (by default a fresh one, made when the stream starts); with ``progress`` the events go
        to a sink of the stream's own (set on ``context``), and with ``proposals`` as well a ``proposal`` event for
        each proposal as it arrives (the panel)."""
        refuse_unsupported(self.config, request)
        refuse_unread_parts(self.config, request)
        if progress:
            return with_progress(lambda sink: self._stream(request, context, sink), proposals=proposals)
        return self._stream(request, context)

    async def _stream(
        self, request: ChatRequest, context: RequestContext | None, sink: ProgressSink | None = None
    ) -> AsyncGenerator[Delta, None]:
        self._bind_loop()
        ctx = context or self.context(request)
        if sink is not None:
            ctx.progress = sink
        async with aclosing(self._engine.stream(request, ctx)) as deltas:
            async for delta in deltas:
                yield delta

    def complete(self, messages: Sequence[Message | dict[str, Any]], **overrides: Any) -> Completion:
        """``acomplete`` for synchronous callers (not from inside a running event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise MoaError("complete() was called inside a running event loop; use `await acomplete(...)`")
        if self._sync_loop is None:
            self._sync_loop = asyncio.new_event_loop()
        return self._sync_loop.run_until_complete(self.acomplete(messages, **overrides))

    async def astart(self) -> None:
        """Start every backend with a slow start (local engines) now, at once, instead of on first use."""
        self._bind_loop()
        await asyncio.gather(*(b.start() for b in self._engine.backends.values()))

    async def aclose(self) -> None:
        for backend in self._engine.backends.values():
            await backend.aclose()

    def close(self) -> None:
        """Release resources from synchronous code (after ``complete``)."""
        if self._sync_loop is not None:
            self._sync_loop.run_until_complete(self.aclose())
            self._sync_loop.close()
            self._sync_loop = None

    async def __aenter__(self) -> Ensemble:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Ensemble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
