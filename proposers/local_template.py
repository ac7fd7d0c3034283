"""A local model's chat template: the override a backend's config gives (``chat_template:``, a file or the template
itself), and the template's rules, found by rendering probes through the tokenizer once (``chat_template.probe``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from moa.errors import ConfigError
from proposers.chat_template import TemplateRules, probe

logger = logging.getLogger(__name__)

_JINJA_MARKS = ("{%", "{{")


def chat_template_text(value: str | None, field: str) -> str | None:
    """The template a ``chat_template:`` value names: the value itself when it is Jinja, else the file at that
    path (``~`` expanded); ``None`` stays ``None`` (the model's own template)."""
    if value is None:
        return None
    if any(mark in value for mark in _JINJA_MARKS):
        return value
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else type(e).__name__
        raise ConfigError(f"{reason}: {value} (give a template file or the Jinja template itself)", field) from None
    if not any(mark in text for mark in _JINJA_MARKS):
        raise ConfigError(f"{value} holds no Jinja template", field)
    return text


def probe_tokenizer(tokenizer: Any, chat_template: str | None, backend: str) -> TemplateRules:
    """The rules of the template ``tokenizer`` renders with (``chat_template`` when given), logged once when they
    constrain the layout."""

    def render(messages: list[dict[str, str]]) -> str:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, chat_template=chat_template
        )
        return text if isinstance(text, str) else ""

    rules = probe(render)
    if rules != TemplateRules():
        logger.info("backend %r: its chat template takes %s; prompts are fitted to it", backend, rules.describe())
    return rules


__all__ = ["chat_template_text", "probe_tokenizer"]
