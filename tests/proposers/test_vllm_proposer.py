"""VLLMProposer against real vLLM on this machine's CPU and the embedded SmolLM2-135M-Instruct.

One engine serves the whole module (~30 s to start). The last two tests kill it and close it, so they stay last.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import TYPE_CHECKING

import jsonschema
import pytest
from pydantic import ValidationError

from moa.errors import BadRequestError, ContextLengthError, EngineError, NotFoundError
from moa.tools import FunctionDefinition, NamedFunction, NamedToolChoice, Tool, ToolSpec, calls_of
from moa.types import Message, SamplingParams
from proposers.base import Proposer
from tests.support.vllm_engine import LOCAL, engine_processes

if TYPE_CHECKING:
    from proposers.vllm_engine import VLLMProposer

pytest_plugins = ["tests.support.vllm_engine"]  # the module's engine: the local_proposer fixture

pytestmark = pytest.mark.vllm

SKY = [Message("user", "Why is the sky blue? Answer in two sentences.")]
GREEDY = SamplingParams(temperature=0.0, max_tokens=48)


def user(text: str) -> list[Message]:
    return [Message("user", text)]


async def test_is_a_proposer(local_proposer: VLLMProposer) -> None:
    assert isinstance(local_proposer, Proposer)
    assert local_proposer.supports_n


async def test_chat_completion_returns_text(local_proposer: VLLMProposer) -> None:
    result = await local_proposer.generate(SKY, GREEDY)
    (gen,) = result.generations
    assert gen.text.strip()
    assert gen.finish_reason in ("stop", "length")
    # the chat template wraps the 12-odd words of the question in role markers (and SmolLM2's default system turn)
    assert result.usage.prompt_tokens > 20
    assert 0 < result.usage.completion_tokens <= 48
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


async def test_n_samples_in_one_call(local_proposer: VLLMProposer) -> None:
    result = await local_proposer.generate(SKY, SamplingParams(temperature=0.8, max_tokens=32), n=4)
    texts = [g.text for g in result.generations]
    assert len(texts) == 4
    assert all(t.strip() for t in texts)
    assert len(set(texts)) > 1, "four samples at temperature 0.8 came out identical"
    single = await local_proposer.generate(SKY, GREEDY)
    assert result.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once, not n times
    assert 4 <= result.usage.completion_tokens <= 4 * 32


async def test_temperature_zero_is_deterministic(local_proposer: VLLMProposer) -> None:
    first = await local_proposer.generate(SKY, GREEDY)
    second = await local_proposer.generate(SKY, GREEDY)
    assert first.generations[0].text == second.generations[0].text


async def test_seed_makes_sampling_repeatable(local_proposer: VLLMProposer) -> None:
    params = SamplingParams(temperature=1.0, max_tokens=24, seed=1234)
    runs = [(await local_proposer.generate(SKY, params)).generations[0].text for _ in range(2)]
    assert runs[0] == runs[1]


async def test_unseeded_calls_differ_and_seeded_ones_repeat(local_proposer: VLLMProposer) -> None:
    unseeded = SamplingParams(temperature=0.7, max_tokens=24)
    runs = [[g.text for g in (await local_proposer.generate(SKY, unseeded, n=3)).generations] for _ in range(2)]
    assert runs[0] != runs[1]  # each call draws a fresh seed (the engine's own seed is the same every start)
    seeded = unseeded.merged(seed=42)
    again = [[g.text for g in (await local_proposer.generate(SKY, seeded, n=3)).generations] for _ in range(2)]
    assert again[0] == again[1] and len(set(again[0])) > 1  # repeatable, and the samples still differ


async def test_the_seed_an_unseeded_call_drew_is_in_its_record_and_repeats_it(local_proposer: VLLMProposer) -> None:
    from moa.backend import Backend
    from moa.context import CallSite, RequestContext
    from moa.shared_limits import limits_for

    # the module's engine behind a backend (not closed here: the module's fixture closes the engine)
    backend = Backend(
        "local", local_proposer, limits_for("local", LOCAL.rate_limit, LOCAL.endpoint), retry=LOCAL.retry, timeout_s=120
    )
    ctx = RequestContext()
    unseeded = SamplingParams(temperature=1.0, max_tokens=24)
    site = CallSite(1, "proposer", "a")
    whole = await backend.generate(SKY, unseeded, model=LOCAL.model, site=site, ctx=ctx, n=2)
    streamed = "".join([d.content async for d in backend.stream(SKY, unseeded, model=LOCAL.model, site=site, ctx=ctx)])
    seeds = [r.seed for r in ctx.trace]
    assert all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]  # a fresh seed a call, recorded
    again = await local_proposer.generate(SKY, unseeded.merged(seed=seeds[0]), n=2)
    assert [g.text for g in again.generations] == [g.text for g in whole.generations]
    repeated = "".join([d.content async for d in local_proposer.stream(SKY, unseeded.merged(seed=seeds[1]))])
    assert repeated == streamed


async def test_seeded_sampling_of_a_long_prompt_keeps_the_engine(local_proposer: VLLMProposer) -> None:
    # ~2500 prompt tokens: more than vLLM's default step budget of 2048, which would prefill it in two chunks;
    # on CPU a seeded request prefilled in chunks killed vLLM 0.32's engine
    long = user("Summarise this log line by line. " + "The lighthouse keeper lit the lamp at dusk. " * 250)
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=99)
    runs = [await local_proposer.generate(long, params, n=2) for _ in range(2)]
    assert runs[0].usage.prompt_tokens > 2048
    assert [g.text for g in runs[0].generations] == [g.text for g in runs[1].generations]
    assert (await local_proposer.generate(SKY, GREEDY)).generations[0].text.strip()


async def test_stream_joins_to_the_full_text(local_proposer: VLLMProposer) -> None:
    whole = await local_proposer.generate(SKY, GREEDY)
    deltas = [d async for d in local_proposer.stream(SKY, GREEDY)]
    *pieces, last = deltas
    assert len(pieces) > 1, "the answer arrived in one piece: not streamed"
    assert all(d.finish_reason is None for d in pieces)
    assert "".join(d.content for d in pieces) == whole.generations[0].text
    assert last.finish_reason == whole.generations[0].finish_reason
    streamed, joined = last.usage, whole.usage
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (joined.prompt_tokens, joined.completion_tokens)


async def test_a_repeated_prompt_reports_the_tokens_found_in_the_prefix_cache(local_proposer: VLLMProposer) -> None:
    prompt = user("Name three rivers of Europe. " * 20 + "Answer briefly.")
    first = await local_proposer.generate(prompt, GREEDY)
    again = await local_proposer.generate(prompt, GREEDY)
    streamed = [d async for d in local_proposer.stream(prompt, GREEDY)][-1].usage
    assert again.usage.prompt_tokens == first.usage.prompt_tokens > 100
    # vLLM caches whole blocks and always recomputes the last prompt token: most, never all, of the prompt
    assert first.usage.prompt_tokens // 2 <= again.usage.cached_prompt_tokens < again.usage.prompt_tokens
    assert streamed is not None and streamed.cached_prompt_tokens == again.usage.cached_prompt_tokens


async def test_max_tokens_is_honoured(local_proposer: VLLMProposer) -> None:
    story = user("Write a long story about a lighthouse keeper.")
    result = await local_proposer.generate(story, SamplingParams(temperature=0.7, max_tokens=5), n=3)
    assert result.usage.completion_tokens <= 15
    assert [g.finish_reason for g in result.generations] == ["length"] * 3
    streamed = [d async for d in local_proposer.stream(story, SamplingParams(temperature=0.7, max_tokens=5))]
    assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens <= 5


async def test_top_logprobs_per_generated_token(local_proposer: VLLMProposer) -> None:
    result = await local_proposer.generate(SKY, SamplingParams(temperature=0.0, max_tokens=6, logprobs=3))
    (gen,) = result.generations
    assert gen.logprobs is not None and len(gen.logprobs) == result.usage.completion_tokens
    for top in gen.logprobs:
        assert 3 <= len(top) <= 4  # the top 3, plus the sampled token where it ranks lower
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert all(lp <= 0 for _, lp in top)
    assert "".join(top[0][0] for top in gen.logprobs) == gen.text  # greedy: the most likely token every time
    assert gen.sampled is not None and "".join(t for t, _ in gen.sampled) == gen.text  # the sampled tokens
    assert [lp for _, lp in gen.sampled] == [top[0][1] for top in gen.logprobs]
    plain = (await local_proposer.generate(SKY, GREEDY)).generations[0]
    assert plain.logprobs is None and plain.sampled is None  # only when asked


async def test_a_stream_carries_each_pieces_logprobs_as_the_whole_answer_has_them(
    local_proposer: VLLMProposer,
) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=2)
    (whole,) = (await local_proposer.generate(SKY, params)).generations
    deltas = [d async for d in local_proposer.stream(SKY, params)]
    assert "".join(d.content for d in deltas) == whole.text
    assert [t for d in deltas for t, _ in d.sampled] == [t for t, _ in whole.sampled or ()]
    assert [lp for d in deltas for _, lp in d.sampled] == pytest.approx([lp for _, lp in whole.sampled or ()], abs=1e-3)
    assert [[t for t, _ in top] for d in deltas for top in d.logprobs] == [
        [t for t, _ in top] for top in whole.logprobs or ()
    ]
    plain = [d async for d in local_proposer.stream(SKY, GREEDY)]
    assert all(d.sampled == () and d.logprobs == () for d in plain)  # only when asked


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = Tool(function=FunctionDefinition(name="get_weather", parameters=CITY))
TIME_TOOL = Tool(function=FunctionDefinition(name="get_time"))


async def test_a_named_tool_choice_yields_a_parseable_call_whole_and_streamed(local_proposer: VLLMProposer) -> None:
    """In process, vLLM's structured outputs write the named function's arguments: a call whose arguments are valid
    under its parameters, whole and streamed as OpenAI's tool-call pieces."""
    named = NamedToolChoice(function=NamedFunction(name="get_weather"))
    spec = ToolSpec(tools=(WEATHER_TOOL, TIME_TOOL), tool_choice=named)
    params = SamplingParams(temperature=0.0, max_tokens=48, tools=spec)
    prompt = user("What is the weather in Paris?")
    (whole,) = (await local_proposer.generate(prompt, params)).generations
    deltas = [d async for d in local_proposer.stream(prompt, params)]
    streamed = calls_of([p for d in deltas for p in d.tool_calls])
    assert whole.finish_reason == "tool_calls" and whole.text == ""
    assert "".join(d.content for d in deltas) == "" and deltas[-1].finish_reason == "tool_calls"
    for calls in (whole.tool_calls, streamed):
        (call,) = calls
        assert call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments), CITY)


