"""The vocabulary every layer of moa shares.

Names follow the OpenAI chat API and vLLM: a ``Message`` is one chat turn, ``SamplingParams`` are the knobs
of one model call, a ``Generation`` is one sampled output of that call and a ``Delta`` one streamed piece.
A ``Proposal`` is a generation attributed to the agent that made it; a ``CallRecord`` is one model call in
the trace; a ``Completion`` is what a request returns, in the ``chat.completion`` shape.

Internal values are frozen dataclasses (cheap, hashable); what crosses a boundary as JSON is pydantic, and so are
``SamplingParams``: the sampling fields are declared once, in ``SamplingFields``, with their bounds, and every schema
that takes them inherits them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from moa.response_format import ResponseFormat
from moa.tools import ToolCall, ToolCallDelta, ToolSpec

#: ``tool``: a tool's result (``tool_call_id`` names the call it answers); ``developer``: OpenAI's newer name of the
#: system role, kept for upstreams that take it and sent as ``system`` to the others
#: (``proposers.chat_template.developer_as_system``)
Role = Literal["system", "developer", "user", "assistant", "tool"]
TopLogprobs = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    #: the text (a message sent as content parts: its text parts joined by newlines)
    content: str
    #: an assistant turn's calls (``moa.tools``); its content may then be empty
    tool_calls: tuple[ToolCall, ...] = ()
    #: a ``tool`` turn: the id of the call whose result it is
    tool_call_id: str | None = None
    #: the participant's name, as OpenAI's API takes it; sent to every upstream
    name: str | None = None
    #: the content parts as sent (OpenAI's ``text``, ``image_url``, ``input_audio``), kept when any is not text
    #: (``moa.content``); ``None``: the content is the text alone
    parts: tuple[dict[str, Any], ...] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The turn on OpenAI's wire: an assistant turn that only calls tools has ``content: null``; a turn sent as
        content parts has them as its content."""
        content: Any = self.content if self.parts is None else [dict(p) for p in self.parts]
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
            out["content"] = content or None
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


#: seeds are int64 on the wire (OpenAI's API, vLLM)
INT64 = 2**63
#: ``max_tokens`` above this is refused (2**20 tokens): far more than any model writes in one answer, and moa does not
#: know every upstream model's context
MAX_TOKENS = 2**20


def _one_stop(value: Any) -> Any:
    """One stop sequence is a list of one; a list is read as the tuple it becomes."""
    return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
MaxTokens = Annotated[int, Field(gt=0, le=MAX_TOKENS)]
#: one stop sequence or a list of them; a string is a list of one
Stop = Annotated[tuple[str, ...], BeforeValidator(_one_stop)]
#: a seed as OpenAI's API and vLLM take it
Seed = Annotated[int, Field(ge=-INT64, lt=INT64)]
#: OpenAI's frequency and presence penalties
Penalty = Annotated[float, Field(ge=-2, le=2)]
#: a token id as ``logit_bias`` keys it (a string of digits), and the bias
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


@dataclass(frozen=True, slots=True)
class Wire:
    """Which APIs take a sampling field, under the field's own name: ``openai``, OpenAI's chat completions (every
    OpenAI-compatible server); ``vllm``, vLLM's ``SamplingParams`` (in-process vLLM, and a vLLM server, which takes
    its extensions in the request body beside OpenAI's fields). A backend honours the fields of the APIs it speaks
    (``moa.sampling.FieldSupport``) and refuses any other that is set."""

    openai: bool = False
    vllm: bool = False


OPENAI_AND_VLLM = Wire(openai=True, vllm=True)


class SamplingFields(BaseModel):
    """The sampling fields of one call, each declared once: its type, its bounds and the APIs that take it.

    The config's agents and aggregator, the SDK's overrides and the server's request inherit these fields;
    ``SamplingParams`` carries them to the backends, each of which sends the ones it honours in its own wire format
    and refuses the others by name (``moa.sampling``). ``None`` leaves the backend's default in force. Adding a
    field here is all it takes (CONTRIBUTING.md, "Adding a request field").
    """

    temperature: Annotated[Temperature | None, OPENAI_AND_VLLM] = None
    top_p: Annotated[TopP | None, OPENAI_AND_VLLM] = None
    max_tokens: Annotated[MaxTokens | None, OPENAI_AND_VLLM] = None
    stop: Annotated[Stop | None, OPENAI_AND_VLLM] = None
    seed: Annotated[Seed | None, OPENAI_AND_VLLM] = None
    frequency_penalty: Annotated[Penalty | None, OPENAI_AND_VLLM] = None
    presence_penalty: Annotated[Penalty | None, OPENAI_AND_VLLM] = None
    #: vLLM's: > 1 makes tokens already in the prompt or the answer less likely, < 1 more
    repetition_penalty: Annotated[Annotated[float, Field(gt=0)] | None, Wire(vllm=True)] = None
    #: vLLM's: sample from the k most likely tokens only (-1 or 0: all)
    top_k: Annotated[Annotated[int, Field(ge=-1)] | None, Wire(vllm=True)] = None
    #: vLLM's: drop tokens less likely than min_p times the most likely one
    min_p: Annotated[Annotated[float, Field(ge=0, le=1)] | None, Wire(vllm=True)] = None
    #: OpenAI's: token id (as a string) -> bias added to its logit, -100 to 100
    logit_bias: Annotated[dict[TokenId, Bias] | None, OPENAI_AND_VLLM] = None
    #: OpenAI's: how much a reasoning model thinks before it answers
    reasoning_effort: Annotated[ReasoningEffort | None, Wire(openai=True)] = None
    #: OpenAI's: JSON (``json_object``) or JSON matching a schema (``json_schema``) for the answer; the final answer is
    #: checked against it (``moa.structured``), in-process vLLM enforces it with its structured outputs
    response_format: Annotated[ResponseFormat | None, OPENAI_AND_VLLM] = None


