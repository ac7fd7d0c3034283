"""Property-based fuzzing of ``/v1/chat/completions`` bodies: never a 5xx, every error a well-formed body."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server_harness import ServeProcess, ensemble, moa_serve

#: fields moa ignores, refuses unless neutral, or does not know
OTHER_FIELDS = [
    "user", "metadata", "store", "tools", "tool_choice", "logprobs", "top_logprobs", "frequency_penalty",
    "presence_penalty", "response_format", "logit_bias", "functions", "audio", "unknown_field",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


text_parts = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=10)})
)
roles = st.sampled_from(["user", "system", "assistant", "developer"])
good_message = st.fixed_dictionaries({"role": roles, "content": st.text(max_size=40)})
any_message = st.fixed_dictionaries(
    {"role": roles | json_values, "content": st.text(max_size=40) | text_parts | json_values}
)
text_only = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}), min_size=1)
last_user = st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=40) | text_only})
good_messages = st.builds(lambda head, last: [*head, last], st.lists(good_message, max_size=3), last_user)

# bodies the server should run (or refuse only for a bound, like n > 16 or top_p = 0)
good_body = st.fixed_dictionaries(
    {"model": st.just("fuzz"), "messages": good_messages},
    optional={
        "stream": st.booleans(),
        "n": st.integers(1, 18),
        "temperature": st.floats(0, 2.5),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(0, 2**70),
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=18),
        "seed": st.integers(-(2**64), 2**64),
        "moa_trace": st.booleans(),
        "moa_deadline_s": st.floats(5, 30),  # one short enough to expire would rightly be a 504
    },
)
# ... then one field (known or not) given another value of any JSON type
mutation = st.tuples(
    st.sampled_from(["model", "messages", "stream_options", "max_completion_tokens", *OTHER_FIELDS]), json_values
) | st.tuples(st.just("messages"), st.lists(any_message, max_size=4))
near_valid = st.builds(lambda body, m: body if m is None else {**body, m[0]: m[1]}, good_body, st.none() | mutation)


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "fuzz", [["z1", "z2"]], "zagg")]
    # asyncio's own loop here (the other modules get uvloop, the default when installed)
    with moa_serve(
        tmp_path_factory.mktemp("serve-fuzz"), configs, "--max-body-bytes", "65536", "--loop", "asyncio"
    ) as server:
        yield server


def _check(server: ServeProcess, raw: bytes) -> None:
    status, headers, body = server.post_json(raw)
    assert status < 500, (status, body[:500])
    if status == 200:
        if headers["content-type"].startswith("text/event-stream"):
            events = [e for e in body.decode().split("\n\n") if e]
            assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
            chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
            assert all(c.get("object") == "chat.completion.chunk" for c in chunks), chunks
        else:
            assert json.loads(body)["object"] == "chat.completion"
        return
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    if error["param"] is not None and status == 400:
        assert error["message"].startswith(error["param"])


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=near_valid)
def test_near_valid_bodies_never_5xx(serve: ServeProcess, body: dict) -> None:
    _check(serve, json.dumps(body).encode())


@FUZZ
@given(body=json_values)
def test_arbitrary_json_never_5xx(serve: ServeProcess, body: object) -> None:
    _check(serve, json.dumps(body).encode())


@FUZZ
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_5xx(serve: ServeProcess, raw: bytes) -> None:
    _check(serve, raw)
