"""The backends a config names (``backends:``), one class a ``type``: what each needs to be reached or started,
and what every type shares (limits, retries, timeout, prices, hedging)."""

from __future__ import annotations

import re
from abc import abstractmethod
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from moa.config.base import Strict
from moa.config.policies import HedgePolicy, RateLimit, RetryPolicy
from moa.content import InputKind
from moa.defense_config import type_names
from moa.pricing import Prices
from moa.sampling import OPENAI_FIELDS, VLLM_FIELDS, FieldSupport
from moa.tools import ToolSpec
from moa.validation import PathError


class BackendConfigBase(Strict):
    """What every backend type shares (a default model, limits, retries, timeout, prices, hedging), and what the
    engine, the CLI and the estimate ask of a backend without knowing its type: each type defines the abstract
    properties."""

    model: str | None = Field(default=None, description="default model of agents that name none")
    rate_limit: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    timeout_s: Annotated[float, Field(gt=0)] = Field(default=120.0, description="per-call timeout")
    prices: Prices | None = Field(default=None, description="USD per million tokens: each call's cost_usd")
    hedge: HedgePolicy | None = Field(default=None, description="hedged calls (off by default)")
    input: tuple[InputKind, ...] | None = Field(
        default=None,
        description="the content parts its model reads (text, image, audio); a part of another kind reaches it as a "
        "marker ([image]); unset: an openai backend forwards every part as sent, an in-process one refuses them",
    )

    @field_validator("input")
    @classmethod
    def _reads_text(cls, kinds: tuple[InputKind, ...] | None) -> tuple[InputKind, ...] | None:
        if kinds is not None and "text" not in kinds:
            raise ValueError("must include text")
        return kinds

    def reads(self, kind: InputKind) -> bool:
        """Its model reads parts of ``kind`` (``input:``, else its type's default: ``forwards_parts``)."""
        return kind in self.input if self.input is not None else kind == "text" or self.forwards_parts

    @property
    def forwards_parts(self) -> bool:
        """Without ``input:``, image and audio parts are sent as they came (the upstream decides)."""
        return False

    @property
    @abstractmethod
    def endpoint(self) -> str | None:
        """The URL its calls go to (part of the default key of limits shared on a store); None: it runs in this
        process."""

    @property
    @abstractmethod
    def one_call_for_n(self) -> bool:
        """One call may ask for n samples; else an agent with n > 1 makes n calls of one."""

    @abstractmethod
    def field_support(self) -> FieldSupport:
        """The sampling fields its calls honour; a call that sets another is refused naming the field."""

    def tools_refusal(self, spec: ToolSpec) -> str | None:
        """Why its calls cannot be offered the tools of ``spec`` (``moa.tools``); ``None`` when they can."""
        return None

    def logprobs_refusal(self) -> str | None:
        """Why its calls cannot return log-probabilities (a request's ``logprobs``); ``None`` when they can."""
        return None

    @property
    def in_process(self) -> bool:
        """It runs in this process: an engine started before the first call, whose tokens cost nothing."""
        return self.endpoint is None


class ChatTemplateRules(Strict):
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


class OpenAIBackendConfig(BackendConfigBase):
    """Any OpenAI-compatible chat completions API (OpenAI, Together, a vLLM server, ...)."""

    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
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
    developer_role: bool | None = Field(
        default=None,
        description="developer turns are sent as developer (true) or as system (false); unset: developer only to "
        "OpenAI's own API (api.openai.com)",
    )

    @property
    def forwards_parts(self) -> bool:
        return True

    @property
    def keeps_developer(self) -> bool:
        """``developer`` turns go out as they are; else as ``system``."""
        if self.developer_role is not None:
            return self.developer_role
        return self.base_url.startswith("https://api.openai.com")

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

    @property
    def endpoint(self) -> str:
        return self.base_url

    @property
    def one_call_for_n(self) -> bool:
        return self.supports_n


class VLLMSpeculativeConfig(Strict):
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
            raise PathError("prompt_lookup_min", f"must be <= prompt_lookup_max ({high})")
        return self


