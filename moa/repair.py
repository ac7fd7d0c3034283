"""The repair step: the final answer checked against what the request asked of it, one repair call, then an error.

A check (``AnswerCheck``) reads the finished answer and returns its problem, an ``InvalidAnswerError`` not raised,
or ``None``. An answer with a problem gets one repair call to the aggregator (``Repair``): the conversation, the
answer as the assistant's turn and a user turn quoting the problem (``repair_messages``). The repaired answer is
checked again; a problem left is raised (the server's 502, with the code of its class). Checks come from the
request (``moa.structured.schema_check``: ``response_format``); the engine runs this step after the aggregator.

Streaming: an answer that must be checked cannot be sent before it is, so the engine makes the aggregator's call
whole and streams the checked answer (see ``ChatRequest``'s callers in ``moa.engine``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from moa.errors import InvalidAnswerError
from moa.types import ChatRequest, Generation, Message

#: one check of a finished answer: its problem (not raised), or ``None`` when it is fine
AnswerCheck = Callable[[Generation], InvalidAnswerError | None]
#: one repair call to the aggregator with these messages: its answer
Repair = Callable[[list[Message]], Awaitable[Generation]]

#: what makes a request's check: its check of the final answer, or ``None`` when the request asks nothing of it
CheckFor = Callable[[ChatRequest], AnswerCheck | None]

#: the user turn of a repair call; ``{problem}`` is the check's message
REPAIR_PROMPT = (
    "Your previous answer cannot be used: {problem}\n"
    "Answer again, fixing exactly that problem, and reply with the corrected answer only."
)


def checks_for(request: ChatRequest, builders: Sequence[CheckFor]) -> list[AnswerCheck]:
    """The checks ``request`` asks for, in the builders' order."""
    return [check for build in builders if (check := build(request)) is not None]


def first_problem(answer: Generation, checks: Sequence[AnswerCheck]) -> InvalidAnswerError | None:
    """The first problem any check finds with ``answer``, in the checks' order."""
    for check in checks:
        problem = check(answer)
        if problem is not None:
            return problem
    return None


def answer_message(answer: Generation) -> Message:
    """The answer as the assistant's turn of a repair call, its tool calls included."""
    return Message("assistant", answer.text, answer.tool_calls)


def repair_messages(conversation: Sequence[Message], answer: Generation, problem: InvalidAnswerError) -> list[Message]:
    """The repair call's prompt: the conversation, the answer that failed, and the problem quoted."""
    return [*conversation, answer_message(answer), Message("user", REPAIR_PROMPT.format(problem=problem))]


async def checked(
    answer: Generation, conversation: Sequence[Message], checks: Sequence[AnswerCheck], repair: Repair
) -> Generation:
    """``answer`` when every check passes; else the answer of one repair call when every check passes on it; else
    the repaired answer's first problem is raised (its class and ``param``; an ``InvalidAnswerError`` subclass takes
    ``(message, param)``)."""
    problem = first_problem(answer, checks)
    if problem is None:
        return answer
    repaired = await repair(repair_messages(conversation, answer, problem))
    problem = first_problem(repaired, checks)
    if problem is not None:
        raise type(problem)(f"{problem} (after one repair call)", problem.param)
    return repaired


__all__ = [
    "REPAIR_PROMPT",
    "AnswerCheck",
    "CheckFor",
    "Repair",
    "answer_message",
    "checked",
    "checks_for",
    "first_problem",
    "repair_messages",
]
