"""Multiple-choice questions in the QuALITY format, and the prompt that asks one of them.

A JSONL file, one object a line, either flat::

    {"id": "q1", "passage": "...", "question": "...", "options": ["...", "...", "...", "..."], "gold": 2}

or as QuALITY releases it (``article`` with a list of ``questions``, each with ``question``, ``options`` and
``gold_label``). Gold (and an optional ``target``, the wrong option deceivers argue for) is 1-based like QuALITY's
``gold_label``, or a letter. Options are shown as (A), (B), ...; without a ``target`` one wrong option is drawn
per question with a seed.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa.errors import ConfigError

LABELS = string.ascii_uppercase


@dataclass(frozen=True, slots=True)
class Question:
    qid: str
    passage: str
    question: str
    options: list[str]
    gold: str  # a letter
    target: str  # a letter other than gold

    @property
    def labels(self) -> str:
        return LABELS[: len(self.options)]


def load_questions(path: str | Path, seed: int = 0) -> list[Question]:
    """Every question of a QuALITY-format JSONL file; problems name the line and the field."""
    questions = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not JSON: {e}", f"{path}:{n}") from None
        items = row.get("questions") if isinstance(row, dict) else None
        rows = [{**q, "passage": row.get("article")} for q in items] if isinstance(items, list) else [row]
        for k, item in enumerate(rows):
            fallback = f"{row.get('article_id', n)}-{k + 1}" if items else str(n)
            questions.append(_question(item, f"{path}:{n}", fallback, seed))
    return questions


def _question(row: dict[str, Any], where: str, fallback_id: str, seed: int) -> Question:
    for field in ("passage", "question", "options"):
        if not row.get(field):
            raise ConfigError("field required", f"{where}.{field}")
    options = [str(o) for o in row["options"]]
    if not 2 <= len(options) <= len(LABELS):
        raise ConfigError(f"must have 2 to {len(LABELS)} options", f"{where}.options")
    qid = str(row.get("id") or row.get("question_unique_id") or fallback_id)
    gold = _label(row.get("gold", row.get("gold_label")), len(options), f"{where}.gold")
    wrong = [label for label in LABELS[: len(options)] if label != gold]
    target = _label(row["target"], len(options), f"{where}.target") if row.get("target") else None
    if target == gold:
        raise ConfigError("must differ from gold: deceivers argue for a wrong option", f"{where}.target")
    return Question(
        qid, row["passage"], row["question"], options, gold, target or random.Random(f"{seed}:{qid}").choice(wrong)
    )


def _label(value: Any, count: int, where: str) -> str:
    """A 1-based option number or a letter, as a letter."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= count:
        return LABELS[value - 1]
    if isinstance(value, str) and len(value) == 1 and value.upper() in LABELS[:count]:
        return value.upper()
    raise ConfigError(f"must be an option number 1-{count} or a letter, got {value!r}", where)


def prompt(q: Question) -> str:
    """The user message that asks ``q``."""
    options = "\n".join(f"({label}) {text}" for label, text in zip(q.labels, q.options, strict=True))
    return (
        "Read the passage, then answer the multiple-choice question about it.\n\n"
        f"Passage:\n{q.passage}\n\nQuestion: {q.question}\n\n{options}\n\n"
        'Reason briefly from the passage, then give your final answer as the last line, in the form "Answer: (X)" '
        "where X is the letter of one option."
    )
