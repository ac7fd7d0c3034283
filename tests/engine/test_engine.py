"""The layered engine against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from moa import Ensemble
from moa.errors import ContextLengthError, DeadlineExceededError, InsufficientProposalsError
from proposers.openai_http import OpenAIProposer
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Raw, ScriptedServer

USER = [{"role": "user", "content": "What is 2 + 2?"}]


async def test_layer_calls_run_concurrently_and_peak_equals_agents(upstream: ScriptedServer) -> None:
    agents = [f"p{i}" for i in range(6)]
    for m in agents:
        upstream.script(m, latency_s=0.3)
    async with Ensemble.from_config(moa_config(upstream.base_url, [agents])) as ens:
        started = time.monotonic()
        await ens.acomplete(USER)
        elapsed = time.monotonic() - started
    assert upstream.peak_in_flight == 6
    starts = [r.started for r in upstream.requests if r.model in agents]
    assert max(starts) - min(starts) < 0.2  # all six went out together, not one after another
    assert elapsed < 6 * 0.3


async def test_aggregator_prompt_contains_every_proposal(upstream: ScriptedServer) -> None:
    layer = ["a", "b", "c"]
    for m in layer:
        upstream.script(m, answer=f"distinct proposal from {m}")
    upstream.script("agg", answer="final")
    async with Ensemble.from_config(moa_config(upstream.base_url, [layer])) as ens:
        result = await ens.acomplete(USER)
    assert result.choices[0].message.content == "final"
    (agg,) = upstream.for_model("agg")
    for m in layer:
        assert f"distinct proposal from {m}" in agg.prompt_text
    assert agg.messages[:-2] == USER and agg.messages[-1] == USER[-1]  # the conversation, references, question


async def test_later_layers_see_the_previous_layer(upstream: ScriptedServer) -> None:
    upstream.script("x1", answer="first-layer insight")
    upstream.script("x2", answer="second-layer refinement")
    upstream.script("agg", answer="done")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["x1"], ["x2"]])) as ens:
        result = await ens.acomplete(USER)
    (second,) = upstream.for_model("x2")
    assert "first-layer insight" in second.prompt_text
    (agg,) = upstream.for_model("agg")
    assert "second-layer refinement" in agg.prompt_text
    assert "first-layer insight" not in agg.prompt_text
    assert [(r.layer, r.role) for r in sorted(result.trace, key=lambda r: r.layer)] == [
        (1, "proposer"), (2, "proposer"), (3, "aggregator")
    ]  # fmt: skip


async def test_usage_is_summed_over_every_call(upstream: ScriptedServer) -> None:
    for m, text in [("a", "one two"), ("b", "one two three"), ("agg", "x y z w")]:
        upstream.script(m, answer=text)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a", "b"]])) as ens:
        result = await ens.acomplete(USER)
    assert result.usage.completion_tokens == 2 + 3 + 4
    assert result.usage.prompt_tokens == 30
    assert result.usage.total_tokens == 39
    assert len(result.trace) == 3 and all(r.outcome == "ok" for r in result.trace)


async def test_retries_then_succeeds_honouring_retry_after(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="ok after faults", faults=["429:0.3", "500", "reset"])
    upstream.script("agg", answer="final")
    cfg = moa_config(upstream.base_url, [["a"]], backend={"retry": {"max_retries": 3, "initial_backoff_s": 0.01}})
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    attempts = upstream.for_model("a")
    assert [r.outcome for r in attempts] == ["status 429", "status 500", "reset", "ok"]
    assert attempts[1].started - attempts[0].ended >= 0.28  # waited for Retry-After
    record = next(r for r in result.trace if r.agent == "a")
    assert record.retries == 3 and record.outcome == "ok"


async def test_gives_up_after_max_retries_and_does_not_retry_400(upstream: ScriptedServer) -> None:
    upstream.script("flaky", faults=["500"] * 5)
    upstream.script("bad", faults=["400"])
    upstream.script("good", answer="fine")
    upstream.script("agg", answer="final")
    cfg = moa_config(
        upstream.base_url, [["flaky", "bad", "good"]], backend={"retry": {"max_retries": 2, "initial_backoff_s": 0.01}}
    )
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    assert len(upstream.for_model("flaky")) == 3  # first try + 2 retries
    assert len(upstream.for_model("bad")) == 1
    by_agent = {r.agent: r for r in result.trace}
    assert by_agent["flaky"].outcome == "error" and "HTTP 500" in by_agent["flaky"].error
    assert by_agent["bad"].outcome == "error" and by_agent["bad"].retries == 0
    (agg,) = upstream.for_model("agg")
    assert "fine" in agg.prompt_text  # the layer went on with the survivor
    assert [p.agent for p in result.proposals] == ["good"]


async def test_too_few_survivors_fail_naming_agents(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=["401"])
    upstream.script("b", faults=["404"])
    upstream.script("c", answer="alone")
    cfg = moa_config(upstream.base_url, [["a", "b", "c"]], min_proposals=2)
    async with Ensemble.from_config(cfg) as ens:
        with pytest.raises(InsufficientProposalsError) as info:
            await ens.acomplete(USER)
    assert set(info.value.failures) == {"a", "b"}
    assert "HTTP 401" in info.value.failures["a"] and "HTTP 404" in info.value.failures["b"]
    assert "layer 1" in str(info.value)
    assert upstream.for_model("agg") == []


async def test_per_call_timeout_is_retried_then_recorded(upstream: ScriptedServer) -> None:
    upstream.script("slow", faults=["hang", "hang"])
    upstream.script("fast", answer="quick")
    upstream.script("agg", answer="final")
    cfg = moa_config(
        upstream.base_url, [["slow", "fast"]],
        backend={"timeout_s": 0.2, "retry": {"max_retries": 1, "initial_backoff_s": 0.01}},
    )  # fmt: skip
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    slow = next(r for r in result.trace if r.agent == "slow")
    assert slow.outcome == "error" and "no answer within 0.2 s" in slow.error and slow.retries == 1
    await asyncio.sleep(0.05)
    assert [r.outcome for r in upstream.for_model("slow")] == ["cancelled", "cancelled"]


async def test_request_deadline(upstream: ScriptedServer) -> None:
    upstream.script("a", latency_s=5)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await ens.acomplete(USER, deadline_s=0.3)
        assert time.monotonic() - started < 1.0
    await asyncio.sleep(0.05)
    assert upstream.for_model("a")[0].outcome == "cancelled"


async def test_cancelling_a_request_cancels_every_call_at_the_server(upstream: ScriptedServer) -> None:
    layer = ["a", "b", "c"]
    for m in layer:
        upstream.script(m, latency_s=10)
    async with Ensemble.from_config(moa_config(upstream.base_url, [layer])) as ens:
        task = asyncio.create_task(ens.acomplete(USER))
        while upstream.in_flight < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):
        if all(r.outcome == "cancelled" for r in upstream.requests):
            break
        await asyncio.sleep(0.01)
    assert [r.outcome for r in upstream.requests] == ["cancelled"] * 3


async def test_request_rate_stays_within_the_limit(upstream: ScriptedServer) -> None:
    agents = [f"p{i}" for i in range(8)]
    cfg = moa_config(upstream.base_url, [agents], backend={"rate_limit": {"rps": 10}})
    async with Ensemble.from_config(cfg) as ens:
        await asyncio.gather(*(ens.acomplete(USER) for _ in range(5)))  # 45 calls
    starts = sorted(r.started for r in upstream.requests)
    assert len(starts) == 45
    # the server sees 10 requests a second: one more in a window at most, from arrival jitter
    worst = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert worst <= 11
    assert 44 / (starts[-1] - starts[0]) <= 10 * 1.02


async def test_concurrency_limit_is_shared_by_requests(upstream: ScriptedServer) -> None:
    agents = [f"p{i}" for i in range(4)]
    for m in agents:
        upstream.script(m, latency_s=0.05)
    cfg = moa_config(upstream.base_url, [agents], backend={"rate_limit": {"concurrency": 3}})
    async with Ensemble.from_config(cfg) as ens:
        await asyncio.gather(*(ens.acomplete(USER) for _ in range(4)))
    assert upstream.peak_in_flight == 3


async def test_stream_yields_aggregator_tokens_and_final_usage(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="proposal")
    upstream.script("agg", answer="the streamed final answer")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        deltas = [d async for d in ens.astream(USER)]
    assert "".join(d.content for d in deltas) == "the streamed final answer"
    assert len([d for d in deltas if d.content]) == 4
    last = deltas[-1]
    assert last.finish_reason == "stop" and last.usage is not None
    assert last.usage.completion_tokens == 1 + 4
    assert [r.role for r in last.trace] == ["proposer", "aggregator"]
    assert upstream.for_model("agg")[0].body["stream"] is True


async def test_leaving_astream_early_closes_the_upstream_stream(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="p")
    upstream.script("agg", answer=" ".join(f"w{i}" for i in range(200)), latency_s=1.0)  # 0.1 s a word
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        stream = ens.astream(USER)
        async for delta in stream:
            if delta.content:
                break
        await stream.aclose()
        for _ in range(200):
            if upstream.for_model("agg")[0].outcome == "cancelled":
                break
            await asyncio.sleep(0.01)
    assert upstream.for_model("agg")[0].outcome == "cancelled"


def test_sync_complete(upstream_sync_url: str) -> None:
    with Ensemble.from_config(moa_config(upstream_sync_url, [["a", "b"]])) as ens:
        first = ens.complete(USER)
        second = ens.complete(USER, temperature=0.1)
    assert first.choices[0].message.content == "agg answer 0"
    assert second.object == "chat.completion" and len(second.trace) == 3


class _SlowStartProposer(OpenAIProposer):
    """The HTTP proposer with a local engine's slow start in front of it."""

    started = 0

    async def start(self) -> None:
        if not self.started:
            await asyncio.sleep(0.5)
        self.started += 1


