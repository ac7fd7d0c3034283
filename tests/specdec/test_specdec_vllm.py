"""``moa specdec sample``'s vLLM engine on this machine's CPU and the embedded SmolLM2-135M-Instruct: the
responses it writes are the torch target's own (same chat template, same token ids), so a draft distilled on
them learns the target it will serve."""

from __future__ import annotations

import pytest
import torch

from proposers.specdec.data import encode_chat, stop_ids
from proposers.specdec.loading import load_target, model_folder

pytestmark = pytest.mark.vllm

MODEL = "embedded:smollm2-135m-instruct"
PROMPTS = ["Name three primary colours.", "What is the capital of France? Answer in one sentence."]


def test_vllm_greedy_responses_are_the_torch_targets_own() -> None:
    from proposers.specdec.vllm_responses import vllm_responses

    model, tokenizer, _ = load_target(MODEL, torch.device("cpu"), torch.float32)
    stop = stop_ids(model, tokenizer)
    assert stop_ids(None, tokenizer, model_folder(MODEL)) == stop  # what the sample command passes without torch
    samples = vllm_responses(str(model_folder(MODEL)), tokenizer, PROMPTS, samples=3, max_new_tokens=24,
                             temperature=0.0, seed=0, stop_ids=stop, max_model_len=512)  # fmt: skip
    assert len(samples) == len(PROMPTS)  # greedy: one response each, whatever ``samples`` says
    agree = total = 0
    for prompt, s in zip(PROMPTS, samples, strict=True):
        assert s.tokens[: s.start] == encode_chat(tokenizer, [{"role": "user", "content": prompt}])
        assert 0 < len(s.tokens) - s.start <= 24
        with torch.no_grad():
            argmax = model(input_ids=torch.tensor([s.tokens])).logits[0, s.start - 1 : -1].argmax(-1)
        agree += int((argmax == torch.tensor(s.tokens[s.start :])).sum())
        total += len(s.tokens) - s.start
    # vLLM runs bfloat16 on this CPU, the target fp32: near ties may flip, a misaligned prompt would not agree
    assert agree / total >= 0.9
