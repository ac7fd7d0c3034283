"""``moa serve``'s spans end to end in a real OTLP receiver, Arize Phoenix (``tests/support/phoenix.py``): exported
over OTLP/HTTP as the standard environment alone configures it, stored by Phoenix and read back through Phoenix's
REST API. The tree (workflow -> layer -> call) joins the client's trace; the GenAI attributes arrive as sent and
Phoenix files the calls in its own LLM view; a retry is an event, a failed call an error status with its class;
no key or header secret is stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.phoenix import Phoenix
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ensemble, moa_serve, wait_until

PROJECT = "moa-e2e"
CLIENT_TRACE, CLIENT_SPAN = "5ce0e9a56015fec5aadfa328ae398115", "ab54a98ceb1f0ad2"
KEY = "sk-phoenix-test-0123456789abcdef"
HEADER_SECRET = "hdr-phoenix-secret-42"
USER = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    receiver = Phoenix(tmp_path_factory.mktemp("phoenix"))
    receiver.start()
    yield receiver
    receiver.stop()


def _stored(phoenix: Phoenix, count: int) -> list[dict[str, Any]]:
    """The client's trace as Phoenix stored it, once its root and ``count`` spans in all are there."""

    def complete() -> bool:
        spans = phoenix.spans(PROJECT, CLIENT_TRACE)
        return len(spans) >= count and any(s["parent_id"] == CLIENT_SPAN for s in spans)

    wait_until(complete, timeout=30, what=f"{count} spans of trace {CLIENT_TRACE} in Phoenix")
    return phoenix.spans(PROJECT, CLIENT_TRACE)


def test_phoenix_stores_a_request_as_one_tree_with_its_genai_attributes(
    tmp_path: Path, upstream_thread: ScriptedServer, phoenix: Phoenix
) -> None:
    upstream_thread.script("p1", faults=["500"])  # its first attempt fails, its retry answers
    upstream_thread.script("p2", faults=["401-echo"])  # fails for good, its error quoting the key it was sent
    cfg = ensemble(upstream_thread.base_url, "phoenixed", [["p1", "p2"], ["q1"]], "agg")
    cfg["backends"]["up"].update(
        {"api_key_env": "PHOENIX_TEST_KEY", "headers": {"x-secret": HEADER_SECRET}, "retry": {"max_retries": 1}}
    )
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.endpoint,
        "OTEL_SERVICE_NAME": "moa-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={PROJECT}",  # Phoenix's project of these spans
        "OTEL_BSP_SCHEDULE_DELAY": "20",
        "PHOENIX_TEST_KEY": KEY,
    }
    with moa_serve(tmp_path, [cfg], env=env) as server:
        answer = server.client().chat.completions.create(
            model="phoenixed", messages=USER, extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
        )
        assert answer.choices[0].message.content == "agg answer 0"
        spans = _stored(phoenix, 8)  # workflow, 2 layers, aggregate; p1, p2, q1, agg
    by_id = {s["context"]["span_id"]: s for s in spans}
    by_name = {s["name"]: s for s in spans}
    assert len(by_name) == len(spans) == 8, sorted(by_name)
    root = by_name["invoke_workflow phoenixed"]
    assert root["parent_id"] == CLIENT_SPAN  # joined the client's trace
    assert root["attributes"]["gen_ai.operation.name"] == "invoke_workflow"
    parents = {name: by_id[s["parent_id"]]["name"] for name, s in by_name.items() if s is not root}
    assert parents == {
        "layer 1": "invoke_workflow phoenixed",
        "layer 2": "invoke_workflow phoenixed",
        "aggregate": "invoke_workflow phoenixed",
        "chat p1": "layer 1",
        "chat p2": "layer 1",
        "chat q1": "layer 2",
        "chat agg": "aggregate",
    }

    q1 = by_name["chat q1"]["attributes"]  # flat, dotted keys
    assert q1["gen_ai.operation.name"] == "chat" and q1["gen_ai.provider.name"] == "openai"
    assert q1["gen_ai.request.model"] == q1["gen_ai.response.model"] == "q1"
    assert q1["gen_ai.usage.input_tokens"] > 0 and q1["gen_ai.usage.output_tokens"] > 0
    assert q1["moa.layer"] == 2 and q1["moa.agent"] == "q1" and q1["moa.outcome"] == "ok"
    assert q1["llm.token_count.prompt"] == q1["gen_ai.usage.input_tokens"]  # Phoenix read the GenAI conventions

    p1 = by_name["chat p1"]
    assert [e["name"] for e in p1["events"]] == ["moa.retry"]
    assert p1["status_code"] == "UNSET" and p1["attributes"]["moa.retries"] == 1
    p2 = by_name["chat p2"]
    assert p2["status_code"] == "ERROR" and p2["attributes"]["moa.outcome"] == "error"
    assert p2["attributes"]["error.type"] == "AuthenticationError" and "***" in p2["status_message"]
    stored = json.dumps(spans)
    assert KEY not in stored and HEADER_SECRET not in stored
