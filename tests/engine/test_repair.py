"""The repair step (``moa.repair``): a failing final answer gets one repair call quoting its problem, then its error."""

from __future__ import annotations

import pytest

from moa.errors import InvalidAnswerError, InvalidStructuredOutputError
from moa.repair import checked, checks_for, first_problem, repair_messages
from moa.types import ChatRequest, Generation, Message

CONVERSATION = [Message("user", "Give me a number.")]


def digits_only(answer: Generation) -> InvalidAnswerError | None:
    """A real check: the answer must be digits."""
    return None if answer.text.isdigit() else InvalidStructuredOutputError(f"{answer.text!r} is not a number")


def never_empty(answer: Generation) -> InvalidAnswerError | None:
    return InvalidAnswerError("the answer is empty", "messages") if not answer.text else None


class Aggregator:
    """A repair call's stand-in for the aggregator: answers from a list, recording each prompt."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[list[Message]] = []

    async def __call__(self, messages: list[Message]) -> Generation:
        self.prompts.append(messages)
        return Generation(self.answers.pop(0))


async def test_a_good_answer_makes_no_repair_call() -> None:
    agg = Aggregator()
    assert (await checked(Generation("42"), CONVERSATION, [digits_only], agg)).text == "42"
    assert agg.prompts == []


async def test_a_bad_answer_gets_one_repair_call_quoting_the_problem() -> None:
    agg = Aggregator("42")
    answer = await checked(Generation("forty-two"), CONVERSATION, [digits_only], agg)
    assert answer.text == "42"
    (prompt,) = agg.prompts
    assert prompt[: len(CONVERSATION)] == CONVERSATION
    assert prompt[-2] == Message("assistant", "forty-two")
    assert prompt[-1].role == "user" and "'forty-two' is not a number" in prompt[-1].content


async def test_a_repair_that_fails_too_raises_the_checks_error_once() -> None:
    agg = Aggregator("still no")
    with pytest.raises(InvalidStructuredOutputError, match="'still no' is not a number .after one repair call.") as e:
        await checked(Generation("no"), CONVERSATION, [digits_only], agg)
    assert e.value.param == "response_format"
    assert len(agg.prompts) == 1


def test_the_first_failing_check_is_the_problem() -> None:
    problem = first_problem(Generation(""), [never_empty, digits_only])
    assert isinstance(problem, InvalidAnswerError) and problem.param == "messages"
    assert first_problem(Generation("7"), [never_empty, digits_only]) is None


def test_checks_come_from_the_request() -> None:
    request = ChatRequest(CONVERSATION)
    assert checks_for(request, [lambda r: None, lambda r: digits_only]) == [digits_only]


def test_the_repair_prompt_keeps_the_conversation_as_its_prefix() -> None:
    messages = repair_messages(CONVERSATION, Generation("x"), InvalidAnswerError("bad"))
    assert messages[0] == CONVERSATION[0] and len(messages) == 3
