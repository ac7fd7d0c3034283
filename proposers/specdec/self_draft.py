"""A self-speculative draft: the target's embedding and first k layers, a small trained block, and the
target's final norm and head (optionally restricted to the tokens the target uses most).

Only the block and the kept token ids are new; everything else is the target's own modules, shared in
memory, so a draft costs one small file. The draft is an ordinary Hugging Face causal LM (a shell of the
target's class with k + block layers), so it runs through the same forward and KV cache as any draft
model. Supported for decoder-only models laid out like Llama (``model.embed_tokens``, ``model.layers``,
``model.norm``, ``model.rotary_emb``, ``lm_head``): Llama, Mistral, Qwen2/3, SmolLM.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from moa.errors import ConfigError
from proposers.specdec.identity import read_metadata

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM

KIND = "moa-self-draft"


@dataclass(frozen=True, slots=True)
class SelfDraftSpec:
    layers: int  # target layers kept (the first k)
    block_layers: int = 1  # trained decoder layers on top
    init_from: int = -1  # which target layer the block starts as a copy of (-1: the last)


class _LlamaBase(Protocol):
    """The base model of a Llama-style causal LM (``target.model``); its layers are the target's decoder layers."""

    embed_tokens: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    rotary_emb: nn.Module


def _parts(target: CausalLM) -> _LlamaBase:
    base: _LlamaBase | None = getattr(target, "model", None)
    if base is None or not all(hasattr(base, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        raise ConfigError(f"a self-draft needs a Llama-style model; {type(target).__name__} is not laid out like one")
    return base


def new_blocks(target: CausalLM, spec: SelfDraftSpec) -> nn.ModuleList:
    """Fresh trainable blocks, each a copy of target layer ``init_from`` re-indexed to its cache slot."""
    layers = _parts(target).layers
    if not 1 <= spec.layers < len(layers):
        raise ConfigError(f"layers must be between 1 and {len(layers) - 1}, got {spec.layers}", "layers")
    blocks = nn.ModuleList()
    for j in range(spec.block_layers):
        # a decoder layer of the target's own class: its attributes are the ones transformers names
        block: Any = copy.deepcopy(layers[spec.init_from])
        block.self_attn.layer_idx = spec.layers + j
        blocks.append(block.float().requires_grad_(True))
    return blocks


def assemble(target: CausalLM, spec: SelfDraftSpec, blocks: nn.ModuleList, vocab: Tensor | None) -> CausalLM:
    """The draft as a causal LM sharing the target's modules; its head covers ``vocab`` rows when given."""
    base = _parts(target)
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = spec.layers + spec.block_layers
    if getattr(config, "layer_types", None):
        config.layer_types = [*config.layer_types[: spec.layers], *[config.layer_types[-1]] * spec.block_layers]
    with torch.device("meta"):
        draft = type(target)(config)
    draft.model.embed_tokens = base.embed_tokens
    draft.model.layers = nn.ModuleList([*base.layers[: spec.layers], *blocks])
    draft.model.norm = base.norm
    draft.model.rotary_emb = base.rotary_emb
    draft.lm_head = target.lm_head if vocab is None else _sub_head(target.lm_head, vocab)
    draft.to(device=target.device, dtype=target.dtype)  # type: ignore[call-arg]  # transformers wraps `to` untyped
    leftover = [n for n, t in [*draft.named_parameters(), *draft.named_buffers()] if t.is_meta]
    if leftover:
        raise ConfigError(f"a self-draft of {type(target).__name__} left modules unset: {', '.join(leftover)}")
    draft.eval()
    return draft


def _sub_head(head: nn.Linear, vocab: Tensor) -> nn.Linear:
    """head restricted to the rows of ``vocab``: [V', H]."""
    sub = nn.Linear(head.in_features, len(vocab), bias=head.bias is not None, device=head.weight.device)
    with torch.no_grad():
        sub.weight.copy_(head.weight[vocab.to(head.weight.device)])
        if head.bias is not None:
            sub.bias.copy_(head.bias[vocab.to(head.weight.device)])
    return sub.requires_grad_(False)


def save(
    path: str | Path,
    spec: SelfDraftSpec,
    blocks: nn.ModuleList,
    vocab: Tensor | None,
    target_hash: str,
    report: dict[str, float],
) -> None:
    tensors = {f"blocks.{k}": v.detach().float().contiguous().cpu() for k, v in blocks.state_dict().items()}
    if vocab is not None:
        tensors["vocab"] = vocab.to(torch.int64).cpu()
    meta = {
        "kind": KIND,
        "target_hash": target_hash,
        "layers": str(spec.layers),
        "block_layers": str(spec.block_layers),
        "init_from": str(spec.init_from),
        "report": json.dumps(report),
    }
    save_file(tensors, str(path), metadata=meta)


def load(
    path: str | Path, target: CausalLM, target_hash: str, field: str | None = None
) -> tuple[CausalLM, Tensor | None]:
    """(draft model, kept token ids or None) from a file saved by ``save``; refuses another target's draft."""
    meta = read_metadata(path, KIND, field)
    if meta["target_hash"] != target_hash:
        raise ConfigError(
            f"{path} is a draft for target {meta['target_hash'][:16]}, not for this target ({target_hash[:16]})", field
        )
    spec = SelfDraftSpec(int(meta["layers"]), int(meta["block_layers"]), int(meta["init_from"]))
    tensors = load_file(str(path))
    blocks = new_blocks(target, spec)
    blocks.load_state_dict({k.removeprefix("blocks."): v for k, v in tensors.items() if k.startswith("blocks.")})
    vocab = tensors.get("vocab")
    return assemble(target, spec, blocks.requires_grad_(False), vocab), vocab


__all__ = ["KIND", "SelfDraftSpec", "assemble", "load", "new_blocks", "save"]
