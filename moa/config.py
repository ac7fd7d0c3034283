"""The ensemble config: schema (pydantic v2), loading from YAML/JSON, and error messages that name the field.

A config names its backends once and refers to them from agents and the aggregator by name::

    name: self-moa-smollm2
    backends:
      local: {type: vllm, model: "embedded:smollm2-135m-instruct"}
    layers:
      - agents: [{backend: local, n: 6, temperature: 0.7, max_tokens: 512}]
    aggregator: {type: synthesize, backend: local, temperature: 0.0}

String values may use ``${VAR}`` or ``${VAR:-default}`` to read the environment (for base URLs and model
names). API keys are never written in a config: ``api_key_env`` names the variable that holds one.

Any value may be ``{by_device: {cpu: A, cuda: B}}``: at load time it becomes the choice for this machine's device
(``local_device()``: ``$MOA_DEVICE``, else ``cuda`` where torch sees a GPU, else ``cpu``). A backend whose choice
is ``null`` is left out::

    backends:
      drafting: {by_device: {cpu: {type: torch, model: "embedded:smollm2-135m-instruct"}, cuda: null}}
    aggregator: {backend: {by_device: {cpu: drafting, cuda: local}}}
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from moa.defense_config import (
    DEFENSE_TYPES,
    EMBEDDING_TYPES,
    DeceptionConfig,
    DefenseConfig,
    OpenAIEmbeddings,
    RandomPlacement,
    RedTeamConfig,
    type_names,
)
from moa.errors import ConfigError
from moa.pricing import Prices
from moa.sampling import OPENAI_FIELDS, VLLM_FIELDS, FieldSupport, SamplingFields, set_fields

_CONFIG_DIR = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- backends ------------------------------------------------------------------------------------------


class RateLimit(_Strict):
    """Limits shared by every agent and request that uses one backend."""

    rps: Annotated[float, Field(gt=0)] | None = Field(default=None, description="requests per second")
    burst: Annotated[int, Field(ge=1)] = Field(
        default=1, description="requests that may go back to back before rps spacing"
    )
    concurrency: Annotated[int, Field(gt=0)] | None = Field(default=None, description="requests in flight")
    tpm: Annotated[int, Field(gt=0)] | None = Field(default=None, description="tokens per minute")
    store: str | None = Field(
        default=None, description="redis://host:port/db shared by every replica that names it (moa[redis])"
    )
    key_prefix: str | None = Field(default=None, description="the store's keys; default the backend's name and host")
    replicas: Annotated[int, Field(ge=1)] = Field(
        default=1, description="replicas sharing the store: the local limits while it is unreachable are divided by it"
    )
    lease_ttl_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="seconds a concurrency lease outlives a replica that stopped renewing it"
    )

    @field_validator("store")
    @classmethod
    def _check_store(cls, url: str | None) -> str | None:
        """The one check of a store URL (``moa validate`` and ``moa serve`` alike); it never quotes the URL,
        which may hold a password."""
        if url is None:
            return url
        if not re.match(r"^(rediss?|unix)://\S+$", url):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if url.startswith("unix://"):
            return url
        try:
            split = urlsplit(url)
            split.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
        except ValueError:
            raise ValueError(
                "not a valid Redis URL: the port must be a number from 0 to 65535 (redis://[:password@]host:port/db)"
            ) from None
        if not split.hostname:
            raise ValueError("not a valid Redis URL: it names no host (redis://[:password@]host:port/db)")
        if split.path not in ("", "/") and not re.fullmatch(r"/\d+", split.path):
            raise ValueError("not a valid Redis URL: the database must be a number (redis://[:password@]host:port/db)")
        return url


class RetryPolicy(_Strict):
    """Retries for 408/409/429/5xx, timeouts and dropped connections (openai-python's schedule)."""

    max_retries: Annotated[int, Field(ge=0, le=20)] = 2
    initial_backoff_s: Annotated[float, Field(ge=0)] = 0.5
    max_backoff_s: Annotated[float, Field(ge=0)] = 8.0
    max_retry_after_s: Annotated[float, Field(ge=0)] = 60.0


class HedgePolicy(_Strict):
    """Hedged calls: a call with no answer (a stream, or a call of one sample: no first token) after a delay gets a
    second, identical call; the first to answer wins and the other is cancelled. Only for idempotent calls (every
    chat call today). With both delays, ``after_s`` holds until ``min_samples`` latencies are seen."""

    after_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="a fixed delay; with after_quantile, the delay until min_samples are seen"
    )
    after_quantile: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None, description="the delay as this quantile of the latencies seen for the model"
    )
    min_samples: Annotated[int, Field(ge=1)] = Field(
        default=20, description="after_quantile: latencies needed before it hedges"
    )
    max_extra: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.1, description="the share of calls that may be hedged"
    )

    @model_validator(mode="after")
    def _one_delay(self) -> HedgePolicy:
        if self.after_s is None and self.after_quantile is None:
            raise _PathError("after_s", "give after_s, after_quantile or both")
        return self


