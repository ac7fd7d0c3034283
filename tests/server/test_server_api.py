"""``moa serve`` (a real process) driven by the official openai client, sync and async, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from moa.prompts import REFERENCE_STOPS
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

USER = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory) -> Iterator[ServeProcess]:
    configs = [
        ensemble(upstream_sync_url, "fast", [["p1", "p2"]], "agg"),
        ensemble(upstream_sync_url, "deep", [["d1"], ["d2"]], "dagg", description="two layers"),
        ensemble(
            upstream_sync_url,
            "guarded",
            [["g1", "g2", "g3"]],
            "gagg",
            defense={"type": "dropout-vote", "vote": "option", "max_subsets": 3, "max_size": 1},
        ),  # fmt: skip
    ]
    with moa_serve(tmp_path_factory.mktemp("serve-api"), configs) as server:
        yield server


@pytest.fixture
def client(serve: ServeProcess) -> Iterator[openai.OpenAI]:
    with serve.client(timeout=30) as c:
        yield c


@pytest.fixture
async def aclient(serve: ServeProcess):
    async with serve.aclient(timeout=30) as c:
        yield c


def test_prints_where_it_listens_and_what_it_serves(serve: ServeProcess) -> None:
    assert serve.base_url.startswith("http://127.0.0.1:") and serve.base_url.endswith("/v1")
    served = serve.wait_for("moa serve: serving deep")
    assert "moa serve: serving fast: 1 layer(s), 2 proposal(s), aggregator synthesize" in serve.lines
    assert served == "moa serve: serving deep: 2 layer(s), 2 proposal(s), aggregator synthesize"


def test_sync_completion_answers_with_the_aggregator_and_sums_usage(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("p1", answer="proposal one")
    upstream_thread.script("p2", answer="proposal two")
    upstream_thread.script("agg", answer="four it is")
    result = client.chat.completions.create(model="fast", messages=USER)
    assert result.object == "chat.completion" and result.model == "fast"
    assert [(c.index, c.message.role, c.message.content, c.finish_reason) for c in result.choices] == [
        (0, "assistant", "four it is", "stop")
    ]  # fmt: skip
    # three calls of 10 prompt tokens each; completions: 2 + 2 + 3 words
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (30, 7, 37)
    (agg,) = upstream_thread.for_model("agg")
    assert "proposal one" in agg.prompt_text and "proposal two" in agg.prompt_text
    assert "moa_trace" not in (result.model_extra or {})


def test_sync_stream_first_chunk_has_the_role_then_tokens_then_usage(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("agg", answer="streamed words arrive one by one")
    chunks = list(
        client.chat.completions.create(model="fast", messages=USER, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert pieces == ["streamed", " words", " arrive", " one", " by", " one"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2 * 3 + 6  # two proposals of 3 words, the answer's 6
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_sends_no_usage_chunk(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    chunks = list(client.chat.completions.create(model="fast", messages=USER, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "agg answer 0"


async def test_async_client_whole_and_streamed_give_the_same_answer(
    aclient: openai.AsyncOpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("dagg", answer="a layered answer")
    whole = await aclient.chat.completions.create(model="deep", messages=USER)
    stream = await aclient.chat.completions.create(model="deep", messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert whole.choices[0].message.content == text == "a layered answer"
    (second,) = upstream_thread.for_model("d2")[-1:]
    assert "d1 answer 0" in second.prompt_text  # layer 2 saw layer 1


async def test_n_choices_run_as_concurrent_ensembles_with_distinct_seeds(
    aclient: openai.AsyncOpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("agg", answer=lambda m, msgs, i: "answer " + str(len(msgs)), latency_s=0.3)
    result = await aclient.chat.completions.create(model="fast", messages=USER, n=3, seed=41)
    assert [c.index for c in result.choices] == [0, 1, 2]
    aggs = upstream_thread.for_model("agg")
    assert sorted(r.body["seed"] for r in aggs) == [41, 42, 43]
    assert max(r.started for r in aggs) - min(r.started for r in aggs) < 0.25  # at once, not one by one
    assert len(upstream_thread.for_model("p1")) == 3  # every choice is a whole ensemble run
    assert result.usage.prompt_tokens == 3 * 30


async def test_n_streamed_choices_each_get_a_role_tokens_and_a_finish(
    aclient: openai.AsyncOpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("agg", answer="x y z")
    stream = await aclient.chat.completions.create(model="fast", messages=USER, n=2, stream=True)
    by_index: dict[int, list] = {0: [], 1: []}
    async for chunk in stream:
        for choice in chunk.choices:
            by_index[choice.index].append(choice)
    for choices in by_index.values():
        assert choices[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in choices) == "x y z"
        assert [c.finish_reason for c in choices if c.finish_reason] == ["stop"]


def test_sampling_fields_set_the_final_answer_only(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    client.chat.completions.create(
        model="fast", messages=USER, temperature=0.3, top_p=0.9, max_completion_tokens=7, stop=["END"], seed=5
    )
    (agg,) = upstream_thread.for_model("agg")
    assert {k: agg.body.get(k) for k in ("temperature", "top_p", "max_tokens", "stop", "seed")} == {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 7,
        "stop": ["END", *REFERENCE_STOPS],
        "seed": 5,
    }  # fmt: skip  (the aggregator reads fenced references: it also stops at the fences)
    (p1,) = upstream_thread.for_model("p1")
    assert "temperature" not in p1.body and "stop" not in p1.body  # proposers keep their configured sampling,
    assert isinstance(p1.body["seed"], int) and p1.body["seed"] != 5  # but a seeded request seeds them too
    client.chat.completions.create(model="fast", messages=USER, max_tokens=2, stop="STOP")
    agg = upstream_thread.for_model("agg")[-1]
    assert (agg.body["max_tokens"], agg.body["stop"]) == (2, ["STOP", *REFERENCE_STOPS])


def test_trace_extension_lists_every_call_and_proposal(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    result = client.chat.completions.create(model="deep", messages=USER, extra_body={"moa_trace": True})
    (trace,) = result.model_extra["moa_trace"]
    assert trace["index"] == 0
    assert [(c["layer"], c["role"], c["agent"], c["outcome"]) for c in trace["calls"]] == [
        (1, "proposer", "d1", "ok"), (2, "proposer", "d2", "ok"), (3, "aggregator", "aggregator", "ok")
    ]  # fmt: skip
    assert [(p["agent"], p["text"]) for p in trace["proposals"]] == [("d1", "d1 answer 0"), ("d2", "d2 answer 0")]


def test_streamed_trace_comes_in_the_last_chunk(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    chunks = list(
        client.chat.completions.create(model="fast", messages=USER, stream=True, extra_body={"moa_trace": True})
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is None
    (trace,) = chunks[-1].model_extra["moa_trace"]
    assert sorted(c["agent"] for c in trace["calls"]) == ["aggregator", "p1", "p2"]


def test_text_parts_and_developer_role_are_read_as_text(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
    ]
    client.chat.completions.create(model="fast", messages=messages, user="someone", metadata={"k": "v"})
    (p1,) = upstream_thread.for_model("p1")
    assert p1.messages[0] == {"role": "system", "content": "Be brief."}
    assert p1.messages[-1] == {"role": "user", "content": "part one\npart two"}


def test_models_lists_and_retrieves_the_ensembles(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fast", "deep", "guarded"]
    assert client.models.retrieve("deep").owned_by == "moa"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_health(serve: ServeProcess) -> None:
    status, _, body = serve.request("GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "ensembles": ["fast", "deep", "guarded"]}


def test_trace_records_what_the_defense_did(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    for agent in ("g1", "g2", "g3"):
        upstream_thread.script(agent, answer=f"{agent} says B")
    upstream_thread.script("gagg", answer="Answer: (B)")
    result = client.chat.completions.create(model="guarded", messages=USER, extra_body={"moa_trace": True})
    assert result.choices[0].message.content == "Answer: (B)"
    (trace,) = result.model_extra["moa_trace"]
    (record,) = trace["defense"]
    assert record["defense"] == "dropout-vote" and record["calls"] == 3
    assert sorted(tuple(c["subset"]) for c in record["candidates"]) == [("g1",), ("g2",), ("g3",)]
    assert [c["role"] for c in trace["calls"]].count("defense") == 3

    chunks = list(
        client.chat.completions.create(model="guarded", messages=USER, stream=True, extra_body={"moa_trace": True})
    )
    (streamed,) = chunks[-1].model_extra["moa_trace"]
    assert [d["defense"] for d in streamed["defense"]] == ["dropout-vote"]
