"""The SDK's ``logprobs`` / ``top_logprobs``: the final answer's log-probabilities in OpenAI's shape, asked of the
aggregator's call only; bad combinations name the field. The scripted upstream sends one token a word."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from moa import Ensemble
from moa.errors import ConfigError
from moa.stops import cut_stream
from moa.types import Delta
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "Say hi."}]


async def test_acomplete_returns_the_answers_logprobs(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer="Hello there.", word_logprobs=True)
    upstream.script("p1", word_logprobs=True)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.acomplete(USER, logprobs=True, top_logprobs=1)
        plain = await ens.acomplete(USER)
    logprobs = result.choices[0].logprobs
    assert logprobs is not None
    assert [(t["token"], t["logprob"]) for t in logprobs["content"]] == [
        ("Hello", 0.0),
        (" there.", pytest.approx(-0.1)),
    ]
    assert [[a["token"] for a in t["top_logprobs"]] for t in logprobs["content"]] == [["Hello"], [" there."]]
    assert plain.choices[0].logprobs is None
    assert "logprobs" not in upstream.for_model("p1")[0].body


@pytest.mark.parametrize("stream", [False, True])
async def test_top_logprobs_without_logprobs_names_the_field(upstream: ScriptedServer, stream: bool) -> None:
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(ConfigError) as info:
            if stream:
                [d async for d in ens.astream(USER, top_logprobs=2)]
            else:
                await ens.acomplete(USER, top_logprobs=2)
    assert info.value.path == "top_logprobs" and upstream.requests == []


async def test_astream_sends_each_position_with_the_text_it_begins_in(upstream: ScriptedServer) -> None:
    """Before: a ConfigError naming ``logprobs`` ('not supported with a stream yet')."""
    upstream.script("agg", answer="Hello there, friend.", word_logprobs=True)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        deltas = [d async for d in ens.astream(USER, logprobs=True, top_logprobs=1)]
        whole = await ens.acomplete(USER, logprobs=True, top_logprobs=1)
    texts = [d.content for d in deltas if d.content]
    assert texts == ["Hello", " there,", " friend."]
    assert [[t for t, _ in d.sampled] for d in deltas if d.content] == [[t] for t in texts]
    assert [lp for d in deltas for _, lp in d.sampled] == pytest.approx([0.0, -0.1, -0.2])
    assert [top for d in deltas for top in d.logprobs] == [
        ((t, lp),) for t, lp in zip(texts, [0.0, -0.1, -0.2], strict=True)
    ]
    assert whole.choices[0].logprobs is not None
    assert [p["token"] for p in whole.choices[0].logprobs["content"]] == texts


async def _pieces(*deltas: Delta) -> AsyncGenerator[Delta, None]:
    for delta in deltas:
        yield delta


def _split_character_stream() -> AsyncGenerator[Delta, None]:
    """A stream as vLLM sends one: "é" decoded from two tokens shown as U+FFFD each; the end-of-text token last,
    with no text."""
    return _pieces(
        Delta("Caf", sampled=(("Caf", -0.1),)),
        Delta("é", sampled=(("\ufffd", -0.2), ("\ufffd", -0.3))),
        Delta(" is ok", sampled=((" is", -0.4), (" ok", -0.5))),
        Delta("", finish_reason="stop", sampled=(("<|im_end|>", -0.6),)),
    )


async def test_a_streams_positions_go_with_the_text_they_came_with() -> None:
    """Positions are placed by the piece they came with, so tokens that decode longer than their text (a split
    character) do not push later positions past their text; the end-of-text token is dropped, as a whole answer
    whose tokens do not spell its text drops it."""
    out = [d async for d in cut_stream(_split_character_stream(), ())]
    assert [(d.content, [t for t, _ in d.sampled]) for d in out if d.content or d.sampled] == [
        ("Caf", ["Caf"]), ("é", ["\ufffd", "\ufffd"]), (" is ok", [" is", " ok"])
    ]  # fmt: skip
    cut = [d async for d in cut_stream(_split_character_stream(), (" ok",))]
    assert "".join(d.content for d in cut) == "Café is"
    assert [t for d in cut for t, _ in d.sampled] == ["Caf", "\ufffd", "\ufffd", " is"]  # " ok" began past the cut
