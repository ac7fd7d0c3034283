"""In-process vLLM behind a Gemma-like chat template (``chat_template:`` override on the embedded model).

The engine finds the template's rules by rendering probes through it once, and every prompt of a 2-layer MoA with
system turns reaches the model fitted to them. One engine for the module (it is its own: the override is part of
the backend's config).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moa import Ensemble
from moa.types import Message, SamplingParams
from proposers.chat_template import TemplateRules
from tests.support.chat_templates import GEMMA_LIKE
from tests.support.ensembles import stream_text_and_trace

pytestmark = pytest.mark.vllm

_NOTE = "The lamp on the north pier failed at dusk and was mended by nine; the ferry left at seven. "
BLOCK = 128
CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant. " + _NOTE * 12},
    {"role": "user", "content": "What failed at dusk?"},
    {"role": "assistant", "content": "The lamp on the north pier."},
    {"role": "user", "content": "When was it mended?"},
]


def config(template: Path) -> dict[str, Any]:
    backend = {"type": "vllm", "model": "embedded:smollm2-135m-instruct", "max_model_len": 2048,
               "chat_template": str(template)}  # fmt: skip
    agent = {"backend": "local", "max_tokens": 8, "temperature": 0.0, "system_prompt": "Be brief."}
    return {
        "name": "gemma-like-local",
        "backends": {"local": backend},
        "layers": [{"agents": [agent]}, {"agents": [{**agent, "name": "L2"}]}],
        "aggregator": {"backend": "local", "max_tokens": 8, "temperature": 0.0},
    }


@pytest.fixture(scope="module")
async def ensemble(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Ensemble]:
    template = tmp_path_factory.mktemp("templates") / "gemma-like.jinja"
    template.write_text(GEMMA_LIKE)
    async with Ensemble.from_config(config(template)) as ens:
        await ens.astart()
        yield ens


async def test_a_two_layer_moa_with_system_turns_answers_through_the_template(ensemble: Ensemble) -> None:
    """Before: the template raised inside moa ('the chat template rejected the messages: System role not
    supported') for every call."""
    result = await ensemble.acomplete(CONVERSATION)
    assert [c.outcome for c in result.trace] == ["ok", "ok", "ok"]
    assert result.trace[0].template == "system folded into a user turn"
    assert (
        result.trace[1].template
        == result.trace[2].template
        == ("system folded into a user turn; consecutive turns merged")
    )
    proposer: Any = ensemble.backends["local"].proposer
    assert proposer.template_rules == TemplateRules("fold", alternate=True, tool=False)  # probed, not named


async def test_the_conversation_stays_a_cached_prefix_under_the_template(ensemble: Ensemble) -> None:
    """Layer 2 extends the conversation's last user turn: vLLM finds the conversation's blocks in its prefix
    cache."""
    fresh = [{**CONVERSATION[0], "content": "A new harbour. " + CONVERSATION[0]["content"]}, *CONVERSATION[1:]]
    result = await ensemble.acomplete(fresh)
    first, second, _ = result.trace  # both agents have the system prompt "Be brief." (the aggregator has none)
    assert first.prompt_tokens > 256
    # layer 1 prefilled the conversation; layer 2 extends it (vLLM caches whole blocks: BLOCK tokens on CPU)
    assert second.cached_prompt_tokens >= first.prompt_tokens - BLOCK, second


async def test_a_streamed_answer_and_a_direct_call_fit_the_template(ensemble: Ensemble) -> None:
    text, trace = await stream_text_and_trace(ensemble, CONVERSATION, timeout=120)
    assert [c.outcome for c in trace] == ["ok", "ok", "ok"] and trace[-1].template is not None
    proposer: Any = ensemble.backends["local"].proposer
    messages = [Message("system", "Be brief."), Message("user", "Hi"), Message("user", "Again")]
    result = await proposer.generate(messages, SamplingParams(max_tokens=4, temperature=0.0))
    assert result.template == "system folded into a user turn; consecutive turns merged"
