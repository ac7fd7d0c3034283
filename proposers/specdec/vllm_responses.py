"""The target's responses sampled with vLLM (CPU or CUDA): training data for drafts and heads, fast.

vLLM batches hundreds of sequences with paged attention, so on a CPU it samples an order of magnitude
more tokens per second than the torch sampler (``data.target_responses``). Prompts go in as token ids
made with the target's chat template (``encode_chat``), so a torch model and vLLM see the same prompt.
vLLM may compute in bfloat16 where the torch target is fp32: responses then follow a near-identical
distribution, which is all training data needs (the draft's teacher is the torch target itself).
"""

from __future__ import annotations

from typing import Any

from moa.config import VLLMBackendConfig
from proposers.specdec.data import Sample, encode_chat


def vllm_responses(
    model_path: str,
    tokenizer: Any,
    prompts: list[str],
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    stop_ids: frozenset[int],
    max_model_len: int = 2048,
) -> list[Sample]:
    """``samples`` responses of the model at ``model_path`` to each prompt (one, greedy, at temperature 0),
    in prompt order; prompts longer than ``max_model_len - max_new_tokens`` tokens are dropped. The engine
    gets the ``vllm`` backend's per-device settings; ``seed`` is the engine's."""
    from proposers.vllm_args import engine_kwargs  # first: it quiets vLLM's log  # isort: skip

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    config = VLLMBackendConfig(type="vllm", model=model_path, max_model_len=max_model_len, seed=seed)
    llm = LLM(**engine_kwargs("sample", config, model_path))
    params = SamplingParams(
        n=1 if temperature == 0 else samples,
        temperature=temperature,
        top_p=1.0,
        max_tokens=max_new_tokens,
        stop_token_ids=sorted(stop_ids),
        skip_special_tokens=False,
    )
    encoded = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    encoded = [ids for ids in encoded if len(ids) + max_new_tokens <= max_model_len]
    try:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()  # its engine process, now rather than whenever ``llm`` is collected
    out = []
    for ids, result in zip(encoded, outputs, strict=True):
        for completion in result.outputs:
            out.append(Sample([*ids, *completion.token_ids], len(ids)))
    return out


__all__ = ["vllm_responses"]
