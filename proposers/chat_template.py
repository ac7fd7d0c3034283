"""Chat-template rules: which conversation layouts a model's chat template accepts, and ``conform``, which fits
any prompt moa builds to them.

Templates refuse layouts that moa's prompts use: Gemma's raises "System role not supported" on any system turn and
"Conversation roles must alternate user/assistant/user/assistant/..." on two user turns in a row; Mistral's takes
a system turn only first and needs alternation; some refuse the ``tool`` role. Every prompt moa builds stays
generic; each backend conforms it just before sending, with the rules of its model (found by ``probe`` for a
local template, declared or learned for a remote one). ``conform`` under ``TemplateRules`` (all allowed) is the
identity. Otherwise:

- a system turn the rules refuse is folded into the next user turn (the last one when none follows), between
  ``[system message]`` and ``[end of system message]`` lines, ahead of the user's text;
- a tool turn the rules refuse becomes a user turn between ``[tool result]`` lines;
- with ``alternate``, only a leading system turn stays a system turn, consecutive user (or assistant) turns are
  merged, blank line between, and a conversation that opens with the assistant gets an opening user turn.

Whatever the rules, a conversation's turns keep their text and order, so a prompt that extends a conversation
(moa's ``references: {at: end}`` layout) still renders with the conversation's text as its prefix: under
``alternate`` the last user turn grows (the references are appended to it) instead of a new turn starting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from moa.config import ChatTemplateRules
from moa.types import Message

#: the rules a template may impose, each learned or probed on its own
Constraint = Literal["system", "system_first", "alternate", "tool"]
CONSTRAINTS: tuple[Constraint, ...] = ("system", "system_first", "alternate", "tool")

SystemRule = Literal["any", "first", "fold"]

#: the user turn a conversation opening with the assistant gets under ``alternate``
OPENING_TURN = "(The conversation starts with the assistant's message.)"


@dataclass(frozen=True, slots=True)
class TemplateRules:
    """What a chat template accepts: ``system`` turns anywhere, only ``first`` or not at all (``fold``); strict
    user/assistant alternation; the ``tool`` role."""

    system: SystemRule = "any"
    alternate: bool = False
    tool: bool = True

    @classmethod
    def of(cls, config: ChatTemplateRules) -> TemplateRules:
        """The rules a backend's ``chat_template:`` declares."""
        system: SystemRule = "any" if config.system is True else "fold" if config.system is False else config.system
        return cls(system, config.alternate, config.tool)

    @classmethod
    def refusing(cls, refused: frozenset[Constraint] | set[Constraint]) -> TemplateRules:
        """The rules of a template that refuses exactly ``refused``."""
        system: SystemRule = "fold" if "system" in refused else "first" if "system_first" in refused else "any"
        return cls(system, "alternate" in refused, "tool" not in refused)

    @property
    def refused(self) -> frozenset[Constraint]:
        """The constraints these rules impose."""
        out: set[Constraint] = set()
        if self.system == "fold":
            out |= {"system", "system_first"}
        if self.system == "first":
            out.add("system_first")
        if self.alternate:
            out.add("alternate")
        if not self.tool:
            out.add("tool")
        return frozenset(out)

    def describe(self) -> str:
        """The rules in words, for logs (``no system role, strict alternation``)."""
        parts = {"fold": ["no system role"], "first": ["a system turn only first"], "any": []}[self.system]
        parts += ["strict alternation"] if self.alternate else []
        parts += [] if self.tool else ["no tool role"]
        return ", ".join(parts) or "every layout"


#: the layout every chat template takes: user and assistant turns alternating, starting and ending with the user
STRICT = TemplateRules("fold", True, False)


def _fenced(kind: str, text: str) -> str:
    return f"[{kind}]\n{text}\n[end of {kind}]"


def _keeps_system(rules: TemplateRules, leading: bool) -> bool:
    """Whether a system turn stays one: ``leading`` when only system turns came before it."""
    if rules.system == "fold":
        return False
    return leading or (rules.system == "any" and not rules.alternate)


def adapt(messages: Sequence[Message], rules: TemplateRules) -> tuple[list[Message], str | None]:
    """``messages`` fitted to ``rules``, and what was changed in words (``None``: nothing)."""
    changes: list[str] = []

    def changed(what: str) -> None:
        if what not in changes:
            changes.append(what)

    out: list[Message] = []
    pending: list[str] = []  # folded system text waiting for the next user turn
    leading = True
    for m in messages:
        if m.role == "system":
            if _keeps_system(rules, leading):
                out.append(m)
            else:
                pending.append(_fenced("system message", m.content))
                changed("system folded into a user turn")
            continue
        leading = False
        if m.role == "tool" and not rules.tool:
            m = Message("user", _fenced("tool result", m.content))
            changed("tool result folded into a user turn")
        if m.role == "user" and pending:
            m = _prepended(m, "\n\n".join(pending))
            pending = []
        out.append(m)
    if pending:  # system turns after the last user turn: into that turn, else a user turn of their own
        last = next((i for i in range(len(out) - 1, -1, -1) if out[i].role == "user"), None)
        if last is None:
            out.append(Message("user", "\n\n".join(pending)))
        else:
            out[last] = replace(out[last], content="\n\n".join([out[last].content, *pending]))
    if rules.alternate:
        out = _alternating(out, changed)
    return out, "; ".join(changes) or None


