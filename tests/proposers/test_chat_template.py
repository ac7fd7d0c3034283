"""Chat-template rules: probing a template, fitting prompts to it, reading an upstream's refusal.

Every prompt builder of moa (layer 1, later layers, the deceptive agent, both aggregators and their Self-MoA-Seq
steps, the AlpacaEval judge) is checked against every test template over random conversations: what the
backend sends after ``conform`` renders through the template with transformers' ``apply_chat_template``, keeps
every turn's text, and keeps the conversation a prefix of a later layer's prompt under ``references: {at: end}``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregators.sequential import SequentialAggregator
from aggregators.synthesize import SynthesizeAggregator
from defenses.deceptive import deceptive_messages
from moa.alpaca_eval.judge import judge_messages
from moa.config import ChatTemplateRules, ReferencesAt, SelfMoASeqConfig, SynthesizeConfig, load_config
from moa.defense_config import DeceptionConfig
from moa.errors import BadRequestError, ConfigError, ServerError
from moa.prompts import SYNTHESIZE_INSTRUCTIONS, with_references, with_system_prompt
from moa.types import ChatRequest, Message, Proposal
from proposers.chat_template import OPENING_TURN, STRICT, TemplateRules, adapt, conform, exercised, probe
from proposers.local_template import chat_template_text
from proposers.template_learning import refusal
from tests.support.chat_templates import CHATML, GEMMA_LIKE, MISTRAL_LIKE, NO_TOOL, TEMPLATES, render

RULES = {name: probe(lambda m, t=template: render(t, m)) for name, template in TEMPLATES.items()}


def test_the_probes_find_each_templates_rules_from_the_template_alone() -> None:
    assert RULES == {
        "gemma-like": TemplateRules("fold", alternate=True, tool=False),
        "mistral-like": TemplateRules("first", alternate=True, tool=False),
        "no-tool": TemplateRules("any", alternate=False, tool=False),
        "chatml": TemplateRules(),
    }


def test_a_template_that_drops_a_role_refuses_it() -> None:
    """Not every template raises: one that renders only user and assistant turns loses the system text."""
    dropping = (
        "{% for m in messages %}{% if m['role'] in ['user', 'assistant'] %}{{ m['role'] + ': ' + m['content'] + "
        "'\\n' }}{% endif %}{% endfor %}"
    )
    assert probe(lambda m: render(dropping, m)) == TemplateRules("fold", alternate=False, tool=False)


def test_conform_changes_nothing_the_rules_allow() -> None:
    messages = [Message("system", "s"), Message("user", "u"), Message("user", "v"), Message("system", "t")]
    assert conform(messages, TemplateRules()) == messages
    assert adapt(messages, TemplateRules()) == (messages, None)


def test_the_references_layout_under_gemmas_rules() -> None:
    """``at: end``: the conversation, a system turn with the references, the user's latest message again. Under
    Gemma's rules the system text goes into the user turns it precedes, and the user turns that then meet merge."""
    conversation = [
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
        Message("user", "Why?"),
    ]
    prompt = [*conversation, Message("system", "REFERENCES"), Message("user", "Why?")]
    fitted, note = adapt(prompt, RULES["gemma-like"])
    assert fitted == [
        Message("user", "[system message]\nBe brief.\n[end of system message]\n\nHi"),
        Message("assistant", "Hello"),
        Message("user", "Why?\n\n[system message]\nREFERENCES\n[end of system message]\n\nWhy?"),
    ]
    assert note == "system folded into a user turn; consecutive turns merged"
    assert conform(conversation, RULES["gemma-like"])[:2] == fitted[:2]  # the conversation's turns unchanged


def test_under_mistrals_rules_only_the_first_system_turn_stays() -> None:
    prompt = [
        Message("system", "Be brief."),
        Message("user", "Why?"),
        Message("system", "REFS"),
        Message("user", "Why?"),
    ]
    fitted = conform(prompt, RULES["mistral-like"])
    assert fitted == [
        Message("system", "Be brief."),
        Message("user", "Why?\n\n[system message]\nREFS\n[end of system message]\n\nWhy?"),
    ]
    render(MISTRAL_LIKE, [m.to_dict() for m in fitted])


def test_a_conversation_that_opens_with_the_assistant_gets_a_user_turn_first() -> None:
    fitted = conform([Message("assistant", "Welcome!"), Message("user", "Thanks")], STRICT)
    assert fitted == [Message("user", OPENING_TURN), Message("assistant", "Welcome!"), Message("user", "Thanks")]


