"""Cancelling a torch backend's call stops its decoding: the worker thread is free for the next call at once,
for a single sequence and for a batch of n samples alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from moa.config import TorchBackendConfig
from moa.types import Message, SamplingParams
from proposers.embedded import resolve_model
from proposers.torch_local import TorchProposer
from tests.support.specdec_tiny import single_thread, tiny_llama  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

QUESTION = [Message("user", "Count to a million.")]
LONG = 5000  # new tokens: tens of seconds of decoding for the tiny model with SmolLM2's vocabulary


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the embedded SmolLM2 tokenizer (for its chat template), saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2-135m-instruct"))
    model = tiny_llama(0, vocab=len(tokenizer))
    model.config.max_position_embeddings = 1 << 16  # room for LONG new tokens
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("n", [1, 3])
async def test_cancelling_a_call_stops_its_decoding(tiny_folder: Path, n: int) -> None:
    proposer = TorchProposer("tiny", TorchBackendConfig(type="torch", model=str(tiny_folder), device="cpu"))
    try:
        await proposer.start()
        call = asyncio.ensure_future(
            proposer.generate(QUESTION, SamplingParams(temperature=1.0, max_tokens=LONG, seed=0), n)
        )
        await asyncio.sleep(0.5)
        assert not call.done()  # decoding for real
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # one worker thread serves the backend: the next call runs only once the cancelled one stopped
        short = proposer.generate(QUESTION, SamplingParams(temperature=1.0, max_tokens=2, seed=0), 1)
        result = await asyncio.wait_for(short, timeout=5)
        assert len(result.generations) == 1
    finally:
        await proposer.aclose()