class WaitPolicy(_Strict):
    """Quorum: a layer goes on once ``min`` proposals are in and every call has answered or the grace has passed;
    calls still running are cancelled. No grace given: it goes on at the ``min``-th proposal."""

    min: Annotated[int, Field(ge=1)] = Field(description="proposals that let the layer go on")
    grace_s: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="seconds to wait for the rest after the min-th proposal"
    )
    grace_ratio: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="wait for the rest up to this times the time the min-th proposal took"
    )

    @model_validator(mode="after")
    def _one_grace(self) -> WaitPolicy:
        if self.grace_s is not None and self.grace_ratio is not None:
            raise _PathError("grace_ratio", "give at most one of grace_s and grace_ratio")
        return self


class _BackendBase(_Strict):
    rate_limit: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    timeout_s: Annotated[float, Field(gt=0)] = Field(default=120.0, description="per-call timeout")
    prices: Prices | None = Field(default=None, description="USD per million tokens: each call's cost_usd")
    hedge: HedgePolicy | None = Field(default=None, description="hedged calls (off by default)")


class ChatTemplateRules(_Strict):
    """What the chat template behind a backend accepts (``chat_template:`` of an ``openai`` backend). moa fits every
    prompt to these rules just before sending it (``proposers.chat_template``)."""

    system: Literal[True, False, "first", "fold"] = Field(
        default=True,
        description="true: system turns anywhere; first: only as the first turn; fold (or false): no system role, "
        "its text goes into the next user turn",
    )
    alternate: bool = Field(
        default=False, description="turns must alternate user/assistant, starting with the user (Gemma, Mistral)"
    )
    tool: bool = Field(default=True, description="the tool role is accepted (false: tool results go into user turns)")


class OpenAIBackendConfig(_BackendBase):
    """Any OpenAI-compatible chat completions API (OpenAI, Together, a vLLM server, ...)."""

    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    model: str | None = Field(default=None, description="default model of agents that name none")
    supports_n: bool = Field(default=True, description="one request may ask for n samples")
    stream_usage: bool = Field(default=True, description="send stream_options.include_usage when streaming")
    headers: dict[str, str] = Field(default_factory=dict)
    chat_template: ChatTemplateRules | None = Field(
        default=None,
        description="the upstream chat template's rules; unset: learned from its first refusal of a layout (an HTTP "
        "400 such as 'System role not supported'), per model",
    )
    vllm_extensions: bool = Field(
        default=False, description="the upstream is a vLLM server: vLLM's sampling fields (repetition_penalty) are sent"
    )

    def field_support(self) -> FieldSupport:
        """OpenAI's sampling fields, and vLLM's with ``vllm_extensions``."""
        if self.vllm_extensions:
            return FieldSupport(OPENAI_FIELDS | VLLM_FIELDS)
        hint = "vLLM's extensions are sent to an openai backend only when it sets vllm_extensions: true"
        return FieldSupport(OPENAI_FIELDS, hint)

    @field_validator("api_key_env")
    @classmethod
    def _no_key(cls, name: str | None) -> str | None:
        """An empty name (``MOA_API_KEY_ENV=``) means no key: a keyless local server needs no dummy variable."""
        return name.strip() or None if name is not None else None

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"must be an http(s) URL, got {url!r}")
        return url.rstrip("/")


