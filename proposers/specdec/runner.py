"""The torch backend's synchronous side: a loaded target (and draft), turning one request into tokens.

``Runner.load`` reads a ``TorchBackendConfig``; ``tokens`` decodes one sequence (speculatively when the
config asks for it) and ``samples`` decodes n sequences as one batch. Everything here runs on the
proposer's worker thread.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from moa.config import SpeculativeConfig, TorchBackendConfig
from moa.errors import ConfigError, ContextLengthError
from moa.types import Message, SamplingParams
from proposers.specdec import head as head_file
from proposers.specdec.data import encode_chat, stop_ids
from proposers.specdec.decode import DecodeStats, Drafter, generate, generate_batch
from proposers.specdec.loading import load_draft, load_target, pick_device, pick_dtype
from proposers.specdec.lookup import LookupDrafter
from proposers.specdec.model_draft import ModelDrafter
from proposers.specdec.policies import AcceptanceStop, Confidence, FixedLength, Heuristic, LengthPolicy
from proposers.specdec.sampling import Sampler, make_generator

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM

DEFAULT_MAX_TOKENS = 512
DEFAULT_CONFIDENCE = 0.3


@dataclass(slots=True)
class Runner:
    name: str
    model: CausalLM
    tokenizer: Any
    spec: SpeculativeConfig | None = None
    draft: CausalLM | None = None
    vocab: Tensor | None = None  # the draft's token ids when its head covers a subset
    head: nn.Module | None = None
    head_threshold: float = 0.5

    @classmethod
    def load(cls, name: str, config: TorchBackendConfig) -> Runner:
        where = f"backends.{name}"
        device = pick_device(config.device)
        if config.quantization is not None and device.type != "cpu":
            raise ConfigError("int8 dynamic quantization runs on the CPU only", f"{where}.quantization")
        model, tokenizer, target_hash = load_target(
            config.model, device, pick_dtype(config.dtype, device), f"{where}.model"
        )
        if config.quantization == "int8":
            model = quantized(model)
        runner = cls(name, model, tokenizer, config.speculative)
        spec = config.speculative
        if spec is not None and spec.draft is not None:
            runner.draft, runner.vocab, draft_hash = load_draft(
                spec.draft, model, tokenizer, target_hash, f"{where}.speculative.draft"
            )
            if spec.head is not None:
                head, runner.head_threshold = head_file.load(
                    spec.head, target_hash=target_hash, draft_hash=draft_hash, field=f"{where}.speculative.head"
                )
                runner.head = head.to(device=device, dtype=model.dtype)
        return runner

    @property
    def stop_ids(self) -> frozenset[int]:
        return stop_ids(self.model, self.tokenizer)

    def encode(self, messages: list[Message]) -> list[int]:
        return encode_chat(self.tokenizer, [m.to_dict() for m in messages])

    def budget(self, prompt: list[int], params: SamplingParams) -> int:
        """New tokens allowed: ``max_tokens`` (default 512), cut to what the context has left."""
        context = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        if len(prompt) >= context:
            raise ContextLengthError(
                f"{self.name}: the prompt has {len(prompt)} tokens; the model's context is {context}", backend=self.name
            )
        return min(params.max_tokens or DEFAULT_MAX_TOKENS, context - len(prompt))

    def sampler(self, params: SamplingParams) -> Sampler:
        return sampler_of(params, self.model.device)

    def drafter(self) -> Drafter | None:
        """A fresh drafter for one sequence (drafters hold per-sequence state), or None without speculation."""
        spec = self.spec
        if spec is None:
            return None
        if spec.policy == "reference":
            return LookupDrafter(spec.min_k, spec.max_k, spec.min_match)
        assert self.draft is not None
        vocab_size = self.model.get_output_embeddings().out_features
        return ModelDrafter(self.draft, self.policy(spec), vocab_size, self.vocab)

    def policy(self, spec: SpeculativeConfig) -> LengthPolicy:
        if spec.policy == "fixed":
            return FixedLength(spec.k)
        if spec.policy == "heuristic":
            return Heuristic(spec.k, spec.max_k)
        if spec.policy == "confidence":
            return Confidence(spec.threshold or DEFAULT_CONFIDENCE, spec.min_k, spec.max_k)
        assert self.head is not None
        return AcceptanceStop(self.head, spec.threshold or self.head_threshold, spec.min_k, spec.max_k)

    def tokens(self, prompt: list[int], params: SamplingParams) -> Generator[list[int], None, DecodeStats]:
        """One sequence; yields each step's new tokens."""
        return generate(
            self.model, prompt, self.sampler(params), self.budget(prompt, params), self.stop_ids, self.drafter()
        )

    def samples(
        self, prompt: list[int], params: SamplingParams, n: int, should_stop: Callable[[], bool] = lambda: False
    ) -> list[list[int]]:
        """n sequences sampled as one batch (plain decoding: a batch already keeps the machine busy); decoding
        ends early once ``should_stop()`` says so."""
        rows, _ = generate_batch(
            self.model, prompt, self.sampler(params), self.budget(prompt, params), self.stop_ids, n, should_stop
        )
        return rows


def quantized(model: CausalLM) -> CausalLM:
    """``model`` with its linear layers' weights as int8 (torch's dynamic quantization: activations quantized on
    the fly each forward). On a CPU whose decoding is bound by reading fp32 weights this cuts the bytes a step
    reads by 4."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch announces the API's move to torchao; the call is the same
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        out: CausalLM = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return out


def sampler_of(params: SamplingParams, device: torch.device | str) -> Sampler:
    """The distribution a call samples from: ``temperature`` (0: greedy) and ``top_p``, drawn with a generator on
    ``device`` seeded with ``seed``, after ``repetition_penalty``. With ``max_tokens`` (``Runner.budget``) and
    ``stop`` (the proposer's detokenizer) these are the fields ``TorchBackendConfig.field_support`` declares."""
    temperature = 1.0 if params.temperature is None else params.temperature
    top_p = 1.0 if params.top_p is None else params.top_p
    generator = None if temperature <= 0 else make_generator(params.seed, device)
    penalty = 1.0 if params.repetition_penalty is None else params.repetition_penalty
    return Sampler(temperature, top_p, generator, penalty)


__all__ = ["DEFAULT_MAX_TOKENS", "Runner", "quantized", "sampler_of"]
