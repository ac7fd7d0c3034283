"""Reading the option a multiple-choice answer settles on: ``Answer: (B)``, ``the answer is C``, or a bare ``(D)``."""

from __future__ import annotations

import re

# Labels are capital letters; the word "answer" may be in any case.
_STATED = re.compile(r"(?i:\banswer\b)[^A-Za-z0-9\n]{0,4}(?:(?i:is|would be)\s+)?(?:(?i:option)\s+)?")
_PAREN = re.compile(r"\(([A-Z])\)")
_BARE = re.compile(r"([A-Z])(?![A-Za-z0-9])")


def parse_option(text: str, labels: str = "ABCDEFGHIJ") -> str | None:
    """The option ``text`` concludes with, or ``None`` when it names none of ``labels``.

    In order of trust: the last option stated after "answer" in brackets, the last stated bare, the last bracketed.
    """
    stated_paren, stated_bare = None, None
    for m in _STATED.finditer(text):
        rest = text[m.end() : m.end() + 4]
        if (p := _PAREN.match(rest)) and p.group(1) in labels:
            stated_paren = p.group(1)
        elif (b := _BARE.match(rest)) and b.group(1) in labels:
            stated_bare = b.group(1)
    if stated_paren or stated_bare:
        return stated_paren or stated_bare
    bracketed = [label for label in _PAREN.findall(text) if label in labels]
    return bracketed[-1] if bracketed else None