class VLLMSpeculativeConfig(_Strict):
    """vLLM's n-gram speculative decoding (prompt lookup): drafts are copied from the prompt, so an aggregator that
    quotes its references gets several tokens per step. Lossless; the fields are vLLM's ``speculative_config``'s."""

    method: Literal["ngram"] = "ngram"
    num_speculative_tokens: Annotated[int, Field(ge=1, le=64)] = Field(default=4, description="tokens drafted a step")
    prompt_lookup_max: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="longest n-gram matched in the prompt (default: prompt_lookup_min, else vLLM's 5)"
    )
    prompt_lookup_min: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="shortest n-gram matched in the prompt (default: prompt_lookup_max, else vLLM's 5)"
    )

    @model_validator(mode="after")
    def _check(self) -> VLLMSpeculativeConfig:
        low, high = self.prompt_lookup_min, self.prompt_lookup_max
        if low is not None and high is not None and low > high:
            raise _PathError("prompt_lookup_min", f"must be <= prompt_lookup_max ({high})")
        return self


class VLLMBackendConfig(_BackendBase):
    """In-process vLLM (CUDA or CPU). ``model`` is a path, a hub name or ``embedded:<name>``."""

    type: Literal["vllm"]
    model: str
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: str = "auto"
    max_model_len: Annotated[int, Field(gt=0)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="share of device memory for weights and KV cache (default: 0.3 on CPU, vLLM's on CUDA)",
    )
    enforce_eager: bool | None = Field(default=None, description="skip graph capture (default: on for CPU only)")
    enable_prefix_caching: bool = True
    seed: int = 0
    speculative: VLLMSpeculativeConfig | None = Field(
        default=None, description="vLLM's own speculative decoding (its speculative_config)"
    )
    chat_template: str | None = Field(
        default=None,
        description="a Jinja chat template used instead of the model's own: a file path, or the template itself",
    )

    def field_support(self) -> FieldSupport:
        """Every sampling field vLLM's ``SamplingParams`` takes."""
        return FieldSupport(VLLM_FIELDS)


class SpeculativeConfig(_Strict):
    """Speculative decoding for a torch backend. Lossless: outputs are distributed as the target's own."""

    policy: Literal["fixed", "heuristic", "confidence", "specdec++", "reference"] = "fixed"
    draft: str | None = Field(
        default=None,
        description="a smaller model with the target's tokenizer (path or embedded:name), or a self-draft "
        ".safetensors from `moa specdec train-draft`; not used by policy reference",
    )
    head: str | None = Field(default=None, description="specdec++: an acceptance head from `moa specdec train-head`")
    k: Annotated[int, Field(ge=1, le=64)] = Field(default=4, description="fixed: draft length; heuristic: first one")
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None,
        description="confidence: stop once the draft's probability product falls below it (default 0.3); "
        "specdec++: stop once 1 - prod(P_accept) exceeds it (default: the head's own h)",
    )
    min_k: Annotated[int, Field(ge=1, le=64)] = Field(default=2, description="shortest draft (not fixed)")
    max_k: Annotated[int, Field(ge=1, le=64)] = Field(default=20, description="longest draft (not fixed)")
    min_match: Annotated[int, Field(ge=1)] = Field(default=3, description="reference: shortest match that proposes")

    @model_validator(mode="after")
    def _check(self) -> SpeculativeConfig:
        if self.min_k > self.max_k:
            raise _PathError("min_k", f"must be <= max_k ({self.max_k})")
        if self.policy == "reference" and self.draft is not None:
            raise _PathError("draft", "policy reference drafts from the prompt and uses no draft model")
        if self.policy != "reference" and self.draft is None:
            raise _PathError("draft", f"required by policy {self.policy!r}")
        if self.policy == "specdec++" and self.head is None:
            raise _PathError("head", "required by policy 'specdec++'")
        return self


