"""Embedding calls take the chat calls' path: the proposer's key, headers, validation and masking, the backend's
retries and trace, and a record in the request's trace when a defense makes them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from defenses.embeddings import make_embedder
from moa import Ensemble
from moa.backend import Backend, CallSite
from moa.config import OpenAIBackendConfig, RetryPolicy
from moa.context import RequestContext
from moa.defense_config import OpenAIEmbeddings
from moa.errors import AuthenticationError, ConfigError, MalformedResponseError, PermissionDeniedError
from moa.limits import BackendLimits
from proposers.openai_http import OpenAIProposer
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Raw, ScriptedServer

SECRET = "sk-embed-SECRET-456"
SITE = CallSite(1, "defense", "embedder", "embed")


def _proposer(base_url: str, **fields: Any) -> OpenAIProposer:
    return OpenAIProposer("emb", OpenAIBackendConfig(type="openai", base_url=base_url, model="e", **fields))


async def test_the_proposer_embeds_in_input_order(upstream: ScriptedServer) -> None:
    rows = [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3, 4.0]}]
    upstream.script("e", faults=[Raw(json.dumps({"data": rows, "usage": {"prompt_tokens": 5}}))])
    proposer = _proposer(upstream.base_url, headers={"api-key": SECRET})
    try:
        result = await proposer.embed(["a", "b"])
    finally:
        await proposer.aclose()
    assert result.vectors == [[3.0, 4.0], [0.0, 2.0]] and result.usage.prompt_tokens == 5
    sent = upstream.for_model("e")[0]
    assert sent.body == {"model": "e", "input": ["a", "b"]} and sent.headers["api-key"] == SECRET


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('{"data": null}', "data"),
        ('{"data": [{"index": 0, "embedding": "x"}]}', "data[0].embedding"),
        ('{"data": [{"index": 0, "embedding": [1, "2"]}]}', "data[0].embedding[1]"),
        ('{"data": [{"index": 0, "embedding": [1.0]}]}', "data: 1 vectors (indices [0]) for 2 inputs"),
        ('{"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}', "data: 2 vectors"),
        (
            '{"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]}',
            "data: vectors of different",
        ),
        ('{"data": [], "usage": {"prompt_tokens": 0.5}}', "usage.prompt_tokens"),
    ],
)
async def test_a_wrong_shape_embedding_is_a_malformed_response(upstream: ScriptedServer, body: str, names: str) -> None:
    upstream.script("e", faults=[Raw(body)])
    proposer = _proposer(upstream.base_url)
    try:
        with pytest.raises(MalformedResponseError) as info:
            await proposer.embed(["a", "b"])
    finally:
        await proposer.aclose()
    assert f"emb: malformed response: {names}" in str(info.value)


async def test_the_backend_retries_an_embedding_call_and_records_it(upstream: ScriptedServer) -> None:
    upstream.script("e", faults=["503"])
    backend = Backend(
        "emb",
        _proposer(upstream.base_url),
        BackendLimits(OpenAIBackendConfig(type="openai").rate_limit),
        retry=RetryPolicy(max_retries=1, initial_backoff_s=0),
        timeout_s=5,
    )
    ctx = RequestContext()
    try:
        result = await backend.embed(["one two", "three"], model="e", site=SITE, ctx=ctx)
    finally:
        await backend.aclose()
    trace = ctx.trace
    assert len(result.vectors) == 2 and len(upstream.for_model("e")) == 2
    [record] = trace
    assert (record.role, record.agent, record.step, record.backend, record.model) == (
        "defense",
        "embedder",
        "embed",
        "emb",
        "e",
    )
    assert record.outcome == "ok" and record.retries == 1 and record.prompt_tokens == 3


async def test_a_failed_embedding_call_is_recorded_with_the_secret_masked(upstream: ScriptedServer) -> None:
    upstream.script("e", faults=[Raw(json.dumps({"error": {"message": f"bad key {SECRET}"}}), status=401)])
    backend = Backend(
        "emb",
        _proposer(upstream.base_url, headers={"api-key": SECRET}),
        BackendLimits(OpenAIBackendConfig(type="openai").rate_limit),
        retry=RetryPolicy(),
        timeout_s=5,
    )
    ctx = RequestContext()
    try:
        with pytest.raises(AuthenticationError, match=r"emb: HTTP 401: bad key \*\*\*"):
            await backend.embed(["a"], model="e", site=SITE, ctx=ctx)
    finally:
        await backend.aclose()
    trace = ctx.trace
    [record] = trace
    assert record.outcome == "error" and record.error == "emb: HTTP 401: bad key ***"
    assert len(upstream.for_model("e")) == 1  # 401 is not retried


async def test_the_embedder_masks_its_key_and_closes_its_session(
    upstream: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_EMBED_KEY", SECRET)
    upstream.script("e", faults=[Raw(json.dumps({"error": {"message": f"key {SECRET} is revoked"}}), status=403)])
    embedder = make_embedder(
        OpenAIEmbeddings(type="openai", base_url=upstream.base_url, model="e", api_key_env="MOA_EMBED_KEY"),
        Backend.for_embeddings,
    )
    with pytest.raises(PermissionDeniedError) as info:
        await embedder.embed(["a"])
    assert str(info.value) == "embeddings: HTTP 403: key *** is revoked"
    assert upstream.for_model("e")[0].headers["Authorization"] == f"Bearer {SECRET}"
    x = await embedder.embed(["a b", "a b", "c"])
    assert x.shape == (3, 16) and np.allclose(x[0], x[1]) and np.allclose(np.linalg.norm(x, axis=1), 1)
    proposer = embedder.backend.proposer
    assert isinstance(proposer, OpenAIProposer) and proposer._session is None  # nothing left open between calls


def test_a_missing_embedder_key_names_the_defense_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOA_ABSENT_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"^defense\.embeddings\.api_key_env: environment variable MOA_ABSENT"):
        make_embedder(
            OpenAIEmbeddings(type="openai", base_url="http://127.0.0.1:9", model="e", api_key_env="MOA_ABSENT_KEY"),
            Backend.for_embeddings,
        )


async def test_a_defense_records_its_embedding_calls_in_the_request_trace(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="paris is the capital")
    upstream.script("b", answer="paris is the capital")
    upstream.script("c", answer="lyon surely")
    upstream.script("agg", answer="paris")
    upstream.script("emb", faults=["500"])  # one retry, then the vectors
    defense = {
        "type": "cluster-filter",
        "embeddings": {"type": "openai", "base_url": upstream.base_url, "model": "emb"},
    }
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a", "b", "c"]], defense=defense)) as ens:
        result = await ens.acomplete([{"role": "user", "content": "capital of France?"}])
    [record] = [r for r in result.trace if r.step == "embed"]
    assert (record.layer, record.role, record.agent, record.backend, record.model) == (
        1,
        "defense",
        "embedder",
        "embeddings",
        "emb",
    )
    assert record.outcome == "ok" and record.retries == 1 and record.prompt_tokens == 10
    assert result.defense[0].dropped == ["c"]
    assert result.usage.prompt_tokens == sum(r.prompt_tokens for r in result.trace)
