"""``moa serve --lenient``: fields an ensemble cannot honour are accepted, ignored and named in
``x-moa-ignored-fields`` (whole and streamed), as vLLM's server ignores what it does not take; litellm's requests
(which carry ``reasoning_effort`` whatever ``drop_params`` says) go through. ``/v1/responses`` likewise."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

USER = [{"role": "user", "content": "Hello?"}]


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "plain", [["l1"]], "lagg")]
    with moa_serve(tmp_path_factory.mktemp("serve-lenient"), configs, "--lenient") as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_fields_it_cannot_honour_are_ignored_and_named(
    serve: ServeProcess, upstream_thread: ScriptedServer, stream: bool
) -> None:
    extra = {"repetition_penalty": 1.2, "verbosity": "low", "store_as": "x", "modalities": ["text"]}
    with serve.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="plain", messages=USER, stream=stream, reasoning_effort="low", extra_body=extra
        )
        answer = raw.parse()
        text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices) if stream else None
    # repetition_penalty: the openai backend is no vLLM server; verbosity: moa does not honour it; store_as: unknown;
    # modalities ["text"] asks for nothing, so it is not named
    assert raw.headers["x-moa-ignored-fields"] == "verbosity, store_as, repetition_penalty"
    if stream:
        assert text == "lagg answer 0"
    sent = upstream_thread.for_model("lagg")[0].body
    assert sent["reasoning_effort"] == "low"  # honoured: it reaches the aggregator
    assert not {"repetition_penalty", "verbosity", "store_as"} & set(sent)


def test_a_request_it_honours_whole_names_nothing(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    with serve.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="plain", messages=USER, temperature=0.1)
    assert "x-moa-ignored-fields" not in raw.headers
    assert raw.parse().choices[0].message.content == "lagg answer 0"


def test_lenient_still_refuses_a_bad_value(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    with serve.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="plain", messages=USER, temperature=5)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "temperature"


def test_litellm_sends_reasoning_effort_and_gets_its_answer(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
    import litellm

    sent: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    http = httpx.Client(event_hooks={"request": [record]})
    with openai.OpenAI(base_url=serve.base_url, api_key="unused", max_retries=0, http_client=http) as oc:
        reply = litellm.completion(
            model="openai/plain",
            messages=USER,
            client=oc,
            reasoning_effort="low",
            drop_params=True,
            extra_body={"verbosity": "low"},
        )
    assert reply.choices[0].message.content == "lagg answer 0"
    assert sent[0]["reasoning_effort"] == "low" and sent[0]["verbosity"] == "low"
    assert upstream_thread.for_model("lagg")[0].body["reasoning_effort"] == "low"


@pytest.mark.parametrize("stream", [False, True])
def test_a_responses_request_ignores_and_names_what_it_cannot_honour(
    serve: ServeProcess, upstream_thread: ScriptedServer, stream: bool
) -> None:
    extra = {"reasoning": {"effort": "high"}, "store_as": "x", "background": False}
    with serve.client() as client:
        raw = client.responses.with_raw_response.create(
            model="plain", input="Hello?", stream=stream, store=False, extra_body=extra
        )
        answer = raw.parse()
        if stream:
            text = "".join(e.delta for e in answer if e.type == "response.output_text.delta")
        else:
            text = answer.output_text
    # reasoning: not honoured by moa; store_as: unknown; background false asks for nothing, so it is not named
    assert raw.headers["x-moa-ignored-fields"] == "reasoning, store_as"
    assert text == "lagg answer 0"
    sent = upstream_thread.for_model("lagg")[0].body
    assert not {"reasoning", "store_as"} & set(sent)


def test_lenient_streams_logprobs_it_can_honour_and_names_nothing(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    """Before streamed logprobs were built, ``--lenient`` dropped them from a stream and named them ignored."""
    upstream_thread.script("lagg", word_logprobs=True)
    with serve.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="plain", messages=USER, stream=True, logprobs=True)
        chunks = [c.choices[0] for c in raw.parse() if c.choices]
    assert "x-moa-ignored-fields" not in raw.headers
    assert "".join(c.delta.content or "" for c in chunks) == "lagg answer 0"
    tokens = [t.token for c in chunks if c.logprobs is not None for t in c.logprobs.content or ()]
    assert tokens == ["lagg", " answer", " 0"]