class TorchBackendConfig(_BackendBase):
    """A Hugging Face causal LM run by moa's own torch decode loop (with speculative decoding)."""

    type: Literal["torch"]
    model: str
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: str = "auto"
    speculative: SpeculativeConfig | None = None

    def field_support(self) -> FieldSupport:
        """What ``proposers.specdec``'s decode loop implements."""
        fields = frozenset({"temperature", "top_p", "max_tokens", "stop", "seed"})
        return FieldSupport(fields, "moa's torch decode loop does not implement it")


BackendConfig = Annotated[OpenAIBackendConfig | VLLMBackendConfig | TorchBackendConfig, Field(discriminator="type")]
BACKEND_TYPES = type_names(BackendConfig)


# ---- agents, layers, aggregator --------------------------------------------------------------------------


class _Sampling(SamplingFields, _Strict):
    """The sampling fields, declared once in ``moa.types.SamplingFields``."""


class AgentConfig(_Sampling):
    backend: str
    model: str | None = Field(default=None, description="defaults to the backend's model")
    name: str | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    system_prompt: str | None = None
    deceptive: DeceptionConfig | None = Field(
        default=None, description="red-teaming: true, or {target: B} to argue for an option of a multiple-choice"
    )
    hedge: HedgePolicy | None = Field(default=None, description="hedged calls for this agent (default: its backend's)")

    @field_validator("deceptive", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        return ({} if value else None) if isinstance(value, bool) else value


class LayerConfig(_Strict):
    agents: Annotated[list[AgentConfig], Field(min_length=1)]
    min_proposals: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="fewer survivors fail the request (default: the ensemble's)"
    )
    wait: WaitPolicy | None = Field(default=None, description="quorum (default: the ensemble's; none: wait for all)")


#: the aggregator types, each implemented by a class the registry names
AggregatorType = Literal["synthesize", "self-moa-seq"]