def test_tool_results_become_user_turns_where_the_role_is_refused() -> None:
    messages = [
        Message("user", "Weather?"),
        Message("assistant", "Checking."),
        Message("tool", "Sunny"),
        Message("user", "So?"),
    ]
    assert conform(messages, RULES["no-tool"])[2] == Message("user", "[tool result]\nSunny\n[end of tool result]")
    gemma = conform(messages, RULES["gemma-like"])
    assert [m.role for m in gemma] == ["user", "assistant", "user"]
    render(GEMMA_LIKE, [m.to_dict() for m in gemma])


def test_exercised_names_what_a_conversation_would_break() -> None:
    assert exercised([Message("user", "u")]) == frozenset()
    assert exercised([Message("system", "s"), Message("user", "u")]) == {"system"}
    assert exercised([Message("user", "u"), Message("system", "s"), Message("user", "u")]) == {
        "system",
        "system_first",
        "alternate",
    }
    assert exercised([Message("assistant", "a"), Message("user", "u"), Message("tool", "t")]) == {"alternate", "tool"}


def test_declared_rules_read_from_the_config() -> None:
    assert TemplateRules.of(ChatTemplateRules(system="fold", alternate=True)) == TemplateRules("fold", True, True)
    assert TemplateRules.of(ChatTemplateRules(system=False)) == TemplateRules("fold")
    assert TemplateRules.of(ChatTemplateRules(system="first", tool=False)) == TemplateRules("first", tool=False)
    with pytest.raises(ConfigError) as err:
        load_config(
            {
                "name": "x",
                "backends": {"api": {"type": "openai", "model": "m", "chat_template": {"system": "never"}}},
                "layers": [{"agents": [{"backend": "api"}]}],
                "aggregator": {"backend": "api"},
            }
        )
    assert err.value.path == "backends.api.chat_template.system"


def test_a_vllm_chat_template_is_a_file_or_the_template_itself(tmp_path: Path) -> None:
    path = tmp_path / "gemma.jinja"
    path.write_text(GEMMA_LIKE)
    assert chat_template_text(str(path), "f") == GEMMA_LIKE
    assert chat_template_text(CHATML, "f") == CHATML
    assert chat_template_text(None, "f") is None
    with pytest.raises(ConfigError, match="no such file") as err:
        chat_template_text(str(tmp_path / "missing.jinja"), "backends.local.chat_template")
    assert err.value.path == "backends.local.chat_template"
    (tmp_path / "plain.txt").write_text("just words")
    with pytest.raises(ConfigError, match="holds no Jinja template"):
        chat_template_text(str(tmp_path / "plain.txt"), "f")


@pytest.mark.parametrize(
    ("status", "message", "constraints"),
    [
        (400, "System role not supported", {"system"}),  # vLLM's server on Gemma
        (
            400,
            "Conversation roles must alternate user/assistant/user/assistant/... Conversation roles must "
            "alternate user/assistant/user/assistant/...",
            {"alternate"},
        ),  # older vLLM: the message twice
        (
            422,
            "Template error: syntax error: Conversation roles must alternate user/assistant/user/assistant/... "
            "(in <string>:1)",
            {"alternate"},
        ),  # TGI
        (
            500,
            "\n------------\nWhile executing CallExpression at line 19, column 27 in source:\n...\nError: Jinja "
            "Exception: Conversation roles must alternate user/assistant/user/assistant/...",
            {"alternate"},
        ),  # llama.cpp
        (
            500,
            "Error: Jinja Exception: After the optional system message, conversation roles must alternate user "
            "and assistant roles except for tool calls and results.",
            {"alternate"},
        ),  # llama.cpp, Devstral
        (
            400,
            "Only user and assistant roles are supported, with the exception of an initial optional system message!",
            {"system_first", "tool"},
        ),  # Mistral
        (400, "System message must be at the beginning.", {"system_first"}),
        (400, "Tool role not supported", {"tool"}),
        (400, "scripted 400", set()),
        (401, "System role not supported", set()),  # not a template's status
    ],
)
def test_an_upstream_refusal_names_the_constraint(status: int, message: str, constraints: set[str]) -> None:
    cls = ServerError if status >= 500 else BadRequestError
    assert refusal(cls(f"up: HTTP {status}: {message}", backend="up", status=status)) == constraints


# ---- every prompt builder against every template -------------------------------------------------------------

