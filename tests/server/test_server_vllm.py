"""``moa serve`` over the shipped ``default`` ensemble: Self-MoA on the embedded SmolLM2 in real vLLM."""

from __future__ import annotations

import psutil
import pytest

from tests.support.server_harness import moa_serve

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "Name one primary colour."}]


def test_default_ensemble_answers_the_openai_client_and_shuts_down_clean(tmp_path) -> None:
    with moa_serve(tmp_path, ["default"], start_timeout=600) as server:  # converts the model once, starts vLLM
        assert server.wait_for("moa serve: serving default") == (
            "moa serve: serving default: 1 layer(s), 4 proposal(s), aggregator synthesize"
        )
        with server.client(timeout=600) as client:
            assert [m.id for m in client.models.list()] == ["default"]
            whole = client.chat.completions.create(
                model="default", messages=QUESTION, max_tokens=24, extra_body={"moa_trace": True}
            )
            chunks = list(
                client.chat.completions.create(
                    model="default",
                    messages=QUESTION,
                    max_tokens=24,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        engines = [p for p in psutil.Process(server.proc.pid).children(recursive=True) if p.name().startswith("VLLM::")]
        assert server.stop(timeout=120) == 0
    assert whole.choices[0].message.content.strip() and whole.choices[0].finish_reason in ("stop", "length")
    (trace,) = whole.model_extra["moa_trace"]
    first_runs = [(c["role"], c["n"], c["outcome"]) for c in trace["calls"] if c.get("step") is None]
    assert first_runs == [("proposer", 4, "ok"), ("aggregator", 1, "ok")]  # besides the reruns of a blank answer
    assert all(c.get("step") in (None, "rerun 1", "rerun 2") for c in trace["calls"])
    assert whole.usage.completion_tokens == sum(c["completion_tokens"] for c in trace["calls"])
    assert (
        whole.usage.completion_tokens <= 6 * 256 + 3 * 24
    )  # each aggregator run obeyed max_tokens; proposers their config
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert engines, "no vLLM engine process ran under moa serve"
    assert not [p for p in engines if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "engine left running"