class AggregatorConfig(_Sampling):
    type: AggregatorType = "synthesize"
    backend: str
    model: str | None = None
    system_prompt: str | None = Field(default=None, description="replaces moa's synthesis instructions")
    window: Annotated[int, Field(ge=2)] = Field(
        default=3, description="self-moa-seq: samples seen per step, the running synthesis included"
    )
    hedge: HedgePolicy | None = Field(default=None, description="hedged calls (default: its backend's)")

    @model_validator(mode="before")
    @classmethod
    def _trusted(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("deceptive"):
            raise _PathError("deceptive", "the final aggregator is always trusted; make proposer agents deceptive")
        return data


#: where prompts put the instructions and fenced references: a system turn after the conversation (which then
#: stays a prefix every layer's and the aggregator's prompt shares), or the system message in front of it
ReferencesAt = Literal["end", "system"]


class ReferencesConfig(_Strict):
    at: ReferencesAt = Field(
        default="end", description="end: after the conversation (cache-friendly); system: in the system message"
    )


class EnsembleConfig(_Strict):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    backends: Annotated[dict[str, BackendConfig], Field(min_length=1)]
    layers: Annotated[list[LayerConfig], Field(min_length=1)]
    aggregator: AggregatorConfig
    red_team: RedTeamConfig | None = Field(default=None, description="deceptive agents placed by position or at random")
    defense: DefenseConfig | None = None
    min_proposals: Annotated[int, Field(ge=1)] = 1
    deadline_s: Annotated[float, Field(gt=0)] | None = Field(default=None, description="per-request deadline")
    max_cost_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="per-request budget in USD; a request may lower it, never raise it"
    )
    wait: WaitPolicy | None = Field(default=None, description="every layer's quorum unless it sets its own")
    references: ReferencesConfig = Field(
        default_factory=ReferencesConfig, description="where layers 2.. and the aggregator get their references"
    )

    @model_validator(mode="after")
    def _check_references(self) -> EnsembleConfig:
        known = sorted(self.backends)
        found: list[_PathError] = []  # every check runs, so one validation names every problem

        def check(run: Callable[..., None], *args: Any) -> None:
            try:
                run(*args)
            except _PathError as e:
                found.append(e)

        for li, layer in enumerate(self.layers):
            for ai, agent in enumerate(layer.agents):
                check(self._check_backend, agent.backend, agent.model, f"layers[{li}].agents[{ai}]", known)
        check(self._check_backend, self.aggregator.backend, self.aggregator.model, "aggregator", known)
        unknown_backends = bool(found)
        check(self._check_min_proposals)
        check(self._check_wait)
        if unknown_backends:  # the checks below read the agents' backends
            raise _PathErrors(found)
        check(self._check_names)
        check(self._check_budget)
        check(self._check_fields)
        if self.red_team is not None:
            check(self._check_placement, self.red_team.placement)
        if found:
            raise _PathErrors(found)
        return self

    def agent_name(self, li: int, ai: int) -> str:
        """Agent ``ai`` of layer ``li`` (both 0-based): its ``name``, else ``L{layer}.{agent}:{model}`` (1-based,
        the model's last path part)."""
        agent = self.layers[li].agents[ai]
        if agent.name is not None:
            return agent.name
        model = self.model_for(agent.backend, agent.model)
        return f"L{li + 1}.{ai + 1}:{model.rsplit('/', 1)[-1]}"

    def model_for(self, backend: str, model: str | None) -> str:
        """The model a call names: its own ``model``, else ``backend``'s default (validation guarantees one)."""
        return model or self.backends[backend].model or ""

    def _check_min_proposals(self) -> None:
        """A layer must be able to produce ``min_proposals`` proposals (its agents' n summed), else every request
        fails."""
        for li, layer in enumerate(self.layers):
            most = sum(agent.n for agent in layer.agents)
            where = f"layers[{li}].min_proposals" if layer.min_proposals is not None else "min_proposals"
            required = layer.min_proposals or self.min_proposals
            if required > most:
                raise _PathError(
                    where, f"must be <= {most}, the proposals layers[{li}] can produce (the sum of its agents' n)"
                )

    def _check_fields(self) -> None:
        """Every sampling field an agent or the aggregator sets is one its backend honours."""
        calls: list[tuple[str, AgentConfig | AggregatorConfig]] = []
        for li, layer in enumerate(self.layers):
            calls += [(f"layers[{li}].agents[{ai}]", agent) for ai, agent in enumerate(layer.agents)]
        for at, call in [*calls, ("aggregator", self.aggregator)]:
            for field in set_fields(call):
                reason = self.backends[call.backend].field_support().refusal(field, call.backend)
                if reason is not None:
                    raise _PathError(f"{at}.{field}", reason)

    def _check_budget(self) -> None:
        if self.max_cost_usd is not None and (gap := self.budget_gap()) is not None:
            raise _PathError(gap, "required when max_cost_usd is set")

    def budget_gap(self) -> str | None:
        """The first field a budget needs that is not set, or None: every call's worst case must be known, so
        every backend (and a defense's embeddings endpoint) needs ``prices`` and every call ``max_tokens``."""
        for name, backend in self.backends.items():
            if backend.prices is None:
                return f"backends.{name}.prices"
        embeddings = None if self.defense is None else self.defense.embeddings
        if isinstance(embeddings, OpenAIEmbeddings) and embeddings.prices is None:
            return "defense.embeddings.prices"
        for li, layer in enumerate(self.layers):
            for ai, agent in enumerate(layer.agents):
                if agent.max_tokens is None:
                    return f"layers[{li}].agents[{ai}].max_tokens"
        return "aggregator.max_tokens" if self.aggregator.max_tokens is None else None

    def wait_for(self, li: int) -> WaitPolicy | None:
        """The quorum of layer ``li`` (0-based): its own ``wait``, else the ensemble's; ``None``: wait for all."""
        return self.layers[li].wait or self.wait

    def _check_wait(self) -> None:
        """A quorum's ``min`` lies between the layer's ``min_proposals`` and the proposals it can produce."""
        for li, layer in enumerate(self.layers):
            wait = self.wait_for(li)
            if wait is None:
                continue
            where = f"layers[{li}].wait.min" if layer.wait is not None else "wait.min"
            most = sum(agent.n for agent in layer.agents)
            required = layer.min_proposals or self.min_proposals
            if wait.min > most:
                raise _PathError(where, f"must be <= {most}, the proposals layers[{li}] can produce")
            if wait.min < required:
                raise _PathError(where, f"must be >= {required}, the min_proposals of layers[{li}]")

    def _check_names(self) -> None:
        """Agent names (explicit or derived) and the names of their samples (``name#k`` when n > 1) are unique in
        the ensemble: traces, failures and defense records tell agents apart by them."""
        owners: dict[str, tuple[int, int]] = {}
        for li, layer in enumerate(self.layers):
            for ai, agent in enumerate(layer.agents):
                name = self.agent_name(li, ai)
                names = [name] if agent.n == 1 else [name, *(f"{name}#{k}" for k in range(1, agent.n + 1))]
                for taken in names:
                    if taken in owners:
                        here, there = (li, ai), owners[taken]
                        if agent.name is None:  # blame the explicit name: derived names never collide
                            here, there = there, here
                        samples = (
                            not taken == name == self.agent_name(*owners[taken])
                        )  # a sample's name, not two agents'
                        raise _PathError(
                            f"layers[{here[0]}].agents[{here[1]}].name",
                            f"{taken!r} names both this agent and layers[{there[0]}].agents[{there[1]}]"
                            + (" (an agent with n > 1 names its samples NAME#1, NAME#2, ...)" if samples else "")
                            + "; agent names must be unique in the ensemble",
                        )
                    owners[taken] = (li, ai)

    def _check_placement(self, placement: list[tuple[int, int]] | RandomPlacement) -> None:
        if isinstance(placement, RandomPlacement):
            total = sum(len(layer.agents) for layer in self.layers)
            if placement.random > total:
                raise _PathError("red_team.placement.random", f"must be <= {total}, the number of proposer agents")
            return
        for i, (layer, agent) in enumerate(placement):
            where = f"red_team.placement[{i}]"
            if layer == len(self.layers) + 1:
                raise _PathError(where, f"layer {layer} is the final aggregator, which is always trusted")
            if layer > len(self.layers):
                raise _PathError(where, f"no layer {layer}: the ensemble has {len(self.layers)} proposer layer(s)")
            agents = len(self.layers[layer - 1].agents)
            if agent > agents:
                raise _PathError(where, f"no agent {agent} in layer {layer}: it has {agents}")
            if (layer, agent) in placement[:i]:
                raise _PathError(where, f"[{layer}, {agent}] is placed twice")

    def deceptive_agents(self) -> dict[tuple[int, int], DeceptionConfig]:
        """Every deceptive proposer by (layer, agent), 1-based: agents marked ``deceptive`` and ``red_team``'s."""
        marked = {
            (li, ai): agent.deceptive
            for li, layer in enumerate(self.layers, 1)
            for ai, agent in enumerate(layer.agents, 1)
            if agent.deceptive is not None
        }
        if self.red_team is None:
            return marked
        placement = self.red_team.placement
        if isinstance(placement, RandomPlacement):
            slots = [(li, ai) for li, layer in enumerate(self.layers, 1) for ai in range(1, len(layer.agents) + 1)]
            placement = random.Random(placement.seed).sample(slots, placement.random)
        placed = {(li, ai): DeceptionConfig(target=self.red_team.target) for li, ai in placement}
        return {**placed, **marked}

    def _check_backend(self, name: str, model: str | None, where: str, known: list[str]) -> None:
        if name not in self.backends:
            raise _PathError(f"{where}.backend", f"unknown backend {name!r} (known: {', '.join(known)})")
        if model is None and self.backends[name].model is None:
            raise _PathError(f"{where}.model", f"required: backend {name!r} names no default model")