class SamplingParams(SamplingFields):
    """Per-call sampling: the declared fields, plus what moa itself may ask of a call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: return the sampled tokens' log-probabilities and this many most likely tokens per position (0: none but the
    #: sampled); asked by moa (the AlpacaEval judge) and by a request's ``logprobs`` / ``top_logprobs`` (the final
    #: answer's), answered where the backend can (``Generation.sampled`` and ``.logprobs``, else ``None``)
    logprobs: int | None = None
    #: the request's tools (``moa.tools.ToolSpec``), set on every call of a request that offers them: a backend
    #: sends them in its wire format or refuses them by name
    tools: ToolSpec | None = None

    def merged(self, **overrides: Any) -> SamplingParams:
        """A copy with every override that is not ``None`` applied; a name that is not a field is a ``TypeError``."""
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"SamplingParams.merged() got unknown fields: {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return self if not given else type(self).model_validate({**self.model_dump(), **given})


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    finish_reason: str | None = None
    #: when ``SamplingParams.logprobs`` asked and the backend answers: per generated position, the most likely
    #: tokens there as (token, logprob), most likely first
    logprobs: tuple[TopLogprobs, ...] | None = None
    #: the calls the answer makes (``finish_reason`` then ``tool_calls``); its text may be empty
    tool_calls: tuple[ToolCall, ...] = ()
    #: when ``SamplingParams.logprobs`` asked and the backend answers: per generated position, the token sampled
    #: there and its logprob (``logprobs`` holds the alternatives)
    sampled: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """What a proposer returns for one call: ``n`` generations and the usage of the whole call."""

    generations: list[Generation]
    usage: Usage
    template: str | None = None  # how the backend fitted the prompt to its chat template, when it changed it
    seed: int | None = None  # the seed a local engine sampled with (drawn when the call set none)


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed piece of the final answer.

    The last delta of a stream has ``finish_reason`` set; when it comes from the engine it also carries the
    request's summed ``usage``, its ``trace`` and what its defense did.
    """

    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    #: pieces of the answer's tool calls (``moa.tools.ToolCallDelta``), as OpenAI streams them
    tool_calls: tuple[ToolCallDelta, ...] = ()
    trace: list[CallRecord] | None = None
    defense: list[DefenseRecord] | None = None
    template: str | None = None  # on a proposer's last delta: how it fitted the prompt to its chat template
    seed: int | None = None  # on a local proposer's last delta: the seed it sampled with
    #: when ``SamplingParams.logprobs`` asked and the backend answers: the positions this piece's text begins, as
    #: ``Generation.sampled`` and ``Generation.logprobs`` hold them for a whole answer
    sampled: tuple[tuple[str, float], ...] = ()
    logprobs: tuple[TopLogprobs, ...] = ()


@dataclass(frozen=True, slots=True)
class Proposal:
    """One answer of one agent, as later layers and the aggregator see it."""

    layer: int
    agent: str
    text: str  # with tool calls: their text form (``moa.tools.with_call_text``), which references and defenses read
    deceptive: bool = False  # red-team ground truth, for the record only: defenses never read it
    tool_calls: tuple[ToolCall, ...] = ()  # the calls it makes, as made (``decide: vote`` counts them)

    def with_text(self, text: str) -> Proposal:
        return replace(self, text=text)


@dataclass(slots=True)
class ChatRequest:
    """One request to an ensemble: the conversation plus overrides for the final answer's sampling."""

    messages: list[Message]
    params: SamplingParams = field(default_factory=SamplingParams)
    deadline_s: float | None = None
    deception_target: str | None = None  # red-teaming: the option deceptive agents argue for (multiple choice)
    max_cost_usd: float | None = None  # may lower the config's budget, never raise it

    @property
    def tools(self) -> ToolSpec | None:
        """The tools the request offers: carried on its params, so the aggregator's call gets them as it gets
        every field of the request's sampling (the engine also hands them to every proposer)."""
        return self.params.tools


# ---- JSON at the edges ---------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptTokensDetails(_Model):
    cached_tokens: int = Field(default=0, description="prompt tokens the backend found in its prefix cache")


