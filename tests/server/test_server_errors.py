"""Every error status of ``moa serve``, seen through the openai client's own exception types."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest

from tests.support.scripted_server import Raw, ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve, wait_until

USER = [{"role": "user", "content": "Hello?"}]
NO_RETRY = {"retry": {"max_retries": 0}}


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory) -> Iterator[ServeProcess]:
    configs = [
        ensemble(upstream_sync_url, "fast", [["p1", "p2"]], "agg"),
        ensemble(upstream_sync_url, "tight", [["t1"]], "tagg", deadline_s=0.8),
        ensemble(upstream_sync_url, "fragile", [["f1", "f2"]], "fagg", backend=NO_RETRY),
    ]
    with moa_serve(tmp_path_factory.mktemp("serve-errors"), configs, "--max-body-bytes", "4096") as server:
        yield server


@pytest.fixture
def client(serve: ServeProcess) -> Iterator[openai.OpenAI]:
    with serve.client(timeout=30) as c:
        yield c


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"temperature": 3}, "temperature", "must be <= 2"),
        ({"top_p": 0}, "top_p", "must be > 0"),
        ({"max_tokens": 0}, "max_tokens", "must be > 0"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "conflicts"),
        ({"n": 17}, "n", "<= 16"),
        ({"stop": [1]}, "stop[0]", "string"),
        ({"seed": 2**64}, "seed", "must be <"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", ""),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "messages[1].role",
            "last",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "x"}}]}]},
            "messages[0].content[0].type",
            "unsupported content part type 'file'",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f f"}}]}, "tools[0].function.name", "should match"),
        ({"tool_choice": "required"}, "tool_choice", "only allowed when tools are given"),
        ({"modalities": ["audio"]}, "modalities", "not supported"),
        ({"repetition_penalty": 1.2}, "repetition_penalty", "backend 'up' cannot honour this field"),
        ({"frequency_penalty": 3}, "frequency_penalty", "must be <= 2"),
        ({"response_format": {"type": "yaml"}}, "response_format", "unknown type 'yaml'"),
        ({"temprature": 1}, "temprature", "unknown field"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream is true"),
        ({"stream": True, "stream_options": {"include_usage": True, "extra": 1}}, "stream_options.extra", "unknown"),
        ({"moa_deadline_s": -1}, "moa_deadline_s", "must be > 0"),
    ],
)
def test_bad_fields_get_400_naming_the_field(client: openai.OpenAI, fields: dict, param: str, says: str) -> None:
    body = {"model": "fast", "messages": USER, **fields}
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=object)
    error = _error(info.value)
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert says in error["message"] and error["message"].startswith(param)


def test_neutral_values_of_unsupported_fields_are_accepted(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    result = client.chat.completions.create(
        model="fast",
        messages=USER,
        frequency_penalty=0,
        presence_penalty=0,
        logprobs=False,
        tools=[],
        response_format={"type": "text"},
        parallel_tool_calls=True,
        store=False,
    )
    assert result.choices[0].message.content == "agg answer 0"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "an array"),
        (b"[" * 100_000 + b"]" * 100_000, ""),
    ],
)
def test_unreadable_bodies_get_400(serve: ServeProcess, raw: bytes, says: str) -> None:
    status, _, body = serve.post_json(raw)
    if len(raw) > 4096:
        assert status == 413
        return
    assert status == 400 and says in json.loads(body)["error"]["message"]


def test_unknown_model_is_404_naming_the_served_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    error = _error(info.value)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert "fast" in error["message"] and "fragile" in error["message"]


def test_unknown_route_and_wrong_method(serve: ServeProcess) -> None:
    status, _, body = serve.request("GET", "/v1/embeddings")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, _, body = serve.request("GET", "/v1/chat/completions")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"


def test_oversized_body_is_413(client: openai.OpenAI, serve: ServeProcess) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x" * 5000}])
    assert info.value.status_code == 413 and _error(info.value)["code"] == "request_too_large"
    chunked = (b"x" for _ in range(5000))  # no Content-Length: the limit holds while reading
    headers = {"Content-Type": "application/json"}
    conn_status, _, body = serve.request("POST", "/v1/chat/completions", chunked, headers)  # type: ignore[arg-type]
    assert conn_status == 413 and json.loads(body)["error"]["code"] == "request_too_large"


def test_failed_aggregator_is_502(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("fagg", faults=["400"])
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fragile", messages=USER)
    assert info.value.status_code == 502
    error = _error(info.value)
    assert error["code"] == "upstream_failed" and "scripted 400" in error["message"]


def test_too_few_proposals_is_503_even_when_streaming(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    for stream in (False, True):
        upstream_thread.script("f1", faults=["500"])
        upstream_thread.script("f2", faults=["reset"])
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="fragile", messages=USER, stream=stream)
        assert info.value.status_code == 503
        assert _error(info.value)["code"] == "insufficient_proposals"


def test_a_prompt_too_long_for_every_proposer_is_400_and_not_retried_by_the_client(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    too_long = Raw('{"error": {"message": "This model\'s maximum context length is 8192 tokens"}}', status=400)
    for stream in (False, True):
        upstream_thread.reset()
        upstream_thread.script("f1", faults=[too_long] * 3)
        upstream_thread.script("f2", faults=[too_long] * 3)
        with serve.client(timeout=30, max_retries=2) as retrying, pytest.raises(openai.BadRequestError) as info:
            retrying.chat.completions.create(model="fragile", messages=USER, stream=stream)
        assert _error(info.value)["code"] == "context_length_exceeded"
        assert len(upstream_thread.for_model("f1")) == 1  # a 503 would have made the client send it twice more


def test_deadline_is_504(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("t1", latency_s=5)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="tight", messages=USER)
    assert info.value.status_code == 504
    assert _error(info.value)["code"] == "deadline_exceeded"
    wait_until(lambda: [r.outcome for r in upstream_thread.for_model("t1")] == ["cancelled"], what="t1 cancelled")


def test_per_request_deadline_extension_is_504(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("p1", latency_s=5)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fast", messages=USER, extra_body={"moa_deadline_s": 0.3})
    assert info.value.status_code == 504


def test_error_after_the_stream_began_is_an_error_event_then_done(
    client: openai.OpenAI, serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    # the aggregator's first token comes at 0.3 s, then one every 0.03 s until 1.5 s: the 0.8 s deadline hits mid-way
    upstream_thread.script("tagg", answer=" ".join(f"w{i}" for i in range(40)), latency_s=0.3)
    pieces = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="tight", messages=USER, stream=True):
            pieces += [c.delta.content for c in chunk.choices if c.delta.content]
    assert pieces and "deadline" in info.value.message
    status, _, raw = serve.post_json({"model": "tight", "messages": USER, "stream": True})
    events = [e for e in raw.decode().split("\n\n") if e]
    assert status == 200 and events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "deadline_exceeded"


async def test_full_queue_is_429(upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path) -> None:
    upstream_thread.script("q1", latency_s=1)
    cfg = ensemble(upstream_sync_url, "queued", [["q1"]], "qagg")
    with moa_serve(tmp_path, [cfg], "--max-queue", "2") as server:
        async with server.aclient() as client:
            held = [
                asyncio.create_task(client.chat.completions.create(model="queued", messages=USER)) for _ in range(2)
            ]
            while len(upstream_thread.for_model("q1")) < 2:
                await asyncio.sleep(0.02)
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model="queued", messages=USER)
            assert _error(info.value)["code"] == "queue_full"
            assert info.value.response.headers["retry-after"] == "1"
            assert all(r.choices[0].message.content == "qagg answer 0" for r in await asyncio.gather(*held))
            upstream_thread.script("q1")
            await client.chat.completions.create(model="queued", messages=USER)  # room again


@pytest.mark.parametrize("source", ["env", "file"])
def test_api_keys_are_required_and_never_printed(
    upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path, source: str
) -> None:
    secret, wrong = "sk-moa-test-7f3a9c", "sk-wrong-1b2c3d"
    if source == "env":
        args, env = ["--api-key-env", "MOA_TEST_KEYS"], {"MOA_TEST_KEYS": f"other-key,{secret}"}
    else:
        (tmp_path / "keys").write_text(f"# server keys\n{secret}\n\nother-key\n")
        args, env = ["--api-key-file", str(tmp_path / "keys")], {}
    cfg = ensemble(upstream_sync_url, "locked", [["k1"]], "kagg")
    with moa_serve(tmp_path, [cfg], *args, env=env) as server:
        with server.client(wrong) as client:
            with pytest.raises(openai.AuthenticationError) as info:
                client.chat.completions.create(model="locked", messages=USER)
            assert _error(info.value)["code"] == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
        for headers in ({}, {"Authorization": secret}, {"Authorization": f"Basic {secret}"}):
            status, _, body = server.post_json({"model": "locked", "messages": USER}, headers=headers)
            assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
        assert upstream_thread.for_model("k1") == []  # refused before any work
        with server.client(secret) as client:
            assert client.chat.completions.create(model="locked", messages=USER).choices[0].message.content
        assert server.request("GET", "/health")[0] == 200  # probes need no key
        status, _, _ = server.request("GET", "/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert status == 200
        assert server.stop() == 0
    assert secret not in server.output and wrong not in server.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--api-key-env", "MOA_UNSET_VAR"], "--api-key-env: environment variable MOA_UNSET_VAR"),
        (["--api-key-file", "/nonexistent/keys"], "--api-key-file: cannot read"),
        (["--max-queue", "0"], "--max-queue: must be >= 1"),
        (["--port", "70000"], "--port: must be between 0 and 65535"),
    ],
)
def test_bad_server_options_exit_2_with_one_line(args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "moa.cli", "serve", "-c", "self-moa", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.startswith(f"error: {says}"), done.stderr
    assert "Traceback" not in done.stderr
