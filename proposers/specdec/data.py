"""Training data for drafts and heads: prompts from a file, and the target's own responses to them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moa.errors import ConfigError
from proposers.specdec.decode import until_stop

_TEXT_KEYS = ("instruction", "prompt", "content", "text", "question")


def read_prompts(path: str | Path, field: str = "--prompts") -> list[str]:
    """Prompts from .txt (one a line), .json (a list of strings or of objects) or .jsonl."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", field)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            items: list[Any] = json.loads(text)
        elif path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = [line for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}", field) from None
    prompts = [_text_of(item) for item in items]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError(f"{path} holds no prompts", field)
    return prompts


def _text_of(item: Any) -> str | None:
    if isinstance(item, str):
        return item.strip()
    if isinstance(item, dict):
        for key in _TEXT_KEYS:
            if isinstance(item.get(key), str):
                return item[key].strip()
    return None


def stop_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    """Token ids that end a response: the generation config's EOS ids and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return frozenset(found)


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """A conversation in the model's chat template, ready for the assistant's turn: token ids."""
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


@dataclass(frozen=True, slots=True)
class Sample:
    tokens: list[int]  # prompt then response
    start: int  # where the response begins


def target_responses(
    model: nn.Module, tokenizer: Any, prompts: list[str], *, samples: int, max_new_tokens: int,
    temperature: float, seed: int, stop_ids: frozenset[int], batch: int = 16,
) -> list[Sample]:  # fmt: skip
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
            rows = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=temperature > 0, temperature=temperature or None,
                top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids), pad_token_id=pad,
            )[:, width:].tolist()  # fmt: skip
        for prompt, row in zip(group, rows, strict=True):
            out.append(Sample([*prompt, *until_stop(row, stop_ids)], len(prompt)))
    return out


__all__ = ["Sample", "encode_chat", "read_prompts", "stop_ids", "target_responses"]