async def test_required_tools_yield_calls_of_offered_tools(local_proposer: VLLMProposer) -> None:
    spec = ToolSpec(tools=(WEATHER_TOOL, TIME_TOOL), tool_choice="required", parallel_tool_calls=False)
    params = SamplingParams(temperature=0.0, max_tokens=64, tools=spec)
    (gen,) = (await local_proposer.generate(user("What is the weather in Paris?"), params)).generations
    (call,) = gen.tool_calls  # parallel_tool_calls false: one call
    assert call.name in ("get_weather", "get_time") and isinstance(json.loads(call.arguments), dict)


async def test_stop_strings_end_the_answer(local_proposer: VLLMProposer) -> None:
    full = (await local_proposer.generate(SKY, GREEDY)).generations[0].text
    words = full.split()
    assert len(words) > 4
    stop = " " + words[3]  # somewhere inside the greedy answer
    cut = await local_proposer.generate(SKY, SamplingParams(temperature=0.0, max_tokens=48, stop=(stop,)))
    assert cut.generations[0].text == full[: full.index(stop)]
    assert cut.generations[0].finish_reason == "stop"


async def test_a_json_schema_is_enforced_by_vllms_structured_outputs(local_proposer: VLLMProposer) -> None:
    """The 135M model writes JSON valid under the schema, whole and streamed: vLLM's structured outputs
    hold it to the schema (the same model answers this prompt in prose without them)."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "City", "schema": schema}}
    params = SamplingParams(temperature=0.0, max_tokens=64, response_format=fmt)
    prompt = user("What is the largest city in France?")
    free = (await local_proposer.generate(prompt, GREEDY)).generations[0].text
    assert not free.lstrip().startswith("{")
    whole = (await local_proposer.generate(prompt, params)).generations[0].text
    streamed = "".join([d.content async for d in local_proposer.stream(prompt, params)])
    for text in (whole, streamed):
        answer = json.loads(text)
        jsonschema.validate(answer, schema)
    objekt = SamplingParams(temperature=0.0, max_tokens=16, response_format={"type": "json_object"})
    # json_object: an object opens at once (this model then lists keys past any small token cap)
    assert (await local_proposer.generate(prompt, objekt)).generations[0].text.startswith('{"')


async def test_prompt_longer_than_context_is_a_clear_error(local_proposer: VLLMProposer) -> None:
    too_long = user("lighthouse " * 3500)  # ~3500 tokens; the fixture's max_model_len is 3072
    with pytest.raises(ContextLengthError, match="max_model_len") as caught:
        await local_proposer.generate(too_long, GREEDY)
    assert caught.value.backend == "local"
    with pytest.raises(ContextLengthError):
        [d async for d in local_proposer.stream(too_long, GREEDY)]
    # the engine keeps serving
    assert (await local_proposer.generate(SKY, GREEDY)).generations[0].text.strip()


async def test_answer_is_capped_by_the_context_left(local_proposer: VLLMProposer) -> None:
    probe = await local_proposer.generate(user("lighthouse " * 10), SamplingParams(max_tokens=1))
    overhead = probe.usage.prompt_tokens - 10  # chat template tokens around one token per repetition
    context = LOCAL.max_model_len
    assert context is not None
    long = user("lighthouse " * (context - overhead - 2))  # leaves 2 tokens of the context for the answer
    result = await local_proposer.generate(long, SamplingParams(temperature=0.0, max_tokens=200))
    assert result.usage.prompt_tokens == context - 2
    assert result.usage.completion_tokens <= 2
    assert result.generations[0].finish_reason == "length" or result.usage.completion_tokens < 2


@pytest.mark.parametrize(
    "fields", [{"temperature": -1.0}, {"top_p": 0.0}, {"max_tokens": 0}], ids=["temperature", "top_p", "max_tokens"]
)
async def test_bad_sampling_params_are_bad_requests(local_proposer: VLLMProposer, fields: dict) -> None:
    with pytest.raises(ValidationError):  # SamplingParams bounds its fields as every schema does
        SamplingParams(**fields)
    params = SamplingParams.model_construct(**fields)  # past the bounds: vLLM's own check still answers
    with pytest.raises(BadRequestError, match="invalid sampling parameters"):
        await local_proposer.generate(SKY, params)


async def test_another_model_name_is_not_found(local_proposer: VLLMProposer) -> None:
    with pytest.raises(NotFoundError, match="embedded:smollm2-135m-instruct"):
        await local_proposer.generate(SKY, GREEDY, model="gpt-4o")
    result = await local_proposer.generate(SKY, GREEDY, model="embedded:smollm2-135m-instruct")
    assert result.generations[0].text


async def wait_until(condition, what: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` (a hang guard, not a speed check)."""
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"gave up waiting for {what}")