async def test_a_slow_start_does_not_count_against_the_call_timeout(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="made it")
    cfg = moa_config(upstream.base_url, [["a"]], backend={"timeout_s": 0.3, "retry": {"max_retries": 0}})
    ens = Ensemble.from_config(cfg)
    proposer = _SlowStartProposer("up", ens.config.backends["up"])
    ens._engine.backends["up"].proposer = proposer
    async with ens:
        result = await ens.acomplete(USER)
    assert result.choices[0].message.content == "agg answer 0"
    assert proposer.started == 2  # awaited before each call, slow only the first time


async def test_a_slow_consumer_gets_deadline_exceeded_not_a_stray_cancellation(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="p")
    upstream.script("agg", answer=" ".join(f"w{i}" for i in range(100)), latency_s=0.5)  # 50 ms a word
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        stream = ens.astream(USER, deadline_s=0.6)
        pieces = 0
        with pytest.raises(DeadlineExceededError):
            async for _delta in stream:
                pieces += 1
                await asyncio.sleep(0.7)  # the deadline passes while we hold the first piece
        assert pieces == 1


async def test_time_the_consumer_holds_a_piece_is_not_a_stalled_stream(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="p")
    upstream.script("agg", answer="one two three")
    cfg = moa_config(upstream.base_url, [["a"]], backend={"timeout_s": 0.3, "retry": {"max_retries": 0}})
    async with Ensemble.from_config(cfg) as ens:
        text = ""
        async for delta in ens.astream(USER):
            text += delta.content
            await asyncio.sleep(0.4)  # longer than the per-call timeout, between pieces
    assert text == "one two three"


