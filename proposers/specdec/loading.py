"""Loading a target, its tokenizer and a draft (a smaller model, or a self-draft file) onto one device."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from moa.errors import ConfigError
from proposers.embedded import resolve_model
from proposers.specdec import self_draft
from proposers.specdec.identity import model_hash

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM


#: one model load at a time in this process: transformers builds a model on the meta device under a context it
#: sets process-wide, so two backends loading at once (``moa serve`` starts every backend together) raced, one
#: failing with "Cannot copy out of meta tensor"
LOADING = threading.Lock()


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but torch sees no CUDA device", "device")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(f"not a torch floating-point dtype: {dtype!r}", "dtype")
    return value


def model_folder(spec: str, field: str | None = None) -> Path:
    """The folder of a model given as a path or an ``embedded:`` name."""
    folder = Path(resolve_model(spec, field=field)).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"no Hugging Face model folder at {folder} (no model hub here: give a local path)", field)
    return folder


def load_target(
    spec: str, device: torch.device, dtype: torch.dtype, field: str | None = None
) -> tuple[CausalLM, Any, str]:
    """(model in eval mode, tokenizer, model hash)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(spec, field)
    with LOADING:
        # transformers wraps `to` so that mypy takes its first argument for `self`
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
        return model, AutoTokenizer.from_pretrained(folder), model_hash(folder)


def load_draft(
    spec: str, target: CausalLM, tokenizer: Any, target_hash: str, field: str | None = None
) -> tuple[CausalLM, Tensor | None, str]:
    """(draft model, its token ids when its head covers a subset, draft hash) for a target."""
    if spec.endswith(".safetensors"):
        if not Path(spec).is_file():
            raise ConfigError(f"no self-draft file at {spec}", field)
        draft, vocab = self_draft.load(spec, target, target_hash, field)
        return draft, vocab, model_hash(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(spec, field)
    if AutoTokenizer.from_pretrained(folder).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"the draft {spec} does not share the target's tokenizer", field)
    with LOADING:
        draft = AutoModelForCausalLM.from_pretrained(folder, dtype=target.dtype).to(target.device).eval()  # type: ignore[arg-type]
    if draft.get_output_embeddings().out_features > target.get_output_embeddings().out_features:
        raise ConfigError(f"the draft {spec} has more output rows than the target", field)
    return draft.requires_grad_(False), None, model_hash(folder)


__all__ = ["load_draft", "load_target", "model_folder", "pick_device", "pick_dtype"]
