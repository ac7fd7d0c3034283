"""Reading the option a multiple-choice answer settles on: ``Answer: (B)``, ``the answer is C``, or a bare ``(D)``."""

from __future__ import annotations

import re

# Labels are capital letters; the word "answer" may be in any case. After "answer" comes a separator, then maybe
# "is"/"would be" and "option", then the label.
_STATED = re.compile(
    r"(?i:\banswer\b)(?P<sep>[^A-Za-z0-9\n]{0,4})(?P<verb>(?i:is|would be)\b\s*[^A-Za-z0-9\s(]{0,2}\s*)?"
    r"(?P<option>(?i:option)\s+)?"
)
_PAREN = re.compile(r"\(([A-Z])\)")
_BARE = re.compile(r"([A-Z])(?![A-Za-z0-9])(?:\s+(?P<word>[a-z]+))?")
_CONNECTOR = re.compile(r"[:=\-\u2013\u2014]")  # "Answer: B", "answer - B", "answer = B"
_WORDS = "AI"  # labels that are also English words: the article "A", the pronoun "I"
_AFTER_OPTION = frozenset({"because", "since", "as", "is"})  # follow an option, never the article or the pronoun


def parse_option(text: str, labels: str = "ABCDEFGHIJ") -> str | None:
    """The option ``text`` concludes with, or ``None`` when it names none of ``labels``.

    In order of trust: the last option stated after "answer" in brackets, the last stated bare, the last bracketed.
    A bare "A" or "I" (also the article and the pronoun) counts only after "option", before a word that follows
    an option ("A because"), or joined to "answer" by "is", "would be", a colon or a dash and followed by no word.
    """
    stated_paren, stated_bare = None, None
    for m in _STATED.finditer(text):
        if (p := _PAREN.match(text, m.end())) and p.group(1) in labels:
            stated_paren = p.group(1)
        elif (b := _BARE.match(text, m.end())) and b.group(1) in labels and _clearly_an_option(m, b):
            stated_bare = b.group(1)
    if stated_paren or stated_bare:
        return stated_paren or stated_bare
    bracketed = [label for label in _PAREN.findall(text) if label in labels]
    return bracketed[-1] if bracketed else None


def _clearly_an_option(stated: re.Match[str], bare: re.Match[str]) -> bool:
    """Whether a bare letter after "answer" is an option, not a word of a sentence ("The answer I believe...")."""
    if bare.group(1) not in _WORDS or stated.group("option") or bare.group("word") in _AFTER_OPTION:
        return True
    joined = stated.group("verb") or _CONNECTOR.search(stated.group("sep"))
    return bool(joined) and bare.group("word") is None