class _PathError(ValueError):
    """Raised inside validators to report a path other than the one being validated."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(message)


class _PathErrors(ValueError):
    """Several ``_PathError`` found by one validator, reported one by one."""

    def __init__(self, errors: list[_PathError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))


# ---- loading -----------------------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, path: str = "") -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {var} is not set", path or None)

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


#: the devices a ``by_device`` choice names; ``$MOA_DEVICE`` forces one
Device = Literal["cpu", "cuda"]
DEVICES: tuple[Device, ...] = ("cpu", "cuda")
DEVICE_ENV = "MOA_DEVICE"
_BY_DEVICE = "by_device"


def local_device() -> Device:
    """The device local backends run on: ``$MOA_DEVICE`` if set, else ``cuda`` where torch sees a GPU, else
    ``cpu`` (torch is imported only here, and only when a config asks)."""
    forced = os.environ.get(DEVICE_ENV, "")
    if forced:
        for device in DEVICES:
            if forced == device:
                return device
        raise ConfigError(f"${DEVICE_ENV} must be one of {list(DEVICES)}, got {forced!r}")
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class _Dropped:
    """A ``by_device`` choice of ``null``: the key that holds it is left out."""


_DROPPED = _Dropped()


def _choose_device(value: Any, device: Callable[[], Device], path: str = "") -> Any:
    """``value`` with every ``{by_device: {...}}`` replaced by the choice for ``device()``."""
    if isinstance(value, dict) and _BY_DEVICE in value:
        where = f"{path}.{_BY_DEVICE}" if path else _BY_DEVICE
        choices = value[_BY_DEVICE]
        if len(value) != 1:
            others = ", ".join(sorted(str(k) for k in value if k != _BY_DEVICE))
            raise ConfigError(f"by_device stands alone; move {others} into each choice", path or None)
        if not isinstance(choices, dict) or not choices:
            raise ConfigError(f"must map devices ({', '.join(DEVICES)}) to values", where)
        unknown = sorted(str(k) for k in choices if k not in DEVICES)
        if unknown:
            raise ConfigError(
                f"unknown device {unknown[0]!r}, expected one of {list(DEVICES)}", f"{where}.{unknown[0]}"
            )
        here = device()
        if here not in choices:
            raise ConfigError(f"no choice for this machine's device {here!r} (${DEVICE_ENV} picks one)", where)
        chosen = choices[here]
        return _DROPPED if chosen is None else _choose_device(chosen, device, path)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            chosen = _choose_device(v, device, f"{path}.{k}" if path else str(k))
            if chosen is not _DROPPED:
                out[k] = chosen
        return out
    if isinstance(value, list):
        items = [_choose_device(v, device, f"{path}[{i}]") for i, v in enumerate(value)]
        if any(item is _DROPPED for item in items):
            raise ConfigError("a list item cannot be a by_device choice of null", path or None)
        return items
    return value


def _once(make: Callable[[], Device]) -> Callable[[], Device]:
    """``make``, called at most once."""
    made: list[Device] = []

    def get() -> Device:
        if not made:
            made.append(make())
        return made[0]

    return get


# Where a discriminated union sits (the path so far) and its tags, which pydantic puts in an error's path.
_UNION_TAGS = (
    (re.compile(r"backends\.[^.]+"), BACKEND_TYPES),
    (re.compile(r"defense"), DEFENSE_TYPES),
    (re.compile(r"defense\.embeddings"), EMBEDDING_TYPES),
    (re.compile(r"red_team\.placement"), ("positions", "random")),
)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out, tag_at = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out != tag_at and any(where.fullmatch(out) and part in tags for where, tags in _UNION_TAGS):
            tag_at = out  # a discriminated union's tag: not a field the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out


def describe_error(err: ErrorDetails | Mapping[str, Any]) -> tuple[str, str]:
    """(dotted path, short message) of one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    path = _format_loc(err["loc"])
    bound = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
    messages: dict[str, Callable[[], str]] = {
        "less_than_equal": lambda: f"must be <= {bound['le']}",
        "less_than": lambda: f"must be < {bound['lt']}",
        "greater_than_equal": lambda: f"must be >= {bound['ge']}",
        "greater_than": lambda: f"must be > {bound['gt']}",
        "extra_forbidden": lambda: "unknown field",
        "missing": lambda: "field required",
        "too_short": lambda: f"must have at least {ctx.get('min_length')} item(s)",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "union_tag_invalid": lambda: f"unknown type {ctx.get('tag')!r}, expected one of {ctx.get('expected_tags')}",
        "union_tag_not_found": lambda: "field 'type' required",
    }
    if kind == "value_error":
        exc = ctx.get("error")
        if isinstance(exc, _PathError):
            base = f"{path}." if path else ""
            return base + exc.path, exc.message
        return path, str(exc) if exc else err["msg"]
    make = messages.get(kind)
    return path, make() if make else err["msg"].removeprefix("Value error, ")