class Usage(_Model):
    """Tokens (and dollars) of one call or one request, in the ``chat.completion`` usage shape."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    cost: float | None = Field(default=None, description="USD, as OpenRouter reports it; None when not priced")

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int | None = None) -> Usage:
        details = None if cached_prompt_tokens is None else PromptTokensDetails(cached_tokens=cached_prompt_tokens)
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=details,
        )

    @property
    def cached_prompt_tokens(self) -> int:
        return 0 if self.prompt_tokens_details is None else self.prompt_tokens_details.cached_tokens

    @classmethod
    def total(cls, records: list[CallRecord]) -> Usage:
        """The sum over a request's records; ``cost`` only when every call made has a price."""
        made = [r for r in records if r.outcome != "skipped"]
        usage = cls.of(
            sum(r.prompt_tokens for r in made),
            sum(r.completion_tokens for r in made),
            sum(r.cached_prompt_tokens for r in made),
        )
        costs = [r.cost_usd for r in made]
        if costs and all(c is not None for c in costs):
            usage.cost = sum(c for c in costs if c is not None)
        return usage


Outcome = Literal["ok", "error", "cancelled", "skipped"]


class CallRecord(_Model):
    """One model call behind a request (one row of the trace)."""

    layer: int = Field(description="1-based proposer layer; the final aggregator is layers + 1")
    role: Literal["proposer", "aggregator", "defense"]
    agent: str
    backend: str
    model: str
    n: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = Field(default=0, description="prompt tokens served from the backend's prefix cache")
    cost_usd: float | None = Field(default=None, description="what the call cost, when its backend has prices")
    latency_s: float = 0.0
    retries: int = 0
    outcome: Outcome = Field(default="ok", description="skipped: not made (see reason)")
    reason: str | None = Field(
        default=None, description="why a call was cancelled or skipped: straggler, hedge lost, budget"
    )
    error: str | None = None
    step: str | None = Field(default=None, description="what the call was for, when an aggregator makes several")
    generations: int | None = Field(default=None, description="how many generations came, when fewer than n")
    hedge: bool = Field(default=False, description="a hedged call: the second, identical call of a slow one")
    template: str | None = Field(
        default=None,
        description="how the prompt was fitted to the backend's chat template (system folded, turns merged), when "
        "it was; a rule learned from the upstream's refusal says so",
    )
    seed: int | None = Field(
        default=None,
        description="the seed a local engine sampled with, drawn when the call set none: send it as seed to repeat "
        "the call",
    )


class ProposalRecord(_Model):
    layer: int
    agent: str
    text: str
    deceptive: bool = Field(default=False, description="made by an agent the config marked deceptive (red-teaming)")
    dropped: bool = Field(default=False, description="never arrived: the layer went on without it (text empty)")
    reason: str | None = Field(default=None, description="why it was dropped (straggler)")
    tool_calls: list[dict[str, Any]] = Field(
        default_factory=list, description="the calls it made, in OpenAI's tool_calls shape (its text writes them out)"
    )


class CandidateRecord(_Model):
    """One aggregation of a subset of the proposals, made by a dropout defense."""

    subset: list[str] = Field(description="the agents whose proposals it read")
    text: str | None = Field(default=None, description="the candidate answer; None when the call failed")
    option: str | None = Field(default=None, description="the option it names, for a multiple-choice vote")
    cluster: int | None = None
    error: str | None = None


class DefenseRecord(_Model):
    """What a defense did with one layer's proposals: what went on, what it dropped or chose, and why."""

    defense: str
    layer: int = Field(description="the proposer layer whose proposals it screened")
    kept: list[str] = Field(description="what went on: agents, or candidates when it re-aggregates")
    dropped: list[str] = Field(default_factory=list)
    clusters: list[list[str]] = Field(default_factory=list, description="the members of each cluster it found")
    candidates: list[CandidateRecord] = Field(default_factory=list)
    chosen: str | None = Field(default=None, description="the answer it picked, when it picks one")
    reason: str
    calls: int = Field(default=0, description="model calls it made")
    extra_calls: int = Field(default=0, description="model calls beyond those of the same ensemble undefended")


class ChatMessage(_Model):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, description="OpenAI's tool_calls objects")


class Choice(_Model):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = "stop"
    #: OpenAI's ``choices[i].logprobs`` (``content``: token, logprob, bytes, top_logprobs per position) when the
    #: request asked and the aggregator's backend answered; ``None`` otherwise (a vote's or a defense's answer too)
    logprobs: dict[str, Any] | None = None


class Completion(_Model):
    """A ``chat.completion`` object plus moa's trace and the proposals behind the answer."""

    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    trace: list[CallRecord] = Field(default_factory=list)
    proposals: list[ProposalRecord] = Field(default_factory=list)
    defense: list[DefenseRecord] = Field(default_factory=list)
    parsed: Any = Field(
        default=None,
        exclude=True,
        description="the SDK's: with response_format, the answer parsed (a pydantic model's instance, or the JSON)",
    )

    @property
    def text(self) -> str:
        return self.choices[0].message.content or ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The answer's tool calls, OpenAI's objects; empty when it makes none."""
        return self.choices[0].message.tool_calls or []

    @property
    def extra_calls(self) -> int:
        """Model calls the defense added to this request."""
        return sum(r.extra_calls for r in self.defense)