def _alternating(messages: list[Message], changed: Callable[[str], None]) -> list[Message]:
    """Leading system turns, then user and assistant turns alternating from the user (tool turns stay put)."""
    out: list[Message] = []
    for m in messages:
        before = out[-1] if out else None
        if before is not None and m.role == before.role and m.role in ("user", "assistant"):
            out[-1] = _merged(before, m)
            changed("consecutive turns merged")
            continue
        if m.role == "assistant" and all(o.role == "system" for o in out):
            out.append(Message("user", OPENING_TURN))
            changed("opening user turn added")
        out.append(m)
    return out


def developer_as_system(messages: Sequence[Message]) -> tuple[list[Message], str | None]:
    """``developer`` turns as ``system`` turns, for an upstream that does not take OpenAI's newer role; and what
    changed (``None``: nothing)."""
    if all(m.role != "developer" for m in messages):
        return list(messages), None
    return [replace(m, role="system") if m.role == "developer" else m for m in messages], "developer sent as system"


def _as_parts(m: Message) -> tuple[dict[str, object], ...]:
    return m.parts if m.parts is not None else ({"type": "text", "text": m.content},)


def _merged(first: Message, second: Message) -> Message:
    """Two turns of one role as one, blank line between (their parts in order when either is sent as parts)."""
    content = f"{first.content}\n\n{second.content}"
    if first.parts is None and second.parts is None:
        return replace(first, content=content)
    return replace(first, content=content, parts=(*_as_parts(first), *_as_parts(second)))


def _prepended(m: Message, text: str) -> Message:
    """A user turn with ``text`` ahead of its own (a text part first when it is sent as parts)."""
    content = "\n\n".join([text, m.content])
    if m.parts is None:
        return Message("user", content)
    return replace(m, content=content, parts=({"type": "text", "text": text}, *m.parts))


def conform(messages: Sequence[Message], rules: TemplateRules) -> list[Message]:
    """``messages`` fitted to ``rules`` (the module's docstring says how); unchanged when they already fit."""
    return adapt(messages, rules)[0]


def exercised(messages: Sequence[Message]) -> frozenset[Constraint]:
    """The constraints ``messages`` would break, were they in force: what sending them tells about a template."""
    found: set[Constraint] = set()
    leading = True
    previous: str | None = None  # the last user or assistant role
    for m in messages:
        if m.role == "system":
            found.add("system")
            if not leading:
                found.add("system_first")
            continue
        leading = False
        if m.role == "tool":
            found.add("tool")
            continue
        if m.role == previous or (previous is None and m.role == "assistant"):
            found.add("alternate")
        previous = m.role
    return frozenset(found)


# ---- finding a local template's rules ----------------------------------------------------------------------

Render = Callable[[list[dict[str, str]]], str]

_PROBES: dict[Constraint, list[tuple[str, str]]] = {
    "system": [("system", "moa-probe-s1"), ("user", "moa-probe-u1")],
    "system_first": [
        ("user", "moa-probe-u1"),
        ("assistant", "moa-probe-a1"),
        ("system", "moa-probe-s1"),
        ("user", "moa-probe-u2"),
    ],
    "alternate": [("user", "moa-probe-u1"), ("user", "moa-probe-u2")],
    "tool": [
        ("user", "moa-probe-u1"),
        ("assistant", "moa-probe-a1"),
        ("tool", "moa-probe-t1"),
        ("user", "moa-probe-u2"),
    ],
}
_OPENING_PROBE = [("assistant", "moa-probe-a1"), ("user", "moa-probe-u1")]


def _accepts(render: Render, turns: list[tuple[str, str]]) -> bool:
    """The template renders ``turns`` without raising, and every turn's text is in what it rendered (a template
    that drops a role it does not know refuses it as surely as one that raises)."""
    try:
        text = render([{"role": role, "content": content} for role, content in turns])
    except Exception:  # a template may raise anything on a conversation it refuses
        return False
    return isinstance(text, str) and all(content in text for _, content in turns)


def probe(render: Render) -> TemplateRules:
    """The rules of the template behind ``render`` (messages -> prompt text), found by rendering one small
    conversation per constraint: no list of model names, only what the template itself does."""
    refused: set[Constraint] = set()
    if not _accepts(render, _PROBES["system"]):
        refused.add("system")
    elif not _accepts(render, _PROBES["system_first"]):
        refused.add("system_first")
    if not (_accepts(render, _PROBES["alternate"]) and _accepts(render, _OPENING_PROBE)):
        refused.add("alternate")
    if not _accepts(render, _PROBES["tool"]):
        refused.add("tool")
    return TemplateRules.refusing(refused)


__all__ = [
    "CONSTRAINTS",
    "OPENING_TURN",
    "STRICT",
    "Constraint",
    "TemplateRules",
    "adapt",
    "conform",
    "exercised",
    "probe",
]
