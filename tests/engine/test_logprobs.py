"""The SDK's ``logprobs`` / ``top_logprobs``: the final answer's log-probabilities in OpenAI's shape, asked of the
aggregator's call only; bad combinations name the field. The scripted upstream sends one token a word."""

from __future__ import annotations

import pytest

from moa import Ensemble
from moa.errors import ConfigError
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


@pytest.mark.parametrize(
    ("overrides", "stream", "path"),
    [({"top_logprobs": 2}, False, "top_logprobs"), ({"logprobs": True}, True, "logprobs")],
)
async def test_bad_combinations_name_the_field(
    upstream: ScriptedServer, overrides: dict[str, object], stream: bool, path: str
) -> None:
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(ConfigError) as info:
            if stream:
                [d async for d in ens.astream(USER, **overrides)]
            else:
                await ens.acomplete(USER, **overrides)
    assert info.value.path == path and upstream.requests == []
