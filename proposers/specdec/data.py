"""Training data for drafts and heads: prompts from a file, and the target's own responses to them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moa.errors import ConfigError
from proposers.specdec.decode import until_stop

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM

_TEXT_KEYS = ("instruction", "prompt", "content", "text", "question")


def read_prompts(path: str | Path, field: str = "--prompts") -> list[str]:
    """Prompts from .txt (one a line), .json (a list of strings or of objects) or .jsonl."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", field)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            parsed: Any = json.loads(text)
            if not isinstance(parsed, list):
                raise ConfigError(f"{path}: must be a JSON list of prompts (strings or objects)", field)
            items: list[Any] = parsed
        elif path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = [line for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}", field) from None
    prompts = [p for p in map(_text_of, items) if p]
    if not prompts:
        raise ConfigError(f"{path} holds no prompts", field)
    return prompts


def _text_of(item: Any) -> str | None:
    if isinstance(item, str):
        return item.strip()
    if isinstance(item, dict):
        for key in _TEXT_KEYS:
            value = item.get(key)
            if isinstance(value, str):
                return value.strip()
    return None


def stop_ids(model: CausalLM | None, tokenizer: Any, folder: str | Path | None = None) -> frozenset[int]:
    """Token ids that end a response: the generation config's EOS ids (the model's, or else the one in the
    model's ``folder``) and the tokenizer's."""
    if model is not None:
        ids = model.generation_config.eos_token_id
    else:
        from transformers import GenerationConfig

        config_file = None if folder is None else Path(folder) / "generation_config.json"
        ids = (
            GenerationConfig.from_pretrained(config_file.parent).eos_token_id
            if config_file and config_file.is_file()
            else None
        )
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return frozenset(found)


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """A conversation in the model's chat template, ready for the assistant's turn: token ids."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    ids: list[int] = tokenizer(text, add_special_tokens=False).input_ids
    return ids


@dataclass(frozen=True, slots=True)
class Sample:
    tokens: list[int]  # prompt then response
    start: int  # where the response begins


def target_responses(
    model: CausalLM,
    tokenizer: Any,
    prompts: list[str],
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    stop_ids: frozenset[int],
    batch: int = 16,
) -> list[Sample]:
    """``samples`` responses of the target to each prompt, sampled with transformers' batched ``generate``
    (left-padded batches of ``batch`` sequences: training data only needs the target's distribution)."""
    torch.manual_seed(seed)
    encoded = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts for _ in range(samples)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    out = []
    for i in range(0, len(encoded), batch):
        group = encoded[i : i + batch]
        width = max(map(len, group))
        ids = torch.tensor([[pad] * (width - len(g)) + g for g in group], device=model.device)  # [B, S]
        mask = torch.tensor([[0] * (width - len(g)) + [1] * len(g) for g in group], device=model.device)
        with torch.inference_mode():
            rows = model.generate(  # type: ignore[misc]  # transformers types GenerationMixin's self for `ty`, not mypy
                input_ids=ids,
                attention_mask=mask,
                do_sample=temperature > 0,
                temperature=temperature or None,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(stop_ids),
                pad_token_id=pad,
            )[:, width:].tolist()
        for prompt, row in zip(group, rows, strict=True):
            out.append(Sample([*prompt, *until_stop(row, stop_ids)], len(prompt)))
    return out


def write_responses(path: str | Path, samples: Sequence[Sample], tokenizer: Any) -> None:
    """Samples as JSONL, one a line: the token ids (``prompt_ids``, ``response_ids``) and, for reading, the
    response's text."""
    with Path(path).open("w", encoding="utf-8") as f:
        for s in samples:
            response = s.tokens[s.start :]
            text = tokenizer.decode(response, skip_special_tokens=True)
            f.write(json.dumps({"prompt_ids": s.tokens[: s.start], "response_ids": response, "response": text}))
            f.write("\n")


def read_responses(paths: Sequence[str | Path], vocab_size: int, field: str = "--responses") -> list[Sample]:
    """Samples from JSONL files written by ``write_responses`` (``moa specdec sample``), in order."""
    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"no such file: {path}", field)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                prompt, response = item["prompt_ids"], item["response_ids"]
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise ConfigError(f"{path}:{n}: not a response line ({e!r})", field) from None
            tokens = [*prompt, *response]
            if not prompt or not response or not all(isinstance(t, int) and 0 <= t < vocab_size for t in tokens):
                raise ConfigError(f"{path}:{n}: needs a prompt and a response of token ids below {vocab_size}", field)
            out.append(Sample(tokens, len(prompt)))
    if not out:
        raise ConfigError(f"no responses in {', '.join(map(str, paths))}", field)
    return out


__all__ = ["Sample", "encode_chat", "read_prompts", "read_responses", "stop_ids", "target_responses", "write_responses"]
