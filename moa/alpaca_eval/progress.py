"""Progress of a batch: a tqdm bar on a terminal, a plain line every so often otherwise (logs, CI).

Both show done / total, failed, the rate of this run, the ETA, the tokens spent and, once a priced answer came,
the dollars spent. ``heartbeat`` redraws on a
clock, so a stalled run still shows that it is alive.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TextIO

from tqdm import tqdm

BAR_WIDTH = 24
#: tqdm's bar in two symbols (empty, full), as moa drew it before
BAR_CHARSET = ".#"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO, *, done: int = 0, interval_s: float = 10.0,
                 tty: bool | None = None) -> None:  # fmt: skip
        self.label = label
        self.total = total
        self.stream = stream
        self.done = done
        self.failed = 0
        self.tokens = 0
        self.cost_usd: float | None = None  # None until an answer with a cost comes
        self._resumed = done
        self._started = time.monotonic()
        self.tty = stream.isatty() if tty is None else tty
        self.interval_s = 0.2 if self.tty else interval_s
        self._bar: Any = None  # the tqdm bar, opened at the first show on a terminal

    def advance(self, *, done: int = 0, failed: int = 0, tokens: int = 0, cost_usd: float | None = None) -> None:
        self.done += done
        self.failed += failed
        self.tokens += tokens
        if cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost_usd

    def _parts(self) -> list[str]:
        elapsed = time.monotonic() - self._started
        fresh = self.done - self._resumed
        rate = fresh / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done - self.failed
        eta = _duration(left / rate) if rate > 0 and left > 0 else "-"
        spent = [] if self.cost_usd is None else [f"${self.cost_usd:.4f}"]
        return [
            f"{self.done}/{self.total} done",
            f"{self.failed} failed",
            f"{rate:.2f}/s",
            f"ETA {eta}",
            f"{_count(self.tokens)} tokens",
            *spent,
            f"elapsed {_duration(elapsed)}",
        ]

    def line(self) -> str:
        """The current state in one plain line (no bar)."""
        return f"{self.label}: " + ", ".join(self._parts())

    def _bar_format(self) -> str:
        # tqdm fills in {desc} and {bar}; the figures are ours, braces escaped for str.format. \x1b[2K clears
        # the terminal line first, so nothing another writer left on it shows through
        stats = " | ".join(self._parts()).replace("{", "{{").replace("}", "}}")
        return "\x1b[2K{desc} [{bar:" + str(BAR_WIDTH) + "}] " + stats

    def _draw(self, final: bool) -> None:
        if self._bar is None:  # tqdm draws the bar once as it opens
            self._bar = tqdm(total=self.total, initial=self.done, desc=self.label, file=self.stream,
                             bar_format=self._bar_format(), ascii=BAR_CHARSET, dynamic_ncols=True, leave=True)  # fmt: skip
            if not final:
                return
        self._bar.bar_format = self._bar_format()
        self._bar.n = self.done
        if final:
            self._bar.close()  # draws the last state and ends the line; a closed bar draws no more
        else:
            self._bar.refresh()

    def show(self, *, final: bool = False) -> None:
        if self.tty:
            self._draw(final)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    async def heartbeat(self) -> None:
        """Show the state every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.show()


__all__ = ["Progress"]
