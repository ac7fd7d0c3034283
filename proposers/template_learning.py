"""A remote backend's chat-template rules, per model: declared in its config, or learned from the upstream's own
refusals.

An upstream that applies a strict template answers a layout it refuses with an error that quotes the template:
vLLM's server a 400 ``{"error": {"message": "System role not supported", ...}}`` (older versions the message at
the top level, sometimes twice), TGI a 422 ``{"error": "Template error: syntax error: Conversation roles must
alternate ...", "error_type": "template_error"}``, llama.cpp's server a 500 whose message ends ``Jinja Exception:
Conversation roles must alternate ...``. ``refusal`` reads which constraint such an error names.

``TemplateLayouts.layout`` wraps one call: it fits the messages to what is known of the model's template, and the
call reports back. A refusal makes the call retry once with ``STRICT`` (the layout every template takes) and
the refused constraint is kept for the model (logged once; the call's trace record says so). No refusal storm:
while nothing is known of a constraint, one call at a time puts it to the upstream; concurrent calls that would
too wait for that call's verdict, so each constraint is refused at most once per backend and model. A template
refuses before any token is generated, so the wait is short: a refusal, a stream's first bytes, or
``VERDICT_WAIT_S`` without a refusal (a whole call's answer takes its whole generation) let them go on.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from moa.errors import BackendError
from moa.types import Message
from proposers.chat_template import CONSTRAINTS, STRICT, Constraint, TemplateRules, adapt, exercised

logger = logging.getLogger(__name__)

#: how long calls wait for another call's verdict on a constraint before they go ahead (a refusal comes at once)
VERDICT_WAIT_S = 1.0

#: statuses a template refusal comes with: vLLM's server 400, TGI 422, llama.cpp's server 500
REFUSAL_STATUSES = (400, 422, 500)

_NAMED: tuple[tuple[re.Pattern[str], tuple[Constraint, ...]], ...] = (
    (re.compile(r"system role (is )?not supported|system (messages?|prompts?) (is |are )?not supported"), ("system",)),
    (
        re.compile(
            r"system (message|prompt|role)s? (must|should|can only|is only allowed to) (be )?(at the )?"
            r"(beginning|start|first)"
        ),
        ("system_first",),
    ),
    (re.compile(r"roles must alternate"), ("alternate",)),
    # Mistral's: a system turn past the first (or a tool turn) names the one exception it allows
    (
        re.compile(r"only user and assistant roles are supported, with the exception of an initial"),
        ("system_first", "tool"),
    ),
    (re.compile(r"only user and assistant roles are supported(?!, with the exception)"), ("system", "tool")),
    (
        re.compile(
            r"tool role (is )?not supported|(tool|function) (messages?|results?) (is |are )?not supported"
            r"|unsupported role:? ['\"]?tool|unknown role:? ['\"]?tool"
        ),
        ("tool",),
    ),
)


def refusal(error: BackendError) -> frozenset[Constraint]:
    """The constraints an upstream's error says its chat template refused (empty: not a template refusal)."""
    if error.status not in REFUSAL_STATUSES:
        return frozenset()
    text = str(error).lower()
    return frozenset(c for pattern, named in _NAMED if pattern.search(text) for c in named)


@dataclass(slots=True)
class _Model:
    """What is known of one model's template."""

    refused: set[Constraint] = field(default_factory=set)
    accepted: set[Constraint] = field(default_factory=set)
    testing: dict[Constraint, asyncio.Future[None]] = field(default_factory=dict)  # put to the upstream now
    since: dict[Constraint, float] = field(default_factory=dict)  # when each test began (loop time)

    def unknown(self, constraints: frozenset[Constraint]) -> set[Constraint]:
        return set(constraints) - self.refused - self.accepted


@dataclass(slots=True)
class Layout:
    """One call's messages as sent, and what its attempts taught."""

    messages: list[Message]
    note: str | None
    original: list[Message]
    testing: dict[Constraint, asyncio.Future[None]]  # the constraints this call puts to the upstream
    retried: bool = False


class TemplateLayouts:
    """Per model of one backend: the rules its chat template is known to impose, and the calls testing the rest."""

    def __init__(self, backend: str, declared: TemplateRules | None = None) -> None:
        self.backend = backend
        self.declared = declared
        self._models: dict[str, _Model] = {}

    def _model(self, model: str) -> _Model:
        known = self._models.get(model)
        if known is None:
            known = self._models[model] = _Model()
            if self.declared is not None:  # declared: every constraint is known
                known.refused = set(self.declared.refused)
                known.accepted = set(CONSTRAINTS) - known.refused
        return known

    def rules(self, model: str) -> TemplateRules:
        """What ``model``'s template is known to refuse, as rules (all allowed until something is refused)."""
        return TemplateRules.refusing(frozenset(self._model(model).refused))

    @asynccontextmanager
    async def layout(self, model: str, messages: Sequence[Message]) -> AsyncIterator[Layout]:
        """One call's layout: ``messages`` fitted to the known rules. The call sends ``layout.messages``, asks
        ``retry(error)`` after a failure and calls ``accepted()`` once the upstream took the prompt."""
        known = self._model(model)
        loop = asyncio.get_running_loop()
        while True:
            sent, note = adapt(messages, self.rules(model))
            unknown = known.unknown(exercised(sent))
            busy = {c: known.testing[c] for c in unknown if c in known.testing}
            if not busy:
                break
            # another call is putting one of these to the upstream: wait for its verdict
            until = min(known.since[c] for c in busy) + VERDICT_WAIT_S
            done, _ = await asyncio.wait(busy.values(), timeout=max(0.0, until - loop.time()))
            if not done:  # no refusal in time: the template took it; go ahead without testing these again
                unknown -= set(busy)
                break
        layout = Layout(sent, note, list(messages), {c: loop.create_future() for c in unknown})
        known.testing.update(layout.testing)
        known.since.update(dict.fromkeys(layout.testing, loop.time()))
        try:
            yield layout
        finally:
            self._release(known, layout)

    @staticmethod
    def _release(known: _Model, layout: Layout) -> None:
        """The call's verdict is in (or it ended without one): calls waiting on its constraints go on."""
        for constraint, future in layout.testing.items():
            if known.testing.get(constraint) is future:
                del known.testing[constraint], known.since[constraint]
            if not future.done():
                future.set_result(None)

    def accepted(self, model: str, layout: Layout) -> None:
        """The upstream took ``layout.messages``: the constraints they put to it are accepted."""
        known = self._model(model)
        if not layout.retried:
            known.accepted |= set(layout.testing) - known.refused
        self._release(known, layout)

    def retry(self, model: str, layout: Layout, error: BackendError) -> bool:
        """After ``error``: whether to send again, with ``layout.messages`` made ``STRICT``. Only a template
        refusal, once per call; the refused constraints are kept for the model."""
        named = refusal(error)
        if not named or layout.retried:
            return False
        known = self._model(model)
        new = named - known.refused
        known.refused |= named
        known.accepted -= named
        if new:
            logger.warning(
                "backend %r, model %r: the upstream's chat template refused a layout (%s); its prompts are fitted "
                "to %s from now on",
                self.backend,
                model,
                str(error).split(": ", 1)[-1][:200],
                self.rules(model).describe(),
            )
        self._release(known, layout)
        layout.retried = True
        layout.messages, fitted = adapt(layout.original, STRICT)
        what = ", ".join(sorted(named))
        layout.note = f"retried after the upstream refused the layout ({what}): " + (fitted or "unchanged")
        return True


__all__ = ["REFUSAL_STATUSES", "Layout", "TemplateLayouts", "refusal"]
