"""Stop strings, kept on moa's side as well as sent: no text past one reaches a caller, whole or streamed.

A call that reads fenced references (``moa.prompts``) adds the fences' openers and closers to its stop strings:
a small model that has just read ``<<reference 3 ...>>`` blocks likes to go on writing them after its answer.
Every backend is sent them (with the caller's own, at most ``WIRE_STOPS`` together unless the caller sent more);
the text that comes back is still cut at the first stop string here, since a backend may ignore ``stop``, and a
fence cut short at the end (the token cap came first) is dropped with the blank space before it. A stream holds
back a tail that could be the start of a stop string until the next piece shows whether it is one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import replace

from moa.logprobs import StreamedPositions
from moa.types import Delta, GenerateResult, Generation, SamplingParams

#: OpenAI's API takes at most 4 stop sequences; extra ones are not sent past that (they are still enforced here)
WIRE_STOPS = 4
#: the shortest dangling start of a markup stop string that is dropped at the end of a text ("<<" is; "<" is not)
MIN_DANGLING = 2


def with_stops(params: SamplingParams, extra: Sequence[str]) -> SamplingParams:
    """``params`` with ``extra`` added after its own stop strings, while they number at most ``WIRE_STOPS``."""
    own = params.stop or ()
    room = max(WIRE_STOPS - len(own), 0)
    added = tuple(s for s in dict.fromkeys(extra) if s and s not in own)[:room]
    return params if not added else params.merged(stop=(*own, *added))


class StopFilter:
    """Text in piece by piece, text out up to the first stop string.

    ``stops`` cut the text where the first of them starts; ``markup`` (some of them: prompt markup such as
    reference fences) also takes the blank space before it, and is dropped when it dangles cut short at the end.
    """

    def __init__(self, stops: Sequence[str], markup: Sequence[str] = ()) -> None:
        self.markup = tuple(s for s in dict.fromkeys(markup) if s)
        self.stops = tuple(s for s in dict.fromkeys((*stops, *self.markup)) if s)
        self.held = ""  # received, not yet given out: it may start a stop string
        self.stopped = False

    def push(self, piece: str) -> str:
        """What of ``piece`` (with the text held back before it) can be given out now."""
        if self.stopped:
            return ""
        self.held += piece
        hits = [(i, s) for s in self.stops if (i := self.held.find(s)) >= 0]
        if hits:
            at, stop = min(hits)
            self.stopped = True
            out = self.held[:at]
            self.held = ""
            return out.rstrip() if stop in self.markup else out
        safe = len(self.held) - self._partial(self.stops, 1)
        if self.markup:  # blank space stays with a fence that may follow it
            safe = len(self.held[:safe].rstrip())
        out, self.held = self.held[:safe], self.held[safe:]
        return out

    def finish(self) -> str:
        """The rest, once the text has ended: a markup stop string cut short at its end is dropped."""
        rest, self.held = self.held, ""
        if self.stopped:
            return ""
        dangling = self._partial(self.markup, MIN_DANGLING, rest)
        return rest[: len(rest) - dangling].rstrip() if dangling else rest

    def _partial(self, stops: Sequence[str], shortest: int, text: str | None = None) -> int:
        """The length of the longest end of ``text`` (default: the held text) that some stop string starts with."""
        text = self.held if text is None else text
        best = 0
        for s in stops:
            for n in range(min(len(s) - 1, len(text)), max(shortest, best + 1) - 1, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def cut(self, text: str) -> str:
        """A whole text, cut as a stream of it would be."""
        return self.push(text) + self.finish()


def _cut_reason(f: StopFilter, g: Generation) -> str | None:
    return "stop" if f.stopped and not g.tool_calls else g.finish_reason


def cut_result(result: GenerateResult, stops: Sequence[str], markup: Sequence[str] = ()) -> GenerateResult:
    """Every generation of ``result`` cut at its first stop string (its finish reason then ``stop``); the rest of
    the result (usage, template note, seed) as it was."""
    if not stops and not markup:
        return result
    generations = []
    for g in result.generations:
        f = StopFilter(stops, markup)
        text = f.cut(g.text)
        generations.append(g if text == g.text else replace(g, text=text, finish_reason=_cut_reason(f, g)))
    return replace(result, generations=generations)


async def cut_stream(
    deltas: AsyncGenerator[Delta, None], stops: Sequence[str], markup: Sequence[str] = ()
) -> AsyncGenerator[Delta, None]:
    """``deltas`` with no text past the first stop string; the stream is still read to its end (its last delta
    carries the call's usage), its finish reason ``stop`` once a stop string was cut. Log-probability positions
    go out with the text they begin in (``moa.logprobs.StreamedPositions``). Closing it closes ``deltas``."""
    f = StopFilter(stops, markup)
    positions = StreamedPositions()

    def piece_of(text: str, *, ended: bool = False) -> Delta:
        sampled, alternatives = positions.given_out(len(text), ended=ended)
        return Delta(content=text, sampled=sampled, logprobs=alternatives)

    async with aclosing(deltas):
        async for delta in deltas:
            positions.add(delta.content, delta.sampled, delta.logprobs)
            piece = f.push(delta.content) if delta.content else ""
            ended = delta.finish_reason is not None
            if ended:
                piece += f.finish()
            out = piece_of(piece, ended=ended)
            if piece or delta.tool_calls or out.sampled:
                yield replace(out, tool_calls=delta.tool_calls)
            if delta.finish_reason is not None or delta.usage is not None:
                reason = "stop" if f.stopped and delta.finish_reason is not None else delta.finish_reason
                yield Delta(finish_reason=reason, usage=delta.usage, trace=delta.trace, defense=delta.defense)
    rest = f.finish()
    out = piece_of(rest, ended=True)
    if rest or out.sampled:
        yield out
