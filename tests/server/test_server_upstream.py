"""``moa serve`` in front of a hostile upstream: a wrong shape is a 502 naming the field, and a secret the
upstream echoes reaches neither the client, nor the metrics, nor what the server prints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.scripted_server import Raw, ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello?"}]
AZURE = "sk-azure-SECRET-123"


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    backend = {"retry": {"max_retries": 0}, "headers": {"api-key": "${AZURE_KEY}"}}
    configs: list[dict[str, Any] | str] = [
        ensemble(upstream_sync_url, "hostile", [["h1", "h2"]], "hagg", backend=backend)
    ]
    with moa_serve(tmp_path_factory.mktemp("serve-upstream"), configs, env={"AZURE_KEY": AZURE}) as server:
        yield server


def _fail(serve: ServeProcess, stream: bool) -> openai.APIStatusError:
    with serve.client(timeout=30) as client, pytest.raises(openai.APIStatusError) as info:
        if stream:
            list(client.chat.completions.create(model="hostile", messages=USER, stream=True))
        else:
            client.chat.completions.create(model="hostile", messages=USER)
    return info.value


@pytest.mark.parametrize("stream", [False, True])
def test_an_aggregator_with_no_choices_is_a_502(
    serve: ServeProcess, upstream_thread: ScriptedServer, stream: bool
) -> None:
    body = '{"choices": []}' if not stream else 'data: {"choices": [{"delta": "x"}]}\n\n'
    upstream_thread.script(
        "hagg", faults=[Raw(body, content_type="text/event-stream" if stream else "application/json")]
    )
    err = _fail(serve, stream)
    assert err.status_code == 502
    message = err.response.json()["error"]["message"]
    assert "malformed response: " + ("choices: empty" if not stream else "chunk.choices[0].delta") in message


def test_an_echoed_header_secret_never_leaves_the_server(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    echo = Raw(json.dumps({"error": {"message": f"invalid api-key {AZURE}"}}), status=401)
    upstream_thread.script("h1", faults=[echo])
    upstream_thread.script("hagg", faults=[echo])
    err = _fail(serve, stream=False)
    assert err.status_code == 502 and "invalid api-key ***" in err.response.text
    assert AZURE not in err.response.text and AZURE not in str(err)
    assert upstream_thread.for_model("hagg")[0].headers["api-key"] == AZURE  # it was sent
    status, _, metrics = serve.request("GET", "/metrics")
    assert status == 200 and AZURE.encode() not in metrics
    serve.stop()
    assert AZURE not in serve.output