def _agent(cfg: dict, **fields: object) -> dict:
    """``cfg`` with ``fields`` set on its first agent."""
    cfg["layers"][0]["agents"][0].update(fields)
    return cfg


async def test_seeded_samples_on_a_backend_without_n_use_seed_plus_index(upstream: ScriptedServer) -> None:
    cfg = _agent(moa_config(upstream.base_url, [["s"]], backend={"supports_n": False}), n=3, seed=7)
    async with Ensemble.from_config(cfg) as ens:
        await ens.acomplete(USER)
        assert sorted(r.body["seed"] for r in upstream.for_model("s")) == [7, 8, 9]
        upstream.requests.clear()
    cfg = _agent(moa_config(upstream.base_url, [["s"]], backend={"supports_n": False}), n=2, seed=2**63 - 1)
    async with Ensemble.from_config(cfg) as ens:
        await ens.acomplete(USER)
    assert sorted(r.body["seed"] for r in upstream.for_model("s")) == [-(2**63), 2**63 - 1]  # int64 wraps


async def test_a_sample_keeps_its_call_name_when_another_fails(upstream: ScriptedServer) -> None:
    upstream.script("s", answer=lambda m, msgs, i: "a sample", faults=["400"])  # the first call to arrive fails
    backend = {"supports_n": False, "rate_limit": {"rps": 20}, "retry": {"max_retries": 0}}  # they arrive in order
    cfg = _agent(moa_config(upstream.base_url, [["s"]], backend=backend), n=3)
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    outcomes = {r.agent: r.outcome for r in result.trace if r.role == "proposer"}
    assert outcomes == {"s#1": "error", "s#2": "ok", "s#3": "ok"}
    assert [p.agent for p in result.proposals] == ["s#2", "s#3"]