_WORDS = st.text(alphabet="abcdefghij ,.?", min_size=1, max_size=24).map(str.strip).filter(bool)


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """A client's conversation: a system turn or not, 1-4 exchanges (tool results after some assistant turns,
    sometimes two user turns in a row), ending with the user."""
    turns: list[Message] = []
    if draw(st.booleans()):
        turns.append(Message("system", draw(_WORDS)))
    for i in range(draw(st.integers(1, 4))):
        turns.append(Message("user", f"u{i} " + draw(_WORDS)))
        if draw(st.integers(0, 4)) == 0:
            turns.append(Message("user", f"again{i} " + draw(_WORDS)))
        turns.append(Message("assistant", f"a{i} " + draw(_WORDS)))
        if draw(st.integers(0, 3)) == 0:
            turns.append(Message("tool", f"t{i} " + draw(_WORDS)))
    turns.append(Message("user", "last " + draw(_WORDS)))
    return turns


def prompts(
    conversation: list[Message], samples: list[list[str]], at: ReferencesAt, system_prompt: str | None
) -> list[tuple[str, list[Message], list[Message] | None]]:
    """(builder, prompt, the prompt it extends under ``at: end``) for every prompt builder of moa, for each layer
    whose proposals are ``samples`` (layer 1 first)."""
    request = ChatRequest(conversation)
    deception = DeceptionConfig()
    synthesize = SynthesizeAggregator(SynthesizeConfig(backend="b"), at)
    sequential = SequentialAggregator(SelfMoASeqConfig(backend="b", window=3), at)
    base = with_system_prompt(conversation, system_prompt)
    out: list[tuple[str, list[Message], list[Message] | None]] = [
        ("layer 1", base, None),
        ("deceptive layer 1", deceptive_messages(request, [], deception, system_prompt, at), None),
        ("judge", judge_messages(conversation[-1].content, "answer one", "answer two"), None),
    ]
    extends = base if at == "end" else None
    for refs in samples:
        proposals = [Proposal(1, f"p{i}", text) for i, text in enumerate(refs)]
        out.append(("later layer", with_references(base, refs, SYNTHESIZE_INSTRUCTIONS, at), extends))
        out.append(("deceptive later layer", deceptive_messages(request, refs, deception, system_prompt, at), extends))
        synthesized = synthesize.messages(request, proposals)
        out.append(("synthesize", synthesized, conversation if at == "end" else None))
        out.append(("self-moa-seq first step", sequential.step_messages(request, None, refs[:3]), None))
        out.append(("self-moa-seq later step", sequential.step_messages(request, refs[0], refs[1:3]), None))
    return out


def _prefix(template: str, messages: list[Message], rules: TemplateRules) -> str:
    """What a prompt extending ``messages`` must start with: the rendered conversation up to its last text."""
    text = render(template, [m.to_dict() for m in conform(messages, rules)], add_generation_prompt=False)
    last = messages[-1].content
    return text[: text.rindex(last) + len(last)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    conversation=conversations(),
    samples=st.lists(st.lists(_WORDS, min_size=1, max_size=6), min_size=0, max_size=2),  # n samples, 1-3 layers
    at=st.sampled_from(["end", "system"]),
    system_prompt=st.one_of(st.none(), _WORDS),
)
def test_every_prompt_builder_renders_under_every_template(
    conversation: list[Message], samples: list[list[str]], at: ReferencesAt, system_prompt: str | None
) -> None:
    for name, template in TEMPLATES.items():
        rules = RULES[name]
        for builder, prompt, extends in prompts(conversation, samples, at, system_prompt):
            sent = conform(prompt, rules)
            where = f"{builder} under {name}"
            rendered = render(template, [m.to_dict() for m in sent])  # raises if the template refuses it
            for m in prompt:
                assert m.content in rendered, f"{where}: a turn's text was lost"
            roles = [m.role for m in sent if m.role != "system"]
            if rules.alternate:
                assert roles[0] == roles[-1] == "user", where
                assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), where
            if rules.system == "fold":
                assert "system" not in {m.role for m in sent}, where
            if extends is not None:  # the cache-friendly layout: the conversation is the prompt's prefix
                assert rendered.startswith(_prefix(template, extends, rules)), f"{where}: prefix not kept"


def test_no_tool_template_refuses_only_the_tool_role() -> None:
    render(NO_TOOL, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    with pytest.raises(Exception, match="Tool role not supported"):
        render(NO_TOOL, [{"role": "tool", "content": "t"}])
