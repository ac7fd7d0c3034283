"""``logprobs`` / ``top_logprobs`` over ``moa serve`` with the official client: they reach the aggregator's call
only, and its log-probabilities come back in OpenAI's ``choices[i].logprobs`` (cut to the text moa kept), whole
and streamed (each chunk with the positions its text begins); bad combinations are a 400 naming the field. The scripted upstream sends one token a word (``word_logprobs``)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

USER = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "lp", [["lp1", "lp2"]], "lpagg")]
    with moa_serve(tmp_path_factory.mktemp("serve-logprobs"), configs) as server:
        yield server


def test_the_answers_logprobs_come_back_in_openais_shape(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("lpagg", answer="Hello there, friend.", word_logprobs=True)
    with serve.client() as client:
        answer = client.chat.completions.create(model="lp", messages=USER, logprobs=True, top_logprobs=2)
    choice = answer.choices[0]
    assert choice.message.content == "Hello there, friend."
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == "Hello there, friend."
    assert [t.logprob for t in content] == pytest.approx([0.0, -0.1, -0.2])
    assert content[1].bytes == list(b" there,")
    assert [[a.token for a in t.top_logprobs] for t in content] == [
        ["Hello", "alt1"],
        [" there,", "alt1"],
        [" friend.", "alt1"],
    ]
    (agg,) = upstream_thread.for_model("lpagg")
    assert agg.body["logprobs"] is True and agg.body["top_logprobs"] == 2
    for proposer in ("lp1", "lp2"):  # the answer's field: the proposers are not asked
        assert "logprobs" not in upstream_thread.for_model(proposer)[0].body


def test_logprobs_of_text_cut_at_a_fence_stop_where_the_text_does(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("lpagg", answer="Hi there. <<reference 3 x>> invented text", word_logprobs=True)
    with serve.client() as client:
        answer = client.chat.completions.create(model="lp", messages=USER, logprobs=True)
    choice = answer.choices[0]
    assert choice.message.content == "Hi there."
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [t.token for t in choice.logprobs.content] == ["Hi", " there."]
    assert all(t.top_logprobs == [] for t in choice.logprobs.content)  # top_logprobs 0: the sampled token only


def test_a_stream_carries_each_tokens_logprobs_in_its_chunk_as_the_whole_answer_does(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    """Before: a 400 naming ``logprobs`` ('not supported with stream by moa yet')."""
    upstream_thread.script("lpagg", answer="Hello there, friend.", word_logprobs=True)
    with serve.client() as client:
        whole = client.chat.completions.create(model="lp", messages=USER, logprobs=True, top_logprobs=2)
        stream = client.chat.completions.create(model="lp", messages=USER, logprobs=True, top_logprobs=2, stream=True)
        chunks = [c.choices[0] for c in stream if c.choices]
    text = "".join(c.delta.content or "" for c in chunks)
    assert text == "Hello there, friend."
    positions = [t for c in chunks if c.logprobs is not None for t in c.logprobs.content or ()]
    assert whole.choices[0].logprobs is not None
    assert [t.model_dump() for t in positions] == [t.model_dump() for t in whole.choices[0].logprobs.content or ()]
    for c in chunks:  # each chunk's positions are the tokens of its own text
        if c.delta.content:
            assert c.logprobs is not None and "".join(t.token for t in c.logprobs.content or ()) == c.delta.content
    assert [[a.token for a in t.top_logprobs] for t in positions][1] == [" there,", "alt1"]
    body = upstream_thread.for_model("lpagg")[-1].body
    assert body["stream"] is True and body["logprobs"] is True and body["top_logprobs"] == 2


def test_a_streams_logprobs_stop_where_its_text_is_cut_at_a_fence(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("lpagg", answer="Hi there. <<reference 3 x>> invented text", word_logprobs=True)
    with serve.client() as client:
        stream = client.chat.completions.create(model="lp", messages=USER, logprobs=True, stream=True)
        chunks = [c.choices[0] for c in stream if c.choices]
    assert "".join(c.delta.content or "" for c in chunks) == "Hi there."
    positions = [t for c in chunks if c.logprobs is not None for t in c.logprobs.content or ()]
    assert [t.token for t in positions] == ["Hi", " there."]  # as the whole answer cut there keeps
    assert chunks[-1].finish_reason == "stop"


def test_without_logprobs_there_are_none(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    with serve.client() as client:
        answer = client.chat.completions.create(model="lp", messages=USER)
    assert answer.choices[0].logprobs is None
    assert "logprobs" not in upstream_thread.for_model("lpagg")[0].body


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_bad_combinations_are_a_400_naming_the_field(
    serve: ServeProcess, upstream_thread: ScriptedServer, fields: dict[str, object], param: str
) -> None:
    with serve.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="lp", messages=USER, **fields)  # type: ignore[call-overload]
    assert isinstance(info.value.body, dict) and info.value.body["param"] == param
    assert upstream_thread.requests == []
