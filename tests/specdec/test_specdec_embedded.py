"""Speculative decoding on the embedded SmolLM2-135M: greedy output equals the target's own for every policy,
and the torch proposer serves it through a config (generate, stream, n samples, stop strings, errors)."""

from __future__ import annotations

import pytest
import torch

from moa import Ensemble
from moa.config import SpeculativeConfig, TorchBackendConfig
from moa.errors import ConfigError, ContextLengthError
from moa.prompts import SYNTHESIZE_INSTRUCTIONS, with_references
from moa.types import Message, SamplingParams
from proposers.specdec import head as head_file
from proposers.specdec import self_draft
from proposers.specdec.decode import run
from proposers.specdec.head import AcceptanceHead
from proposers.specdec.identity import model_hash
from proposers.specdec.loading import load_target
from proposers.specdec.runner import Runner
from proposers.specdec.self_draft import SelfDraftSpec, assemble, new_blocks
from proposers.torch_local import TorchProposer
from tests.support.specdec_tiny import single_thread  # noqa: F401 (a fixture)

EMBEDDED = "embedded:smollm2-135m-instruct"
QUESTION = [Message("user", "Name three primary colors and say one thing about each.")]
REFERENCES = [
    "The three primary colors are red, yellow and blue. Red is warm, yellow is bright and blue is calm.",
    "Red, yellow and blue are the primary colors: red is the color of fire, yellow of the sun, blue of the sea.",
]
# an aggregator's prompt in the layout the embedded recipes use (SmolLM2-135M copies the fences when they
# come after the question: see moa/prompts.py)
MESSAGES = with_references(QUESTION, REFERENCES, SYNTHESIZE_INSTRUCTIONS, at="system")
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
SPEC = SelfDraftSpec(layers=4)
VOCAB = torch.arange(4096)  # the draft's head covers the 4096 lowest ids (BPE's most common merges)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def loaded():
    return load_target(EMBEDDED, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def plain(loaded) -> list[int]:
    model, tokenizer, _ = loaded
    runner = Runner("t", model, tokenizer)
    tokens, _ = run(runner.tokens(runner.encode(MESSAGES), GREEDY))
    return tokens


@pytest.fixture(scope="module")
def untrained_draft(loaded):
    """A self-draft whose block is not trained: a poor draft, which is what exercises rejection."""
    model = loaded[0]
    torch.manual_seed(0)
    blocks = new_blocks(model, SPEC).requires_grad_(False)
    return blocks, assemble(model, SPEC, blocks, VOCAB), AcceptanceHead(model.config.hidden_size, blocks=2).eval()


@pytest.mark.parametrize("policy", ["fixed", "heuristic", "confidence", "specdec++", "reference"])
def test_greedy_output_is_the_targets_own(loaded, plain, untrained_draft, policy: str) -> None:
    model, tokenizer, _ = loaded
    _, draft, head = untrained_draft
    files = {} if policy == "reference" else {"draft": "in-memory.safetensors", "head": "in-memory.safetensors"}
    spec = SpeculativeConfig(policy=policy, k=3, max_k=6, **files)
    runner = Runner("t", model, tokenizer, spec, draft, VOCAB, head, head_threshold=0.5)
    tokens, stats = run(runner.tokens(runner.encode(MESSAGES), GREEDY))
    assert tokens == plain
    assert stats.drafted > 0
    if policy == "reference":  # the answer copies the references, so lookups are kept
        assert stats.target_forwards < len(tokens)


async def test_proposer_with_specdec_files_matches_plain_text(loaded, plain, untrained_draft, tmp_path) -> None:
    model, tokenizer, target_hash = loaded
    blocks, _, head = untrained_draft
    draft_file, head_path = tmp_path / "draft.safetensors", tmp_path / "head.safetensors"
    self_draft.save(draft_file, SPEC, blocks, VOCAB, target_hash, {})
    head_file.save(
        head_path, head, target_hash=target_hash, draft_hash=model_hash(draft_file), threshold=0.5, report={}
    )
    speculative = {"policy": "specdec++", "draft": str(draft_file), "head": str(head_path), "max_k": 6}
    proposer = TorchProposer(
        "agg", TorchBackendConfig(type="torch", model=EMBEDDED, device="cpu", speculative=speculative)
    )
    try:
        result = await proposer.generate(MESSAGES, GREEDY)
        assert result.generations[0].text == tokenizer.decode(plain, skip_special_tokens=True)
        assert result.usage.completion_tokens == len(plain)
    finally:
        await proposer.aclose()


@pytest.fixture(scope="module")
async def reference_proposer():
    proposer = TorchProposer(
        "agg", TorchBackendConfig(type="torch", model=EMBEDDED, device="cpu", speculative={"policy": "reference"})
    )
    yield proposer
    await proposer.aclose()


@pytest.fixture(scope="module")
async def whole(reference_proposer):
    return (await reference_proposer.generate(MESSAGES, GREEDY)).generations[0]


async def test_stream_gives_the_generated_text(reference_proposer, whole) -> None:
    deltas = [d async for d in reference_proposer.stream(MESSAGES, GREEDY)]
    assert "".join(d.content for d in deltas) == whole.text
    assert deltas[-1].finish_reason == whole.finish_reason and deltas[-1].usage.completion_tokens > 0
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_stop_strings_cut_the_text(reference_proposer, whole) -> None:
    word = whole.text.split()[3]
    params = SamplingParams(temperature=0.0, max_tokens=16, stop=(word,))
    cut = (await reference_proposer.generate(MESSAGES, params)).generations[0]
    streamed = "".join([d.content async for d in reference_proposer.stream(MESSAGES, params)])
    assert cut.text == streamed == whole.text[: whole.text.index(word)] and cut.finish_reason == "stop"


async def test_n_samples_and_seeds(reference_proposer) -> None:
    params = SamplingParams(temperature=1.0, max_tokens=8, seed=7)
    first = await reference_proposer.generate(QUESTION, params, n=3)
    again = await reference_proposer.generate(QUESTION, params, n=3)
    assert len(first.generations) == 3 and first.generations == again.generations
    assert len({g.text for g in first.generations}) > 1  # three samples, not one copied
    assert first.usage.completion_tokens <= 24 and first.usage.prompt_tokens > 0


async def test_bad_input_is_reported(reference_proposer, tmp_path) -> None:
    with pytest.raises(ContextLengthError):
        await reference_proposer.generate([Message("user", "word " * 9000)], GREEDY)
    missing = {"policy": "fixed", "draft": str(tmp_path / "missing.safetensors")}
    with pytest.raises(ConfigError) as err:
        TorchProposer("x", TorchBackendConfig(type="torch", model=EMBEDDED, speculative=missing))
    assert err.value.path == "backends.x.speculative.draft"


async def test_self_moa_with_a_speculative_torch_aggregator() -> None:
    local = {"type": "torch", "model": EMBEDDED, "device": "cpu", "speculative": {"policy": "reference"}}
    config = {
        "name": "torch-self-moa",
        "backends": {"local": local},
        "layers": [{"agents": [{"backend": "local", "n": 2, "temperature": 0.7, "max_tokens": 24}]}],
        "aggregator": {"backend": "local", "temperature": 0.0, "max_tokens": 24},
    }
    async with Ensemble.from_config(config) as ensemble:
        await ensemble.astart()
        result = await ensemble.acomplete([{"role": "user", "content": "Why is the sky blue?"}])
    assert [(c.role, c.n, c.outcome) for c in result.trace if c.step is None] == [
        ("proposer", 2, "ok"),
        ("aggregator", 1, "ok"),
    ]
    assert result.text.strip() and len(result.proposals) == 2
    assert result.usage.completion_tokens == sum(c.completion_tokens for c in result.trace)


PENALIZED = SamplingParams(temperature=0.0, max_tokens=32, repetition_penalty=1.1)


def test_repetition_penalty_is_applied_alike_plain_batched_and_speculative(loaded, plain) -> None:
    """Greedy with vLLM's repetition_penalty: plain decoding, a batch of samples and reference drafting give the
    same tokens (the drafting is still lossless: each verified position is penalized by the tokens before it),
    and the penalty changes the answer. Before: the torch backend refused the field."""
    model, tokenizer, _ = loaded
    prompt = Runner("t", model, tokenizer).encode(MESSAGES)
    penalized, _ = run(Runner("t", model, tokenizer).tokens(prompt, PENALIZED))
    drafting = Runner("t", model, tokenizer, SpeculativeConfig(policy="reference", max_k=6, min_match=2))
    drafted, stats = run(drafting.tokens(prompt, PENALIZED))
    rows = Runner("t", model, tokenizer).samples(prompt, PENALIZED, n=2)
    assert drafted == penalized and rows == [penalized, penalized]
    assert stats.drafted > 0
    assert penalized != plain[: len(penalized)]  # the references' words are in the prompt: copying them costs
    assert (
        TorchBackendConfig(type="torch", model=EMBEDDED).field_support().wire(PENALIZED, "t")["repetition_penalty"]
        == 1.1
    )


async def test_int8_quantization_loads_the_linear_layers_as_int8_and_answers() -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    config = TorchBackendConfig(type="torch", model=EMBEDDED, device="cpu", quantization="int8")
    runner = Runner.load("q", config)
    layers = [m for m in runner.model.modules() if isinstance(m, DynamicInt8Linear)]
    assert len(layers) >= 7 * runner.model.config.num_hidden_layers  # q, k, v, o, gate, up, down in every block
    assert not any(type(m) is torch.nn.Linear for m in runner.model.modules())
    tokens, _ = run(runner.tokens(runner.encode(QUESTION), GREEDY))
    assert runner.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    with pytest.raises(Exception) as info:
        TorchBackendConfig(type="torch", model=EMBEDDED, device="cuda", quantization="int8")
    assert "quantization" in str(info.value) and "CPU" in str(info.value)


async def test_torch_backends_start_together() -> None:
    """``moa serve`` starts every backend at once: torch backends loading in worker threads of their own raced in
    transformers ("Cannot copy out of meta tensor") before loads were serialized. Without the lock three backends
    failed in 3 of 4 rounds; two rounds here."""
    backend = {"type": "torch", "model": EMBEDDED, "device": "cpu"}
    cfg = {
        "name": "three-torch",
        "backends": {
            "a": backend,
            "b": {**backend, "speculative": {"policy": "reference"}},
            "c": {**backend, "quantization": "int8"},
        },
        "layers": [
            {"agents": [{"backend": "a", "max_tokens": 4, "temperature": 0.0}, {"backend": "c", "max_tokens": 4}]}
        ],
        "aggregator": {"backend": "b", "max_tokens": 4, "temperature": 0.0},
    }
    for _ in range(2):
        async with Ensemble.from_config(cfg) as ens:
            await ens.astart()
            result = await ens.acomplete([{"role": "user", "content": "Hi"}])
        assert [c.outcome for c in result.trace] == ["ok", "ok", "ok"]
