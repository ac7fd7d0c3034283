"""Progress of a batch: a tqdm bar on a terminal, a plain line when something changed otherwise (logs, CI).

Both show done / total, failed, the items in flight, the rate of this run, the ETA, the tokens spent and, once a
priced answer came, the dollars spent. Rate and ETA are shown only once an item of this run finished (before,
nothing is known: "0.00/s" and an ETA from it would be made up). The ETA counts the work in flight: with
``concurrency`` items running at once, each taking the mean time the finished ones took, the items in flight end
one mean duration after they started and the queued ones follow in waves of ``concurrency``. On a terminal the
bar redraws on a clock; plain output prints a line when the counts changed, and otherwise one every
``quiet_s`` (60 s) so a stalled run still shows that it is alive.
"""

from __future__ import annotations

import asyncio
import math
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
    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO,
        *,
        done: int = 0,
        interval_s: float = 10.0,
        tty: bool | None = None,
        concurrency: int = 1,
        quiet_s: float = 60.0,
    ) -> None:
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
        self.concurrency = max(1, concurrency)
        self.quiet_s = quiet_s
        self._running: dict[int, float] = {}  # in flight: token -> start time
        self._next_token = 0
        self._durations = 0.0  # summed over the items of this run that finished
        self._finished = 0
        self._shown: tuple[int, int] | None = None  # (done, failed) at the last plain line
        self._shown_at = 0.0

    def begin(self) -> int:
        """An item starts; returns the token to pass to ``advance``."""
        self._next_token += 1
        self._running[self._next_token] = time.monotonic()
        return self._next_token

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def advance(
        self, *, done: int = 0, failed: int = 0, tokens: int = 0, cost_usd: float | None = None, item: int | None = None
    ) -> None:
        """Count finished work; ``item`` (from ``begin``) ends that item and times it."""
        if item is not None and (started := self._running.pop(item, None)) is not None:
            self._durations += time.monotonic() - started
            self._finished += 1
        self.done += done
        self.failed += failed
        self.tokens += tokens
        if cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost_usd

    def eta_s(self) -> float | None:
        """Seconds until the last item ends (None until an item of this run finished)."""
        if self._finished == 0:
            return None
        now = time.monotonic()
        mean = self._durations / self._finished
        left = self.total - self.done - self.failed
        queued = max(0, left - len(self._running))
        running_end = max((max(0.0, mean - (now - t)) for t in self._running.values()), default=0.0)
        return running_end + math.ceil(queued / self.concurrency) * mean

    def _parts(self) -> list[str]:
        elapsed = time.monotonic() - self._started
        fresh = self.done - self._resumed
        left = self.total - self.done - self.failed
        eta = self.eta_s()
        known = fresh > 0 and elapsed > 0
        rate = f"{fresh / elapsed:.2f}/s" if known else "rate -"
        spent = [] if self.cost_usd is None else [f"${self.cost_usd:.4f}"]
        return [
            f"{self.done}/{self.total} done",
            f"{self.failed} failed",
            *([f"{len(self._running)} in flight"] if self._running else []),
            rate,
            f"ETA {_duration(eta)}" if eta is not None and left > 0 else "ETA -",
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
            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=self.label,
                file=self.stream,
                bar_format=self._bar_format(),
                ascii=BAR_CHARSET,
                dynamic_ncols=True,
                leave=True,
            )
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
            self._shown, self._shown_at = (self.done, self.failed), time.monotonic()
        self.stream.flush()

    def changed(self) -> bool:
        """Whether a plain line is due: the counts changed since the last, or it has been quiet ``quiet_s``."""
        return (self.done, self.failed) != self._shown or time.monotonic() - self._shown_at >= self.quiet_s

    async def heartbeat(self) -> None:
        """Until cancelled, every ``interval_s``: redraw the bar, or print a plain line when one is due."""
        while True:
            await asyncio.sleep(self.interval_s)
            if self.tty or self.changed():
                self.show()


__all__ = ["Progress"]