def _described(err: ErrorDetails) -> list[tuple[str, str]]:
    """``describe_error``, with a validator's several problems (``_PathErrors``) one by one."""
    several = (err.get("ctx") or {}).get("error")
    if err["type"] == "value_error" and isinstance(several, _PathErrors):
        base = _format_loc(err["loc"])
        return [(f"{base}.{e.path}" if base else e.path, e.message) for e in several.errors]
    return [describe_error(err)]


def config_error(error: ValidationError, at: str | None = None, *, every: bool = False) -> ConfigError:
    """A pydantic ``ValidationError`` as a ``ConfigError`` naming the field: its first problem, at a path under
    ``at`` (``messages[1]`` + ``role``); with ``every``, all its problems as ``path: message`` joined by ``; ``
    (``path`` is then the first problem's)."""

    def under(path: str) -> str:
        return f"{at}.{path}" if at and path else at or path

    problems = [(under(path), message) for e in error.errors() for path, message in _described(e)]
    first_path = problems[0][0] or None
    if not every:
        return ConfigError(problems[0][1], first_path)
    err = ConfigProblems(problems)
    err.path = first_path
    return err


class ConfigProblems(ConfigError):
    """Every problem of one config, each as (dotted path, message); ``str()`` joins them with ``; ``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))


def parse_config(data: dict[str, Any]) -> EnsembleConfig:
    """Validate a config mapping; every problem is reported as ``path: message`` in one ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    try:
        return EnsembleConfig.model_validate(_choose_device(_expand_env(data), _once(local_device)))
    except ValidationError as e:
        raise config_error(e, every=True) from None


