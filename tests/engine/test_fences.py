"""No prompt markup reaches an answer: calls that read references stop at the fences, and moa cuts there too;
a seeded request seeds every call, so it repeats."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from moa import Ensemble
from moa.prompts import REFERENCE_STOPS
from moa.stops import StopFilter, with_stops
from moa.types import SamplingParams
from tests.support.ensembles import moa_config, stream_text_and_trace
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "hi"}]
LEAKY = "Hello! How can I help?\n\n<<end of reference 7 abc>>\n\n<<reference 8 abc>>\nmore invented text"


async def test_a_fence_the_aggregator_writes_never_reaches_the_answer(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="Hi there.")
    upstream.script("agg", answer=LEAKY)  # the scripted upstream ignores stop, as a backend may
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        whole = await ens.acomplete(USER)
        streamed, _ = await stream_text_and_trace(ens, USER)
    assert whole.text == "Hello! How can I help?"
    assert whole.choices[0].finish_reason == "stop"
    assert streamed == "Hello! How can I help?"  # the stream split "<<end", " of", ... over pieces


def blank_first(blanks: int, blank: str) -> Callable[[str, list[dict[str, str]], int], str]:
    """An aggregator that answers ``blank`` on its first ``blanks`` calls, then answers."""
    calls = itertools.count()
    return lambda model, messages, index: blank if next(calls) < blanks else "Red."


@pytest.mark.parametrize("blank", ["  <<reference 9 x>>", "\n\n "])  # a fence first; nothing but blank space
@pytest.mark.parametrize("blanks", [1, 2])
async def test_an_aggregation_that_wrote_nothing_runs_again(upstream: ScriptedServer, blanks: int, blank: str) -> None:
    upstream.script("a", answer="Red, I think.")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        upstream.script("agg", answer=blank_first(blanks, blank))
        whole = await ens.acomplete(USER, seed=5)
        upstream.script("agg", answer=blank_first(blanks, blank))
        streamed, trace = await stream_text_and_trace(ens, USER)
    assert whole.text == "Red." and streamed == "Red."  # no blank space of the blank runs reaches the stream
    for calls in (whole.trace, trace):
        assert [(c.role, c.step) for c in calls if c.role == "aggregator"] == [("aggregator", None)] + [
            ("aggregator", f"rerun {k}") for k in range(1, blanks + 1)
        ]
    seeds = [r.body.get("seed") for r in upstream.for_model("agg")][: blanks + 1]
    assert seeds == [5 + k for k in range(blanks + 1)]  # a seeded request's reruns take the next seeds


async def test_an_aggregation_blank_every_time_answers_with_the_first_proposal(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="Red, I think.")
    upstream.script("b", answer="Blue.")
    upstream.script("agg", answer="<<reference 9 x>>")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a", "b"]])) as ens:
        whole = await ens.acomplete(USER)
        streamed, _ = await stream_text_and_trace(ens, USER)
    assert whole.text == "Red, I think." and streamed == "Red, I think."
    assert whole.choices[0].finish_reason == "stop"
    assert len(upstream.for_model("agg")) == 2 * 3  # the first run and two reruns, whole and streamed


async def test_stop_strings_reach_every_call_that_reads_references(upstream: ScriptedServer) -> None:
    upstream.script("l2", answer="Better. <<reference 3 x>> junk")
    config = moa_config(upstream.base_url, [["a", "b"], ["l2"]])
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(USER, stop="END")
    for model in ("l2", "agg"):
        (call,) = upstream.for_model(model)
        assert set(REFERENCE_STOPS) <= set(call.body["stop"]), model
    assert "END" in upstream.for_model("agg")[0].body["stop"]  # the client's own stays, beside the fences
    assert "stop" not in upstream.for_model("a")[0].body  # layer 1 reads no references
    assert [p.text for p in result.proposals if p.agent == "l2"] == ["Better."]


async def test_every_self_moa_seq_step_gets_the_stops(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer="Step answer.\n<<end of reference 1")  # cut short by the token cap
    config = moa_config(upstream.base_url, [["a", "b", "c", "d", "e"]],
                        aggregator_extra={"type": "self-moa-seq", "window": 2})  # fmt: skip
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(USER)
    steps = upstream.for_model("agg")
    assert len(steps) == 4
    assert all(set(REFERENCE_STOPS) <= set(s.body["stop"]) for s in steps)
    assert result.text == "Step answer."  # the dangling fence was dropped


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["Hi", " <", "<end", " of", " reference 2 t>>", " x"], "Hi"),
        (["a < b", " and", " c"], "a < b and c"),  # a lone "<" goes out once the next piece shows it is text
        (["done\n\n<<", "refer"], "done"),  # cut short at the end: dropped
        (["ends with <"], "ends with <"),
    ],
)
def test_the_filter_holds_back_what_may_start_a_fence(pieces: list[str], expected: str) -> None:
    f = StopFilter((), REFERENCE_STOPS)
    out = [f.push(p) for p in pieces] + [f.finish()]
    assert "".join(out) == expected
    assert not any("<<" in piece for piece in out)


def test_wire_stops_keep_the_callers_and_openais_limit() -> None:
    assert with_stops(SamplingParams(stop=("a", "b", "c")), REFERENCE_STOPS).stop == ("a", "b", "c", "<<reference")
    assert with_stops(SamplingParams(), REFERENCE_STOPS).stop == REFERENCE_STOPS


async def test_a_seeded_request_seeds_every_call(upstream: ScriptedServer) -> None:
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a", "b"]])) as ens:
        await ens.acomplete(USER, seed=7)
        first = {r.model: r.body.get("seed") for r in upstream.requests}
        upstream.requests.clear()
        await ens.acomplete(USER, seed=7)
        again = {r.model: r.body.get("seed") for r in upstream.requests}
        upstream.requests.clear()
        await ens.acomplete(USER)
        unseeded = {r.model: r.body.get("seed") for r in upstream.requests}
    assert first == again
    assert first["agg"] == 7 and None not in first.values()
    assert first["a"] != first["b"]  # each agent its own seed
    assert set(unseeded.values()) == {None}  # a remote upstream is sent no seed the client did not ask for


async def test_a_defenses_subset_aggregations_get_the_stops(upstream: ScriptedServer) -> None:
    from tests.support.deception_world import always, ask_capital, script_world, world_config

    script_world(upstream, always("B"))
    await ask_capital(world_config(upstream.base_url, {"type": "dropout-vote"}))
    calls = upstream.for_model("agg")
    assert len(calls) == 10 and all(set(REFERENCE_STOPS) <= set(c.body["stop"]) for c in calls)
