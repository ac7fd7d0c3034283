"""What ``moa run`` shows of a request's progress on stderr, and the timeline ``--trace`` ends with.

On a terminal, ``ProgressView`` keeps one line a call (layer, agent, state, tokens, seconds) and redraws them in
place; elsewhere it prints one plain line an event. It stops drawing once the answer's tokens go to the same
terminal (``freeze``), so the two never overwrite each other.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from moa.progress import CALL_ENDS, ProgressEvent, ProgressKind
from moa.types import CallRecord

#: how often a live view redraws (the seconds of running calls tick)
REDRAW_S = 0.2
#: the width of a timeline's bars, in characters
TIMELINE_WIDTH = 40

_STATES: dict[ProgressKind, str] = {
    "started": "running",
    "first_token": "streaming",
    "finished": "done",
    "failed": "failed",
    "cancelled": "cancelled",
    "layer_done": "",
}
_OUTCOMES: dict[str, str] = {"done": "ok", "failed": "error", "cancelled": "cancelled"}


@dataclass(slots=True)
class CallRow:
    """One call as the view knows it: where it ran, its state, tokens and times (seconds since the request)."""

    layer: int
    role: str
    agent: str
    step: str | None
    state: str
    tokens: int
    start_s: float
    end_s: float | None = None

    @property
    def name(self) -> str:
        return self.agent if self.step is None else f"{self.agent} [{self.step}]"

    def seconds(self, now_s: float) -> float:
        return (self.end_s if self.end_s is not None else now_s) - self.start_s

    def line(self, now_s: float) -> str:
        return f"L{self.layer} {self.role:<10} {self.name[:28]:<28} {self.state:<9} {self.tokens:>5} tok {self.seconds(now_s):>6.1f} s"


class ProgressView:
    """Shows the events of one request on ``out``: live lines on a terminal (``live``), else plain lines; with
    ``out`` ``None`` it only keeps the rows (for the timeline)."""

    def __init__(self, out: TextIO | None, live: bool) -> None:
        self.out = out
        self.live = live and out is not None
        self.rows: dict[int, CallRow] = {}
        self.now_s = 0.0
        self._drawn = 0  # lines of the last redraw, to move back over
        self._frozen = False
        self._ticker: asyncio.Task[None] | None = None

    def on_event(self, event: ProgressEvent) -> None:
        self.now_s = max(self.now_s, event.elapsed_s)
        if event.kind != "layer_done":
            self._update(event)
        if self.out is None or self._frozen:
            return
        if self.live:
            self.draw()
        else:
            print(_plain(event), file=self.out, flush=True)

    def _update(self, event: ProgressEvent) -> None:
        row = self.rows.get(event.call)
        if row is None:
            row = self.rows[event.call] = CallRow(
                event.layer, event.role, event.agent, event.step, "", 0, event.elapsed_s
            )
        row.state = _STATES[event.kind]
        row.tokens = max(row.tokens, event.tokens)
        if event.kind in CALL_ENDS:
            row.end_s = event.elapsed_s

    def draw(self) -> None:
        """Redraw every call's line in place of the last drawing."""
        if self.out is None or not self.live or self._frozen:
            return
        width = max(20, _columns(self.out) - 1)  # a line that wraps would break the redraw
        lines = [r.line(self.now_s)[:width] for r in self.rows.values()]
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)

    def start(self) -> None:
        """Tick the seconds of running calls on a live view (from inside the running loop)."""
        if self.live:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time() - self.now_s
        while True:
            await asyncio.sleep(REDRAW_S)
            self.now_s = max(self.now_s, loop.time() - began)
            self.draw()

    def freeze(self) -> None:
        """Draw one last time and stop: the answer is about to be written to the terminal."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.draw()
        self._frozen = True


def _columns(out: TextIO) -> int:
    """The width of the terminal ``out`` writes to (``COLUMNS``, else 80, when it does not say)."""
    try:
        columns = os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return columns or shutil.get_terminal_size().columns


def _plain(event: ProgressEvent) -> str:
    at = f"[{event.elapsed_s:7.2f} s]"
    if event.kind == "layer_done":
        return f"{at} layer {event.layer} done, {event.tokens} tokens"
    agent = event.agent if event.step is None else f"{event.agent} [{event.step}]"
    line = f"{at} layer {event.layer} {event.role} {agent} ({event.model}): {_STATES[event.kind]}"
    if event.kind in CALL_ENDS or event.kind == "first_token":
        line += f", {event.tokens} tokens"
    return line if event.error is None else f"{line}: {event.error}"


def timeline(rows: list[CallRow], width: int = TIMELINE_WIDTH) -> list[str]:
    """A text Gantt chart of the calls: one line each, a bar from its start to its end on a common scale."""
    if not rows:
        return []
    end = max((r.end_s if r.end_s is not None else r.start_s) for r in rows) or 1e-9
    scale = width / end
    lines = [
        f"timeline: {len(rows)} calls over {end:.2f} s (each column {end / width:.3f} s)",
        f"{'layer':>5} {'agent':<28} {'start':>7} {'end':>7}  {'outcome':<9} |{' ' * width}|",
    ]
    for r in sorted(rows, key=lambda r: (r.start_s, r.layer)):
        stop = r.end_s if r.end_s is not None else end
        a = min(width - 1, int(r.start_s * scale))
        b = max(a + 1, min(width, round(stop * scale)))
        bar = " " * a + "#" * (b - a) + " " * (width - b)
        outcome = _OUTCOMES.get(r.state, r.state or "running")
        lines.append(f"{r.layer:>5} {r.name[:28]:<28} {r.start_s:>7.2f} {stop:>7.2f}  {outcome:<9} |{bar}|")
    return lines


def print_calls(calls: list[CallRecord], out: TextIO, startup: Sequence[tuple[str, str, float]] = ()) -> None:
    """``--trace``'s table: the local engines' start-up steps first (``startup``: backend, step, seconds), then one
    row a model call. Agent and model names are printed whole: the columns widen to the longest."""
    agents = [r.agent if r.step is None else f"{r.agent} [{r.step}]" for r in calls]
    agent_w = max([24, *map(len, agents), *(len(b) for b, _, _ in startup)])
    model_w = max([28, *(len(r.model) for r in calls), *(len(s) for _, s, _ in startup)])
    print(
        f"{'layer':>5} {'role':<10} {'agent':<{agent_w}} {'model':<{model_w}} {'in':>6} {'out':>6} {'sec':>7} "
        f"{'retry':>5}  outcome",
        file=out,
    )
    for backend, step, seconds in startup:
        print(
            f"{'-':>5} {'startup':<10} {backend:<{agent_w}} {step:<{model_w}} {'':>6} {'':>6} {seconds:>7.2f} "
            f"{'':>5}  ok",
            file=out,
        )
    for r, agent in zip(calls, agents, strict=True):
        outcome = r.outcome if r.error is None else f"{r.outcome}: {r.error}"
        print(
            f"{r.layer:>5} {r.role:<10} {agent:<{agent_w}} {r.model:<{model_w}} {r.prompt_tokens:>6} "
            f"{r.completion_tokens:>6} {r.latency_s:>7.2f} {r.retries:>5}  {outcome}",
            file=out,
        )
