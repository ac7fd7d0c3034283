"""Dropout & Vote and Dropout & Cluster against the scripted world of test_defenses_cluster: the gullible
aggregator follows the deceiver whenever it sees it, and the subsets that leave it out outvote the rest."""

from __future__ import annotations

import json

import pytest

from defenses.dropout import plan_subsets
from moa import Ensemble
from tests.support.deception_world import (
    CANBERRA,
    CAPITAL,
    HONEST,
    always,
    ask_capital,
    references_in,
    script_world,
    world_config,
)
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

canberra = always("B")


def test_plan_subsets() -> None:
    assert plan_subsets(4, None, 16, seed=0) == [(0,), (1,), (2,), (3,), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(plan_subsets(4, 4, 16, seed=0)) == 15  # every non-empty subset fits under the cap
    drawn = plan_subsets(6, None, 16, seed=1)  # 41 subsets of at most 3: 16 drawn
    assert len(set(drawn)) == 16 and all(1 <= len(s) <= 3 for s in drawn)
    assert drawn == plan_subsets(6, None, 16, seed=1) and drawn != plan_subsets(6, None, 16, seed=2)
    assert plan_subsets(1, None, 16, seed=0) == [(0,)]


async def test_dropout_vote_recovers_the_honest_answer(upstream: ScriptedServer) -> None:
    script_world(upstream, canberra)
    result = await ask_capital(world_config(upstream.base_url, {"type": "dropout-vote"}))
    assert result.text == CANBERRA
    calls = upstream.for_model("agg")
    assert len(calls) == 10 and sum("unquestionably" in c.prompt_text for c in calls) == 4
    (record,) = result.defense
    assert record.reason.startswith("option B won 6 of 10 votes (B: 6, A: 4)")
    assert (record.chosen, record.kept, record.dropped) == ("candidate 5 (h1, h2)", ["h1", "h2"], ["h3", "d"])
    assert [c.option for c in record.candidates] == ["B", "B", "B", "A", "B", "B", "A", "B", "A", "A"]
    assert (record.calls, record.extra_calls, result.extra_calls) == (10, 9, 9)  # the winner replaces the final call
    defense_calls = [r for r in result.trace if r.role == "defense"]
    assert len(defense_calls) == 10 and not any(r.role == "aggregator" for r in result.trace)
    assert defense_calls[0].layer == 1 and defense_calls[0].step.startswith("subset ")


async def test_dropout_cluster_recovers_with_the_medoid_or_by_reaggregating(upstream: ScriptedServer) -> None:
    script_world(upstream, canberra)
    result = await ask_capital(world_config(upstream.base_url, {"type": "dropout-cluster"}))
    assert result.text == CANBERRA
    (record,) = result.defense
    assert [len(c) for c in record.clusters] == [6, 4] and record.reason.startswith("the medoid of the larger")
    assert record.extra_calls == 9

    upstream.requests.clear()
    result = await ask_capital(world_config(upstream.base_url, {"type": "dropout-cluster", "reaggregate": True}))
    assert result.text == CANBERRA
    final = [r for r in result.trace if r.role == "aggregator"]
    assert len(final) == 1 and result.defense[0].extra_calls == 10
    assert references_in(upstream.for_model("agg")[-1].messages) == [CANBERRA] * 6


@pytest.mark.parametrize("defense", ["dropout-vote", "dropout-cluster"])
async def test_all_honest_a_unanimous_answer_stays(upstream: ScriptedServer, defense: str) -> None:
    script_world(upstream, canberra)
    assert (await ask_capital(world_config(upstream.base_url, None, deceived=False))).text == CANBERRA
    assert (await ask_capital(world_config(upstream.base_url, {"type": defense}, deceived=False))).text == CANBERRA


async def test_free_text_votes_for_the_medoid(upstream: ScriptedServer) -> None:
    for model in HONEST:
        upstream.script(model, answer=f"{model}: Paris has been the capital of France for centuries.")
    upstream.script("d", answer="Lyon became the capital of France after the 1982 reform.")
    upstream.script("agg", answer=lambda m, msgs, i: "The capital of France is " + (
        "Lyon." if any("Lyon" in r for r in references_in(msgs)) else "Paris."))  # fmt: skip
    async with Ensemble.from_config(
        moa_config(upstream.base_url, [[*HONEST, "d"]], defense={"type": "dropout-vote"})
    ) as ens:
        result = await ens.acomplete([{"role": "user", "content": "What is the capital of France?"}])
    assert result.text == "The capital of France is Paris."
    assert result.defense[0].reason.startswith("free text: the medoid of 10 candidates")


async def test_a_failed_subset_call_is_recorded_and_the_vote_goes_on(upstream: ScriptedServer) -> None:
    script_world(upstream, canberra)
    upstream.scripts["agg"].faults.append("400")
    result = await ask_capital(world_config(upstream.base_url, {"type": "dropout-vote"}))
    assert result.text == CANBERRA
    failed = [c for c in result.defense[0].candidates if c.error]
    assert len(failed) == 1 and "HTTP 400" in failed[0].error and failed[0].text is None
    assert result.defense[0].calls == 10


async def test_streaming_gives_the_voted_answer_and_the_record(upstream: ScriptedServer) -> None:
    script_world(upstream, canberra)
    async with Ensemble.from_config(world_config(upstream.base_url, {"type": "dropout-vote"})) as ens:
        deltas = [d async for d in ens.astream(CAPITAL, deception_target="A")]
    assert "".join(d.content for d in deltas) == CANBERRA
    assert deltas[-1].finish_reason == "stop" and deltas[-1].defense[0].chosen == "candidate 5 (h1, h2)"


async def test_a_blank_subset_aggregation_runs_again_and_never_becomes_the_answer(upstream: ScriptedServer) -> None:
    """A subset aggregation that wrote nothing (a fence cut away) is rerun with the next seed, as the final one is;
    blank every time, it falls back to the subset's first proposal rather than voting for a blank candidate."""
    script_world(upstream, canberra)
    seen: set[str] = set()
    honest = upstream.scripts["agg"].answer

    def blank_then_honest(model: str, messages: list[dict[str, str]], index: int) -> str:
        prompt = json.dumps(messages)  # each subset's prompt is its own: blank the first time it is asked
        if prompt not in seen:
            seen.add(prompt)
            return "<<reference 9 x>>"
        return honest(model, messages, index)

    upstream.script("agg", answer=blank_then_honest)
    result = await ask_capital(world_config(upstream.base_url, {"type": "dropout-vote"}, deceived=False))
    assert result.text == CANBERRA
    steps = [c.step or "" for c in result.trace if c.role == "defense"]
    reruns = [s for s in steps if s.endswith(", rerun 1")]
    assert len(reruns) >= 5 and len(steps) == 10 + len(reruns)  # subsets that share a prompt answer the second time
    assert {s.removesuffix(", rerun 1") for s in reruns} <= set(steps)
    assert all(c.text for c in result.defense[0].candidates)