def builtin_configs() -> dict[str, Path]:
    """The recipes shipped with moa, by name (file stem)."""
    return {p.stem: p for p in sorted(_CONFIG_DIR.glob("*.yaml"))}


def load_config(source: str | os.PathLike[str] | dict[str, Any] | EnsembleConfig) -> EnsembleConfig:
    """A config from a mapping, a YAML/JSON file, or the name of a shipped recipe (``self-moa``)."""
    if isinstance(source, EnsembleConfig):
        return source
    if isinstance(source, dict):
        return parse_config(source)
    path = Path(source)
    if not path.exists():
        builtin = builtin_configs().get(str(source))
        if builtin is None:
            names = ", ".join(builtin_configs())
            raise ConfigError(f"no config file {str(source)!r} and no shipped recipe of that name (shipped: {names})")
        path = builtin
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    return parse_config(data)


def describe_config(config: EnsembleConfig) -> str:
    """One line on what ``config`` runs, as ``moa validate`` and ``moa serve`` print it:
    ``name: <L> layer(s), <N> proposal(s), aggregator <type>`` (L counts the proposer layers, not the aggregator;
    N counts every agent's ``n``). ``moa configs`` prints the same shape, so the two never disagree."""
    calls = sum(agent.n for layer in config.layers for agent in layer.agents)
    return f"{config.name}: {len(config.layers)} layer(s), {calls} proposal(s), aggregator {config.aggregator.type}"