async def test_fewer_generations_than_n_are_used_and_recorded(upstream: ScriptedServer) -> None:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": f"sample {i}"}, "finish_reason": "stop"}
        for i in range(2)
    ]
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "s", "choices": choices}
    upstream.script("s", faults=[Raw(json.dumps(body))])
    cfg = _agent(moa_config(upstream.base_url, [["s"]]), n=3)
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    assert upstream.for_model("s")[0].body["n"] == 3
    assert [(p.agent, p.text) for p in result.proposals] == [("s#1", "sample 0"), ("s#2", "sample 1")]
    record = next(r for r in result.trace if r.agent == "s")
    assert record.outcome == "ok" and record.n == 3 and record.generations == 2


async def test_a_prompt_too_long_for_every_proposer_is_a_context_length_error(upstream: ScriptedServer) -> None:
    too_long = {"error": {"message": "This model's maximum context length is 4096 tokens", "type": "x", "code": None}}
    for m in ("a", "b"):
        upstream.script(m, faults=[Raw(json.dumps(too_long), status=400)])
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a", "b"]])) as ens:
        with pytest.raises(ContextLengthError) as info:
            await ens.acomplete(USER)
    assert "maximum context length" in str(info.value)
    assert upstream.for_model("agg") == []


async def test_a_request_deadline_may_shorten_the_configured_one_never_lengthen_it(upstream: ScriptedServer) -> None:
    upstream.script("a", latency_s=5)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]], deadline_s=0.5)) as ens:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            await asyncio.wait_for(ens.acomplete(USER, deadline_s=30), timeout=3)
        assert time.monotonic() - started < 1.5
        assert info.value.deadline_s == 0.5
        with pytest.raises(DeadlineExceededError) as info:
            await asyncio.wait_for(ens.acomplete(USER, deadline_s=0.2), timeout=3)
        assert info.value.deadline_s == 0.2


@pytest.mark.parametrize("aggregator", ["synthesize", "self-moa-seq"])
async def test_aclose_releases_the_slot_and_the_connection_before_it_returns(
    upstream: ScriptedServer, aggregator: str
) -> None:
    upstream.script("a", answer="p")
    upstream.script("agg", answer=" ".join(f"w{i}" for i in range(200)), latency_s=1.0)  # 0.1 s a word
    cfg = moa_config(
        upstream.base_url, [["a"]], backend={"rate_limit": {"concurrency": 1}},
        aggregator_extra={"type": aggregator},
    )  # fmt: skip
    async with Ensemble.from_config(cfg) as ens:
        in_flight = ens._engine.backends["up"].limits.in_flight
        assert in_flight is not None
        stream = ens.astream(USER)
        async for delta in stream:
            if delta.content:
                break
        assert in_flight.locked()
        await stream.aclose()
        assert not in_flight.locked()  # released by aclose itself, not later by a garbage-collection hook
        (agg,) = upstream.for_model("agg")
        for _ in range(100):  # the server notices the closed connection on its next turn of the loop
            if agg.ended is not None:
                break
            await asyncio.sleep(0.01)
        assert agg.outcome == "cancelled"
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=3)  # the next call gets the slot at once
        assert result.choices[0].message.content.startswith("w0")
