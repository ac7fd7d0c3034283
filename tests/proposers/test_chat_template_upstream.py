"""Remote backends behind strict chat templates: the rules declared per backend, or learned from the upstream's
refusal (a 400 like vLLM's server sends), one refusal per backend, model and constraint at most.

The scripted upstream renders every request through a test template (``tests/support/chat_templates.py``) with
transformers and answers what it refuses as vLLM's server does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from moa import Ensemble
from moa.errors import BadRequestError
from tests.support.chat_templates import GEMMA_LIKE, MISTRAL_LIKE, NO_TOOL, render
from tests.support.ensembles import moa_config, stream_text_and_trace
from tests.support.scripted_server import ScriptedServer

CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Another one, larger than ten."},
]
MODELS = ("a", "b", "c", "agg")


def script_all(upstream: ScriptedServer, template: str | None) -> None:
    for model in MODELS:
        upstream.script(model, answer=f"Thirteen, says {model}.", template=template)


def two_layers(upstream: ScriptedServer, **backend: Any) -> dict[str, Any]:
    config = moa_config(upstream.base_url, [["a", "b"], ["c"]], backend=backend)
    config["layers"][0]["agents"][0]["system_prompt"] = "Be brief."
    return config


def refusals(upstream: ScriptedServer) -> dict[str, int]:
    return {m: s.refusals for m, s in upstream.scripts.items()}


async def test_a_two_layer_moa_with_a_system_prompt_answers_through_a_gemma_template(upstream: ScriptedServer) -> None:
    """Before: every call failed, 'layer 1: only 0 of the agents answered (... HTTP 400: System role not
    supported)'. Now each call the template refused is sent again fitted to it, and the answer is the one the same
    ensemble gives on an upstream without constraints."""
    script_all(upstream, None)
    async with Ensemble.from_config(two_layers(upstream)) as ens:
        free = await ens.acomplete(CONVERSATION)
    upstream.reset()
    script_all(upstream, GEMMA_LIKE)
    async with Ensemble.from_config(two_layers(upstream)) as ens:
        result = await ens.acomplete(CONVERSATION)
    assert result.text == free.text
    assert [c.outcome for c in result.trace] == ["ok"] * 4
    for request in upstream.requests:  # what reached the template in the end it rendered
        if request.outcome == "ok":
            render(GEMMA_LIKE, request.messages)
    learned = [c for c in result.trace if c.template and c.template.startswith("retried")]
    assert learned, "no trace record says the layout was learned"
    assert all(r <= 2 for r in refusals(upstream).values())  # system, then alternation at most


async def test_a_learned_rule_is_kept_for_the_backend_and_model(upstream: ScriptedServer) -> None:
    script_all(upstream, GEMMA_LIKE)
    async with Ensemble.from_config(two_layers(upstream)) as ens:
        for _ in range(3):
            await ens.acomplete(CONVERSATION)
        first = refusals(upstream)
        await ens.acomplete(CONVERSATION)
        assert refusals(upstream) == first  # nothing more to learn: no 400 at all
    assert all(r <= 2 for r in first.values())


async def test_many_concurrent_requests_cause_one_refusal_per_model_and_constraint(
    upstream: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No 400 storm: 40 requests at once against an upstream nothing is known of. The first call of each model
    that would put a constraint to it goes alone; the others wait for its answer (one round trip, once)."""
    script_all(upstream, GEMMA_LIKE)
    for model in MODELS:
        upstream.scripts[model].latency_s = 0.05
    with caplog.at_level(logging.WARNING, logger="proposers.template_learning"):
        async with Ensemble.from_config(two_layers(upstream)) as ens:
            results = await asyncio.gather(*(ens.acomplete(CONVERSATION) for _ in range(40)))
    assert all(r.text for r in results)
    counts = refusals(upstream)
    assert all(count <= 2 for count in counts.values()), counts  # Gemma's two constraints: system, alternation
    assert sum(counts.values()) >= 1
    learned = [r for r in caplog.records if "refused a layout" in r.getMessage()]
    assert len(learned) == sum(counts.values())  # logged once per refusal, i.e. per model and constraint


async def test_a_streamed_answer_learns_the_same_way(upstream: ScriptedServer) -> None:
    script_all(upstream, GEMMA_LIKE)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        text, trace = await stream_text_and_trace(ens, CONVERSATION)
    assert text == "Thirteen, says agg."
    assert [c.outcome for c in trace] == ["ok", "ok"]
    assert trace[-1].template is not None and trace[-1].template.startswith("retried")


async def test_declared_rules_are_followed_from_the_first_call(upstream: ScriptedServer) -> None:
    script_all(upstream, GEMMA_LIKE)
    config = two_layers(upstream, chat_template={"system": "fold", "alternate": True})
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(CONVERSATION)
    assert refusals(upstream) == dict.fromkeys(MODELS, 0)
    notes = {(c.layer, c.agent): c.template for c in result.trace}
    assert notes[(1, "a")] == notes[(1, "b")] == "system folded into a user turn"
    assert notes[(2, "c")] == notes[(3, "aggregator")] == "system folded into a user turn; consecutive turns merged"
    (agg,) = upstream.for_model("agg")
    assert [m["role"] for m in agg.messages] == ["user", "assistant", "user"]
    assert agg.messages[0]["content"].startswith("[system message]\nYou are a careful assistant.\n")


async def test_a_mistral_template_keeps_the_leading_system_turn(upstream: ScriptedServer) -> None:
    script_all(upstream, MISTRAL_LIKE)
    async with Ensemble.from_config(two_layers(upstream)) as ens:
        await ens.acomplete(CONVERSATION)  # learns one constraint (the call retried in the strict layout)
        await ens.acomplete(CONVERSATION)  # learns the other
        learned = refusals(upstream)
        upstream.requests.clear()
        await ens.acomplete(CONVERSATION)
    assert refusals(upstream) == learned and learned["agg"] <= 2  # a system turn past the first, alternation
    (agg,) = upstream.for_model("agg")
    assert agg.messages[0] == CONVERSATION[0]  # the template takes a system turn first: it stays one
    assert [m["role"] for m in agg.messages] == ["system", "user", "assistant", "user"]


async def test_a_layout_no_template_can_fix_is_a_clear_error(upstream: ScriptedServer) -> None:
    """A 400 that is not a template refusal is not retried with another layout."""
    upstream.script("a", faults=["400"])
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        proposer = ens.backends["up"].proposer
        with pytest.raises(BadRequestError, match="scripted 400"):
            from moa.types import Message, SamplingParams

            await proposer.generate([Message("user", "hi")], SamplingParams(), model="a")
    assert len(upstream.for_model("a")) == 1


async def test_the_tool_rule_is_declared_like_the_others(upstream: ScriptedServer) -> None:
    """A template that refuses the tool role gets tool results as user turns (moa's edges refuse tool history
    today; a backend fits a tool turn all the same)."""
    from moa.types import Message, SamplingParams

    upstream.script("a", template=NO_TOOL)
    config = moa_config(upstream.base_url, [["a"]], backend={"chat_template": {"tool": False}})
    async with Ensemble.from_config(config) as ens:
        proposer = ens.backends["up"].proposer
        messages = [Message("user", "Weather?"), Message("assistant", "Looking."), Message("tool", "Sunny, 21 C")]
        result = await proposer.generate([*messages, Message("user", "So?")], SamplingParams(), model="a")
    assert result.template == "tool result folded into a user turn"
    (sent,) = upstream.for_model("a")
    assert sent.messages[2] == {"role": "user", "content": "[tool result]\nSunny, 21 C\n[end of tool result]"}