async def test_cancelling_the_caller_aborts_the_request(local_proposer: VLLMProposer) -> None:
    essay = user("Write a very long essay on the history of lighthouses.")
    task = asyncio.create_task(local_proposer.generate(essay, SamplingParams(temperature=0.8, max_tokens=900)))
    await wait_until(lambda: local_proposer.running_requests == 1, "the request to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: local_proposer.running_requests == 0, "vLLM to drop the request")

    stream = local_proposer.stream(essay, SamplingParams(temperature=0.8, max_tokens=900))
    first = await anext(stream)
    assert first.content and local_proposer.running_requests == 1
    await stream.aclose()  # a consumer that walks away
    await wait_until(lambda: local_proposer.running_requests == 0, "vLLM to drop the abandoned stream")


async def test_dead_engine_fails_its_requests_and_restarts(local_proposer: VLLMProposer) -> None:
    (core,) = [p for p in engine_processes() if p.name().startswith("VLLM::EngineCor")]  # names cut at 15
    old = {p.pid for p in engine_processes()}
    essay = user("Write a very long essay on the history of lighthouses.")
    task = asyncio.create_task(local_proposer.generate(essay, SamplingParams(temperature=0.8, max_tokens=900)))
    await wait_until(lambda: local_proposer.running_requests == 1, "the request to start")
    os.kill(core.pid, signal.SIGKILL)
    with pytest.raises(EngineError, match="died"):
        async with asyncio.timeout(60):
            await task
    async with asyncio.timeout(300):  # the next request starts a fresh engine (~30 s)
        result = await local_proposer.generate(SKY, GREEDY)
    assert result.generations[0].text.strip()
    new = {p.pid for p in engine_processes()}
    assert new and not (new & old), "the dead engine's processes are still around"


async def test_aclose_leaves_no_processes(local_proposer: VLLMProposer) -> None:
    assert engine_processes()
    await local_proposer.aclose()
    assert engine_processes() == []
    await local_proposer.aclose()  # twice is fine
