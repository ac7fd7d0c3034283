"""Progress lines for the long local steps (model conversion, engine start), written to stderr.

stdout carries answers; these lines tell a person at a terminal why nothing has happened for half a minute.
"""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"moa: {message}", file=sys.stderr, flush=True)


__all__ = ["say"]
