"""Masking of secrets (API keys, configured header values) in text that came from an upstream.

The rule: a secret of at least ``MIN_FREE_LENGTH`` characters is masked wherever it occurs; a shorter one only
where it stands as a whole token, i.e. not touching a token character (letters, digits and ``._~+/-``) on either
side, so that a key ``1`` masks ``key 1 refused`` but leaves ``127.0.0.1`` alone. Longer secrets are matched
first. Classify an error (status, context-length hints) before masking its message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_FREE_LENGTH = 8
MASK = "***"
_TOKEN_CHARS = r"A-Za-z0-9._~+/\-"


class Redactor:
    """Holds secret values and masks them in text; its repr never shows them."""

    __slots__ = ("_pattern", "_count")

    def __init__(self, secrets: Iterable[str | None]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._count = len(values)
        alternatives = [
            re.escape(s) if len(s) >= MIN_FREE_LENGTH else rf"(?<![{_TOKEN_CHARS}]){re.escape(s)}(?![{_TOKEN_CHARS}])"
            for s in values
        ]
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None

    def __call__(self, text: str) -> str:
        """``text`` with every secret occurrence (per the module's rule) replaced by ``***``."""
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def __repr__(self) -> str:
        return f"Redactor({self._count} secrets)"

    def __bool__(self) -> bool:
        return self._pattern is not None


__all__ = ["MASK", "MIN_FREE_LENGTH", "Redactor"]
