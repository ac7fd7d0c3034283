"""Quorum: a layer goes on once enough proposals are in and cancels its stragglers (a real server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from moa import Ensemble
from moa.config import load_config
from moa.errors import ConfigError
from tests.support.ensembles import moa_config, stream_text_and_trace
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "What is 2 + 2?"}]
SIX = [f"p{i}" for i in range(6)]


def _quorum_config(base_url: str, wait: dict[str, Any], **extra: Any) -> dict[str, Any]:
    cfg = moa_config(base_url, [SIX], **extra)
    cfg["layers"][0]["wait"] = wait
    return cfg


async def _outcome(upstream: ScriptedServer, model: str) -> str:
    """The server's outcome of ``model``'s one request, once it has one (a cancellation reaches it a little later)."""
    for _ in range(200):
        (rec,) = upstream.for_model(model)
        if rec.outcome != "running":
            return rec.outcome
        await asyncio.sleep(0.01)
    return "running"


async def test_quorum_cancels_the_straggler_and_the_server_sees_the_cancellation(upstream: ScriptedServer) -> None:
    for m in SIX:
        upstream.script(m, answer=f"proposal from {m}", latency_s=10 if m == "p5" else 0.05)
    upstream.script("agg", answer="final")
    async with Ensemble.from_config(_quorum_config(upstream.base_url, {"min": 5, "grace_s": 0.2})) as ens:
        started = time.monotonic()
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
        elapsed = time.monotonic() - started
    assert result.text == "final"
    assert elapsed < 3  # not the straggler's 10 s
    assert await _outcome(upstream, "p5") == "cancelled"
    (straggler,) = [r for r in result.trace if r.agent == "p5"]
    assert (straggler.outcome, straggler.reason) == ("cancelled", "straggler")
    assert all(r.reason is None and r.outcome == "ok" for r in result.trace if r.agent != "p5")
    (agg,) = upstream.for_model("agg")
    assert "proposal from p5" not in agg.prompt_text
    assert all(f"proposal from {m}" in agg.prompt_text for m in SIX[:5])
    dropped = [(p.agent, p.reason) for p in result.proposals if p.dropped]
    assert dropped == [("p5", "straggler")]
    assert sorted(p.agent for p in result.proposals if not p.dropped) == SIX[:5]


async def test_a_late_call_within_the_grace_is_kept(upstream: ScriptedServer) -> None:
    for m in SIX:
        upstream.script(m, answer=f"proposal from {m}", latency_s=0.4 if m == "p5" else 0.05)
    async with Ensemble.from_config(_quorum_config(upstream.base_url, {"min": 5, "grace_s": 3.0})) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert not [p for p in result.proposals if p.dropped]
    assert "proposal from p5" in upstream.for_model("agg")[0].prompt_text
    assert all(r.outcome == "ok" for r in result.trace)


async def test_the_grace_ends_the_wait_after_the_kth_proposal(upstream: ScriptedServer) -> None:
    for m in SIX:
        upstream.script(m, latency_s=10 if m in ("p4", "p5") else 0.05)
    async with Ensemble.from_config(_quorum_config(upstream.base_url, {"min": 4, "grace_s": 0.5})) as ens:
        started = time.monotonic()
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3  # it waited the grace, and no longer
    assert sorted(p.agent for p in result.proposals if p.dropped) == ["p4", "p5"]


async def test_grace_ratio_waits_in_proportion_to_the_kth_proposal(upstream: ScriptedServer) -> None:
    # the 4th proposal takes ~0.3 s; a ratio of 2 waits up to ~0.6 s more: p4 at ~0.5 s is kept, p5 is dropped
    for m in SIX:
        upstream.script(m, latency_s={"p4": 0.5, "p5": 10}.get(m, 0.3))
    cfg = _quorum_config(upstream.base_url, {"min": 4, "grace_ratio": 2.0})
    async with Ensemble.from_config(cfg) as ens:
        started = time.monotonic()
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
        elapsed = time.monotonic() - started
    assert [p.agent for p in result.proposals if p.dropped] == ["p5"]
    assert elapsed < 3


async def test_without_grace_the_layer_goes_on_at_the_kth_proposal(upstream: ScriptedServer) -> None:
    for m in SIX:
        upstream.script(m, latency_s=2 if m == "p5" else 0.05)
    async with Ensemble.from_config(_quorum_config(upstream.base_url, {"min": 5})) as ens:
        started = time.monotonic()
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert time.monotonic() - started < 1.5
    assert [p.agent for p in result.proposals if p.dropped] == ["p5"]


async def test_the_top_level_wait_is_every_layers_default(upstream: ScriptedServer) -> None:
    upstream.script("slow", latency_s=10)
    cfg = moa_config(upstream.base_url, [["a", "slow"], ["b", "slow2"]], wait={"min": 1})
    upstream.script("slow2", latency_s=10)
    async with Ensemble.from_config(cfg) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert sorted((p.layer, p.agent) for p in result.proposals if p.dropped) == [(1, "slow"), (2, "slow2")]
    assert "slow answer" not in upstream.for_model("b")[0].prompt_text


async def test_the_streamed_answer_also_goes_on_without_the_straggler(upstream: ScriptedServer) -> None:
    for m in SIX:
        upstream.script(m, latency_s=10 if m == "p5" else 0.05)
    upstream.script("agg", answer="streamed final")
    async with Ensemble.from_config(_quorum_config(upstream.base_url, {"min": 5})) as ens:
        text, trace = await stream_text_and_trace(ens, USER)
    assert text == "streamed final"
    assert [(r.agent, r.reason) for r in trace if r.outcome == "cancelled"] == [("p5", "straggler")]


async def test_a_cancelled_request_cancels_every_call_of_a_quorum_layer(upstream: ScriptedServer) -> None:
    for m in SIX:
        upstream.script(m, latency_s=10)
    async with Ensemble.from_config(_quorum_config(upstream.base_url, {"min": 5})) as ens:
        task = asyncio.create_task(ens.acomplete(USER))
        while upstream.in_flight < 6:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [await _outcome(upstream, m) for m in SIX] == ["cancelled"] * 6


@pytest.mark.parametrize(
    ("where", "wait", "layer_extra", "top_extra", "message"),
    [
        ("layers[0].wait.min", {"min": 7}, {}, {}, "must be <= 6"),
        ("layers[0].wait.min", {"min": 0}, {}, {}, "must be >= 1"),
        ("layers[0].wait.min", {"min": 2}, {"min_proposals": 3}, {}, "must be >= 3, the min_proposals"),
        ("layers[0].wait.min", {"min": 2}, {}, {"min_proposals": 4}, "must be >= 4, the min_proposals"),
        ("layers[0].wait.grace_ratio", {"min": 2, "grace_s": 1, "grace_ratio": 1}, {}, {}, "at most one"),
        ("layers[0].wait.grace_s", {"min": 2, "grace_s": -1}, {}, {}, "must be >= 0"),
        ("layers[0].wait.min", {"grace_s": 1}, {}, {}, "field required"),
    ],
)
def test_wait_is_validated_at_load_naming_the_field(
    where: str, wait: dict[str, Any], layer_extra: dict[str, Any], top_extra: dict[str, Any], message: str
) -> None:
    cfg = {**moa_config("http://127.0.0.1:1/v1", [SIX]), **top_extra}
    cfg["layers"][0].update(wait=wait, **layer_extra)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.path == where
    assert message in str(info.value)


def test_the_top_level_wait_is_checked_against_every_layer() -> None:
    cfg = moa_config("http://127.0.0.1:1/v1", [SIX, ["a", "b"]], wait={"min": 3})
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.path == "wait.min"
    assert "layers[1]" in str(info.value)
