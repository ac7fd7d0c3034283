"""``moa serve`` in front of an upstream with Gemma's chat template: a client's system message (which the template
refuses) is fitted to it, not refused, and the response says nothing different from an unconstrained upstream's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.chat_templates import GEMMA_LIKE
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Colour of the sky?"},
]


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [
        ensemble(upstream_sync_url, "free", [["f1", "f2"], ["f3"]], "fagg"),
        ensemble(upstream_sync_url, "gemma", [["g1", "g2"], ["g3"]], "gagg"),
    ]
    with moa_serve(tmp_path_factory.mktemp("serve-templates"), configs) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_a_system_message_for_a_gemma_upstream_is_answered_like_any_other(
    serve: ServeProcess, upstream_thread: ScriptedServer, stream: bool
) -> None:
    for prefix, template in (("f", None), ("g", GEMMA_LIKE)):
        for model in ("1", "2", "3", "agg"):
            upstream_thread.script(prefix + model, answer="Blue.", template=template)
    answers = {}
    with serve.client(timeout=30) as client:
        for name in ("free", "gemma"):
            if stream:
                chunks = client.chat.completions.create(model=name, messages=MESSAGES, stream=True)
                answers[name] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                response = client.chat.completions.create(model=name, messages=MESSAGES)
                answers[name] = (response.choices[0].message.content, response.choices[0].finish_reason)
    assert answers["gemma"] == answers["free"]
    refused = sum(upstream_thread.scripts["g" + m].refusals for m in ("1", "2", "3", "agg"))
    assert refused <= 8  # at most one per model and constraint (system, alternation)
