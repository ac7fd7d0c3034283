"""Content parts through the ensemble (``moa.content``): image and audio parts reach the backends that read them,
become markers where a backend's ``input`` says text only (and the trace says so), are refused where no proposer of
a layer reads them, and ``developer`` turns reach OpenAI as such and other upstreams as ``system``."""

from __future__ import annotations

from typing import Any

import pytest

from moa import Ensemble
from moa.config import VLLMBackendConfig, load_config
from moa.content import with_markers
from moa.errors import BadRequestError, ConfigError
from moa.types import Message
from proposers.chat_template import TemplateRules, adapt
from proposers.local_input import local_messages
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
ASKED = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"}, IMAGE]}]


def two_backends(base_url: str, text_only: dict[str, Any]) -> dict[str, Any]:
    """Proposer p1 on backend ``up`` (forwards parts), p2 on ``plain`` (``text_only``'s input), aggregator on up."""
    config = moa_config(base_url, [["p1"]])
    config["backends"]["plain"] = {"type": "openai", "base_url": base_url, **text_only}
    config["layers"][0]["agents"].append({"backend": "plain", "model": "p2", "name": "p2"})
    return config


async def test_an_image_part_reaches_every_backend_that_reads_it_as_sent(upstream: ScriptedServer) -> None:
    async with Ensemble.from_config(two_backends(upstream.base_url, {"input": ["text", "image"]})) as ens:
        await ens.acomplete(ASKED)
    for model in ("p1", "p2", "agg"):
        (sent,) = upstream.for_model(model)
        user_turns = [m for m in sent.messages if m["role"] == "user"]
        assert user_turns[0]["content"] == ASKED[0]["content"], model


async def test_a_text_only_backend_reads_a_marker_and_the_trace_says_so(upstream: ScriptedServer) -> None:
    async with Ensemble.from_config(two_backends(upstream.base_url, {"input": ["text"]})) as ens:
        result = await ens.acomplete(ASKED)
    (plain,) = upstream.for_model("p2")
    assert plain.messages[0] == {"role": "user", "content": "What is in the picture?\n[image]"}
    (record,) = [r for r in result.trace if r.agent == "p2"]
    assert record.template is not None and "messages[0].content[1] (image_url)" in record.template
    (forwarded,) = upstream.for_model("p1")
    assert forwarded.messages[0]["content"][1] == IMAGE
    assert next(r for r in result.trace if r.agent == "p1").template is None


async def test_a_layer_where_no_proposer_reads_a_part_is_refused_naming_it(upstream: ScriptedServer) -> None:
    config = moa_config(upstream.base_url, [["p1", "p2"]], backend={"input": ["text", "image"]})
    asked = [{"role": "user", "content": [{"type": "text", "text": "Listen."}, IMAGE, AUDIO]}]
    async with Ensemble.from_config(config) as ens:
        with pytest.raises(ConfigError) as info:
            await ens.acomplete(asked)
        with pytest.raises(ConfigError):
            [d async for d in ens.astream(asked)]
    assert info.value.path == "messages[0].content[2]"
    assert "no proposer of layer 1 reads this content part" in str(info.value) and "'up'" in str(info.value)
    assert upstream.requests == []


@pytest.mark.parametrize(("developer_role", "sent_as"), [(None, "system"), (False, "system"), (True, "developer")])
async def test_developer_turns_are_system_turns_unless_the_backend_keeps_them(
    upstream: ScriptedServer, developer_role: bool | None, sent_as: str
) -> None:
    backend = {} if developer_role is None else {"developer_role": developer_role}
    config = moa_config(upstream.base_url, [["p1"]], backend=backend)
    asked = [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hello?"}]
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(asked)
    (sent,) = upstream.for_model("p1")
    assert sent.messages[0] == {"role": sent_as, "content": "Answer in French."}
    record = next(r for r in result.trace if r.agent == "p1")
    assert (record.template == "developer sent as system") == (sent_as == "system")


def test_developer_goes_to_openais_own_api_as_developer() -> None:
    config = load_config(moa_config("https://api.openai.com/v1", [["p1"]]))
    assert config.backends["up"].keeps_developer  # type: ignore[union-attr]


def test_an_in_process_backend_reads_text_only() -> None:
    config = moa_config("http://127.0.0.1:9/v1", [["p1"]])
    config["backends"]["local"] = {"type": "vllm", "model": "m", "input": ["text", "image"]}
    with pytest.raises(ConfigError, match="in-process backend reads text only") as info:
        load_config(config)
    assert info.value.path == "backends.local.input"
    with pytest.raises(ConfigError, match="must include text"):
        load_config(moa_config("http://127.0.0.1:9/v1", [["p1"]], backend={"input": ["image"]}))


def test_an_in_process_backend_refuses_a_part_naming_itself_or_reads_its_marker() -> None:
    messages = [
        Message("developer", "Be brief."),
        Message("user", "What?", parts=({"type": "text", "text": "What?"}, IMAGE)),
    ]
    with pytest.raises(BadRequestError) as info:
        local_messages("local", VLLMBackendConfig(type="vllm", model="m"), messages, multimodal=False)
    assert "local: messages[1].content[1]" in str(info.value) and "not multimodal" in str(info.value)
    assert info.value.backend == "local"
    marked = VLLMBackendConfig(type="vllm", model="m", input=("text",))
    fitted, note = local_messages("local", marked, messages)
    assert [m.to_dict() for m in fitted] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What?\n[image]"},
    ]
    assert note is not None and "marker" in note and "developer sent as system" in note


def test_fitting_a_template_keeps_the_parts() -> None:
    parts = ({"type": "text", "text": "Look."}, IMAGE)
    messages = [Message("system", "Be kind."), Message("user", "Hi."), Message("user", "Look.", parts=parts)]
    fitted, _ = adapt(messages, TemplateRules(system="fold", alternate=True))
    (turn,) = fitted
    assert turn.parts is not None and IMAGE in turn.parts
    assert turn.parts[0]["type"] == "text" and "Be kind." in turn.parts[0]["text"]
    assert turn.to_dict()["content"][-1] == IMAGE


def test_markers_stand_where_the_parts_stood() -> None:
    message = Message("user", "a\nb", parts=({"type": "text", "text": "a"}, AUDIO, {"type": "text", "text": "b"}))
    (marked,), note = with_markers([message], lambda kind: kind == "text")
    assert marked.to_dict() == {"role": "user", "content": "a\n[audio]\nb"}
    assert note is not None and "messages[0].content[1] (input_audio)" in note
