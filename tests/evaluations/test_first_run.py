"""The first-run evaluation writes each answer the moment it is done and a rerun sends only what is missing."""

from __future__ import annotations

from pathlib import Path

from evaluations.first_run import measure, pending, read_answers, summarize
from moa.config.loading import load_config
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

INSTRUCTIONS = [(0, "first"), (1, "second"), (2, "third")]
LOOP = "The sky is blue today. " * 3


def answer(model: str, messages: list[dict[str, str]], index: int) -> str:
    asked = messages[-1]["content"]
    if "second" in asked:
        return "Blue.\n\n<<reference 2 x"  # cut short: the fence stops do not apply to a scripted upstream
    return LOOP if "third" in asked else "Fine."


async def test_each_answer_is_a_line_and_a_rerun_sends_only_the_missing_ones(
    upstream: ScriptedServer, tmp_path: Path
) -> None:
    upstream.script("a", answer="A sample.")
    upstream.script("agg", answer=answer, faults=["400"])  # the first instruction's aggregation fails
    config = load_config(moa_config(upstream.base_url, [["a"]]))
    path = tmp_path / "answers.jsonl"
    with path.open("a", encoding="utf-8") as out:
        await measure(config, INSTRUCTIONS, 1, 7, out, "run 1")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3  # one line per instruction, the failed one too
    first = read_answers(path)
    assert [a.index for a in first] == [0, 1, 2] and first[0].failed is not None
    assert first[1].text == "Blue." and not first[1].fence  # moa cut the dangling fence
    assert first[2].repeated == "the sky is blue today"
    assert pending(path, INSTRUCTIONS) == [(0, "first")]  # the failed one is sent again, the rest is done

    before = len(upstream.for_model("agg"))
    with path.open("a", encoding="utf-8") as out:
        await measure(config, pending(path, INSTRUCTIONS), 1, 7, out, "run 2")
    assert len(upstream.for_model("agg")) == before + 1  # only the missing instruction went out
    answers = read_answers(path)
    assert [(a.index, a.failed, a.run) for a in answers] == [(0, None, "run 2"), (1, None, "run 1"), (2, None, "run 1")]
    summary = summarize("t", answers)
    assert (summary.answers, summary.failed, summary.fences, summary.repeating) == (3, 0, 0, 1)
    assert pending(path, INSTRUCTIONS) == []
