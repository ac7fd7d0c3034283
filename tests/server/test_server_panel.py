"""The panel (``moa_include_proposals``) from a real ``moa serve``: each proposal with its layer, agent, model,
text or tool calls, tokens, latency and cost, whole (``moa.proposals`` beside ``choices``, read through the
official client's ``model_extra``) and streamed (``moa.proposal`` chunks as each proposal arrives, before the
answer's tokens); LangChain and litellm still parse such a stream; off by default."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.scripted_server import Call, Reply, ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

USER = [{"role": "user", "content": "What is 2 + 2?"}]
PRICES = {"input_per_mtok": 0.0, "output_per_mtok": 1_000_000.0}  # $1 a completion token
PANEL = {"moa_include_proposals": True}


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "panel", [["fast1", "slow1"], ["top1"]], "pagg", backend={"prices": PRICES})]
    with moa_serve(tmp_path_factory.mktemp("serve-panel"), configs) as server:
        yield server


@pytest.fixture
def scripted(upstream_thread: ScriptedServer) -> ScriptedServer:
    upstream_thread.script("fast1", answer=Reply("Let me look it up.", (Call("calc", '{"x": "2+2"}', "c1"),)))
    upstream_thread.script("slow1", answer="It is 4.", latency_s=0.6)
    upstream_thread.script("top1", answer="Four.")
    upstream_thread.script("pagg", answer="2 + 2 = 4.")
    return upstream_thread


def test_a_whole_response_carries_each_proposal_with_its_calls_figures(
    serve: ServeProcess, scripted: ScriptedServer
) -> None:
    with serve.client() as client:
        answer = client.chat.completions.create(model="panel", messages=USER, extra_body=PANEL)
    assert answer.choices[0].message.content == "2 + 2 = 4."
    assert answer.model_extra is not None
    panel = answer.model_extra["moa"]["proposals"]
    by_agent = {p["agent"]: p for p in panel}
    assert sorted(by_agent) == ["fast1", "slow1", "top1"]
    assert [by_agent[a]["layer"] for a in ("fast1", "slow1", "top1")] == [1, 1, 2]
    slow = by_agent["slow1"]
    assert slow["text"] == "It is 4." and slow["model"] == "slow1" and slow["index"] == 0
    assert slow["latency_s"] >= 0.6 and slow["completion_tokens"] > 0
    assert slow["cost_usd"] == pytest.approx(slow["completion_tokens"] * 1.0)
    assert slow["dropped"] is False and slow["samples"] == 1
    fast = by_agent["fast1"]
    assert fast["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"x": "2+2"}'}}
    ]
    assert "calc(" in fast["text"]


def test_a_stream_sends_each_proposal_as_it_arrives_before_the_answer(
    serve: ServeProcess, scripted: ScriptedServer
) -> None:
    with serve.client() as client:
        started = time.monotonic()
        kinds: list[tuple[str, Any, float]] = []
        with client.chat.completions.with_streaming_response.create(
            model="panel", messages=USER, stream=True, extra_body=PANEL
        ) as raw:
            for line in raw.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                kinds.append((chunk["object"], chunk, time.monotonic() - started))
    panel = [(c["moa_proposal"], t) for kind, c, t in kinds if kind == "moa.proposal"]
    assert [p["agent"] for p, _ in panel] == ["fast1", "slow1", "top1"]  # in the order they arrived
    assert all(c["choices"] == [] for kind, c, _ in kinds if kind == "moa.proposal")
    (fast, fast_at), (slow, slow_at) = panel[0], panel[1]
    assert slow_at - fast_at >= 0.4  # the fast proposal was sent while the slow one was still running
    assert slow["latency_s"] >= 0.6 and slow["cost_usd"] == pytest.approx(slow["completion_tokens"] * 1.0)
    assert fast["tool_calls"][0]["function"]["name"] == "calc"
    first_token = next(
        i
        for i, (kind, c, _) in enumerate(kinds)
        if kind == "chat.completion.chunk" and c["choices"] and c["choices"][0]["delta"].get("content")
    )
    last_proposal = max(i for i, (kind, _, _) in enumerate(kinds) if kind == "moa.proposal")
    assert last_proposal < first_token
    assert not any(kind == "moa.progress" for kind, _, _ in kinds)  # only asked for the panel


def test_off_by_default(serve: ServeProcess, scripted: ScriptedServer) -> None:
    with serve.client() as client:
        answer = client.chat.completions.create(model="panel", messages=USER)
        stream = client.chat.completions.create(model="panel", messages=USER, stream=True)
        objects = {c.object for c in stream}
    assert answer.model_extra is None or "moa" not in answer.model_extra
    assert objects == {"chat.completion.chunk"}


def test_langchain_and_litellm_parse_a_stream_with_the_panel(serve: ServeProcess, scripted: ScriptedServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=serve.base_url, api_key="unused", model="panel", max_retries=0, extra_body=PANEL)
    assert "".join(str(c.content) for c in llm.stream("What is 2 + 2?")) == "2 + 2 = 4."

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
    import litellm

    with openai.OpenAI(base_url=serve.base_url, api_key="unused", max_retries=0) as oc:
        stream = litellm.completion(model="openai/panel", messages=USER, stream=True, client=oc, extra_body=PANEL)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "2 + 2 = 4."