class InProcessBackendConfig(BackendConfigBase):
    """What the backends that run a model in this process share: a model, its device and dtype; no endpoint, and
    one call samples all n."""

    model: str
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: str = "auto"

    @field_validator("input")
    @classmethod
    def _text_only(cls, kinds: tuple[InputKind, ...] | None) -> tuple[InputKind, ...] | None:
        if kinds is not None and set(kinds) != {"text"}:
            raise ValueError("an in-process backend reads text only: [text] (image and audio parts become markers)")
        return kinds

    @property
    def endpoint(self) -> None:
        return None

    @property
    def one_call_for_n(self) -> bool:
        return True


class VLLMBackendConfig(InProcessBackendConfig):
    """In-process vLLM (CUDA or CPU). ``model`` is a path, a hub name or ``embedded:<name>``."""

    type: Literal["vllm"]
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
        description="a Jinja chat template used instead of the model's own: a file path, or the template itself "
        "(one that renders `tools` for a model whose own template does not)",
    )
    tool_parser: str | None = Field(
        default=None,
        description="vLLM's tool parser reading the calls the model writes under tool_choice auto (any name vLLM's "
        "ToolParserManager knows: hermes, llama3_json, mistral, ...); unset: auto is refused",
    )

    def field_support(self) -> FieldSupport:
        """Every sampling field vLLM's ``SamplingParams`` takes."""
        return FieldSupport(VLLM_FIELDS)

    def tools_refusal(self, spec: ToolSpec) -> str | None:
        if spec.named is not None or spec.tool_choice in ("required", "none"):
            return None  # forced by vLLM's structured outputs (proposers.vllm_tools), or left out
        if self.tool_parser is not None:
            return None  # the model decides; vLLM's tool parser reads its calls (proposers.vllm_tool_parser)
        return (
            "in-process vLLM needs a tool parser for tool_choice 'auto': set tool_parser (e.g. hermes, with a "
            "chat_template that renders tools), or send tool_choice 'required' or a named function (vLLM's "
            "structured outputs write the call)"
        )


class SpeculativeConfig(Strict):
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
            raise PathError("min_k", f"must be <= max_k ({self.max_k})")
        if self.policy == "reference" and self.draft is not None:
            raise PathError("draft", "policy reference drafts from the prompt and uses no draft model")
        if self.policy != "reference" and self.draft is None:
            raise PathError("draft", f"required by policy {self.policy!r}")
        if self.policy == "specdec++" and self.head is None:
            raise PathError("head", "required by policy 'specdec++'")
        return self


class TorchBackendConfig(InProcessBackendConfig):
    """A Hugging Face causal LM run by moa's own torch decode loop (with speculative decoding)."""

    type: Literal["torch"]
    speculative: SpeculativeConfig | None = None
    quantization: Literal["int8"] | None = Field(
        default=None,
        description="int8: the linear layers' weights stored as int8 and their activations quantized on the fly "
        "(torch's dynamic quantization), CPU only: decoding reads a quarter of the weight bytes, and the answers "
        "differ from the float model's",
    )

    @model_validator(mode="after")
    def _quantized_on_cpu(self) -> TorchBackendConfig:
        if self.quantization is not None and self.device == "cuda":
            raise PathError("quantization", "int8 dynamic quantization runs on the CPU only (device: cpu or auto)")
        return self

    def field_support(self) -> FieldSupport:
        """What ``proposers.specdec``'s decode loop implements."""
        fields = frozenset({"temperature", "top_p", "max_tokens", "stop", "seed", "repetition_penalty"})
        return FieldSupport(fields, "moa's torch decode loop does not implement it")

    def tools_refusal(self, spec: ToolSpec) -> str | None:
        return "moa's torch decode loop cannot call tools"

    def logprobs_refusal(self) -> str | None:
        return "moa's torch decode loop does not return log-probabilities"


BackendConfig = Annotated[OpenAIBackendConfig | VLLMBackendConfig | TorchBackendConfig, Field(discriminator="type")]
BACKEND_TYPES = type_names(BackendConfig)
