"""What a newcomer's first answers look like: prompt markup and repetition over AlpacaEval instructions.

    python -m evaluations.first_run --limit 50 --out answers.jsonl [-c default] [--seed 7] [--no-fence-stops]
    python -m evaluations.first_run --table a.jsonl b.jsonl ...

Sends the first ``--limit`` instructions of ``moa/data/instructions.json`` (AlpacaEval's) to one ensemble,
``--concurrency`` at a time so a local engine batches them, and prints how many answers hold a reference fence
(``<<reference ...>>`` / ``<<end of reference ...>>``, whole or cut), how many repeat one sentence three or more
times, their mean length and the seconds the answers took.

Each answer is appended to ``--out`` (JSON lines) the moment it is done, so a run cut short keeps what it
finished, and a rerun with the same ``--out`` sends only the instructions not answered yet. ``--table`` prints
one row per such file. The per-call ``timeout_s`` of every backend is set to ``--timeout`` (default 3600 s): on
two CPU cores a local engine shares its throughput among every request in flight, so a whole call of a request
that waits its turn in the engine's batch takes minutes, not the seconds one request alone takes.

``--no-fence-stops`` measures the aggregator as it was before the fence stops (commit 16527cc): the calls that
read references get no fence stop strings and moa does not cut at a fence, everything else being today's code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

#: a reference fence, whole or cut short: its opening ``<<`` and the word that names it
FENCE = re.compile(r"<<\s*(end of )?reference", re.IGNORECASE)
#: a sentence ends at . ! ? or a line break
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
#: sentences shorter than this many words ("Yes.", a list marker) are not counted as repeated
MIN_WORDS = 4
REPEATS = 3


def has_fence(text: str) -> bool:
    return FENCE.search(text) is not None


def repeated_sentence(text: str, times: int = REPEATS) -> str | None:
    """The first sentence of at least ``MIN_WORDS`` words that occurs ``times`` or more times in ``text``
    (compared without case, spacing and punctuation), or ``None``."""
    counts: Counter[str] = Counter()
    for raw in SENTENCE_END.split(text):
        words = re.findall(r"\w+", raw.lower())
        if len(words) >= MIN_WORDS:
            counts[" ".join(words)] += 1
    for sentence, count in counts.items():
        if count >= times:
            return sentence
    return None


@dataclass(frozen=True, slots=True)
class Answer:
    """One finished instruction, one line of the ``--out`` file."""

    index: int  # its place in instructions.json
    instruction: str
    text: str
    completion_tokens: int  # the final answer's
    total_tokens: int  # every call's completion tokens (samples, aggregation, reruns)
    finish_reason: str | None
    fence: bool
    repeated: str | None
    run: str  # which run of the file answered it (a rerun resumes)
    done_s: float  # seconds from that run's first request to this answer
    failed: str | None = None  # the error, for an instruction that got no answer (retried by a rerun)


@dataclass(frozen=True, slots=True)
class Summary:
    label: str
    answers: int
    failed: int
    fences: int
    repeating: int
    mean_words: float
    mean_tokens: float  # the final answer's
    mean_total_tokens: float  # every call's
    cut_at_cap: int  # finish_reason "length"
    seconds: float  # the runs' wall time, summed
    answers_per_minute: float = field(default=0.0)


def load_instructions(limit: int, offset: int = 0) -> list[tuple[int, str]]:
    rows = json.loads(resources.files("moa.data").joinpath("instructions.json").read_text(encoding="utf-8"))
    return [(offset + i, str(r["instruction"])) for i, r in enumerate(rows[offset : offset + limit])]


def read_answers(path: Path) -> list[Answer]:
    """The answers a ``--out`` file holds, the last line per instruction winning (a failed one retried)."""
    if not path.exists():
        return []
    latest: dict[int, Answer] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            answer = Answer(**json.loads(line))
            latest[answer.index] = answer
    return sorted(latest.values(), key=lambda a: a.index)


def pending(path: Path, instructions: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The instructions ``path`` holds no answer for yet (one that failed is sent again)."""
    done = {a.index for a in read_answers(path) if a.failed is None}
    return [(i, text) for i, text in instructions if i not in done]


def append_answer(out: TextIO, answer: Answer) -> None:
    out.write(json.dumps(asdict(answer)) + "\n")
    out.flush()


def summarize(label: str, rows: list[Answer]) -> Summary:
    answers = [a for a in rows if a.failed is None]
    n = len(answers) or 1
    runs: dict[str, float] = {}
    for a in rows:
        runs[a.run] = max(runs.get(a.run, 0.0), a.done_s)
    seconds = sum(runs.values())
    return Summary(
        label=label,
        answers=len(answers),
        failed=len(rows) - len(answers),
        fences=sum(a.fence for a in answers),
        repeating=sum(a.repeated is not None for a in answers),
        mean_words=round(sum(len(a.text.split()) for a in answers) / n, 1),
        mean_tokens=round(sum(a.completion_tokens for a in answers) / n, 1),
        mean_total_tokens=round(sum(a.total_tokens for a in answers) / n, 1),
        cut_at_cap=sum(a.finish_reason == "length" for a in answers),
        seconds=round(seconds, 1),
        answers_per_minute=round(len(answers) / seconds * 60, 2) if seconds else 0.0,
    )


def with_timeout(config: Any, timeout_s: float) -> Any:
    """``config`` with every backend's per-call ``timeout_s`` set to ``timeout_s``."""
    backends = {name: b.model_copy(update={"timeout_s": timeout_s}) for name, b in config.backends.items()}
    return config.model_copy(update={"backends": backends})


def without_fence_stops() -> None:
    """The code before the fence stops: no call that reads references is given (or cut at) a fence stop string."""
    import aggregators.sequential
    import aggregators.synthesize
    import moa.engine

    for module in (aggregators.synthesize, aggregators.sequential, moa.engine):
        module.REFERENCE_STOPS = ()  # type: ignore[attr-defined]


async def measure(
    config: Any, todo: list[tuple[int, str]], concurrency: int, seed: int | None, out: TextIO, run: str
) -> float:
    """Answer ``todo``, appending each answer to ``out`` when it is done; the engine start's seconds."""
    from moa.ensemble import Ensemble

    gate = asyncio.Semaphore(concurrency)
    overrides: dict[str, Any] = {} if seed is None else {"seed": seed}

    async with Ensemble.from_config(config) as ens:
        started = time.perf_counter()
        await ens.astart()
        start_s = time.perf_counter() - started
        began = time.perf_counter()

        async def one(index: int, instruction: str) -> None:
            async with gate:
                try:
                    result = await ens.acomplete([{"role": "user", "content": instruction}], **overrides)
                except Exception as e:  # a failed answer is written down (a rerun retries it), not fatal
                    print(f"failed: {instruction[:60]!r}: {e}", file=sys.stderr)
                    failed = f"{type(e).__name__}: {e}"
                    append_answer(
                        out, Answer(index, instruction, "", 0, 0, None, False, None, run, _since(began), failed)
                    )
                    return
            text = result.text
            final = [r for r in result.trace if r.role == "aggregator"]
            tokens = final[-1].completion_tokens if final else 0
            total = sum(r.completion_tokens for r in result.trace)
            reason = result.choices[0].finish_reason
            fence, repeated = has_fence(text), repeated_sentence(text)
            answer = Answer(index, instruction, text, tokens, total, reason, fence, repeated, run, _since(began))
            append_answer(out, answer)

        await asyncio.gather(*(one(i, text) for i, text in todo))
    return start_s


def _since(began: float) -> float:
    return round(time.perf_counter() - began, 2)


def print_table(paths: list[Path], asked: set[int]) -> None:
    """One row per ``--out`` file, over the instructions in ``asked`` (``--limit``/``--offset``) it answered."""
    print(
        "| variant | answers | fences | repeating 3+ | cut at cap | mean answer tokens | mean tokens, all calls | s | answers/min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        s = summarize(path.stem, [a for a in read_answers(path) if a.index in asked])
        print(
            f"| {s.label} | {s.answers} ({s.failed} failed) | {s.fences} | {s.repeating} | {s.cut_at_cap} | "
            f"{s.mean_tokens} | {s.mean_total_tokens} | {s.seconds} | {s.answers_per_minute} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluations.first_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="default", help="a recipe name or a config file (default: default)")
    parser.add_argument("--limit", type=int, default=50, help="how many instructions (default 50)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many instructions first")
    parser.add_argument("--concurrency", type=int, default=10, help="requests in flight at once (default 10)")
    parser.add_argument("--seed", type=int, help="seed every request with this (default: unseeded)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="every backend's per-call timeout_s (3600)")
    parser.add_argument("--out", type=Path, help="append each answer here (JSON lines); a rerun resumes")
    parser.add_argument("--no-fence-stops", action="store_true", help="the aggregator without fence stops (before)")
    parser.add_argument("--table", type=Path, nargs="+", help="print one row per --out file and exit")
    parser.add_argument("--verbose", action="store_true", help="let local engines print to the terminal")
    args = parser.parse_args(argv)
    if args.table:
        print_table(args.table, {i for i, _ in load_instructions(args.limit, args.offset)})
        return 0
    if args.limit < 1 or args.concurrency < 1 or args.timeout <= 0:
        parser.error("--limit and --concurrency must be >= 1, --timeout > 0")
    if args.out is None:
        parser.error("--out is required (each answer is written there as it is done)")

    from moa.cli import engine_log_path, quiet_third_party
    from moa.config.loading import load_config
    from moa.logs import native_output_to

    if args.no_fence_stops:
        without_fence_stops()
    config = with_timeout(load_config(args.config), args.timeout)
    instructions = load_instructions(args.limit, args.offset)
    todo = pending(args.out, instructions)
    run = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{len(instructions) - len(todo)} answered already in {args.out}, {len(todo)} to send", file=sys.stderr)
    if todo:
        with args.out.open("a", encoding="utf-8") as out:
            if args.verbose:
                start_s = asyncio.run(measure(config, todo, args.concurrency, args.seed, out, run))
            else:
                quiet_third_party()
                with native_output_to(engine_log_path()):
                    start_s = asyncio.run(measure(config, todo, args.concurrency, args.seed, out, run))
        print(f"engine start {start_s:.1f} s", file=sys.stderr)
    asked = {i for i, _ in instructions}
    s = summarize(args.out.stem, [a for a in read_answers(args.out) if a.index in asked])
    print(
        f"{s.label}: {s.answers} answers ({s.failed} failed) | with a fence: {s.fences} | "
        f"repeating a sentence {REPEATS}+ times: {s.repeating} | mean {s.mean_words} words, "
        f"{s.mean_tokens} answer tokens, {s.mean_total_tokens} tokens all calls, {s.cut_at_cap} cut at the cap | "
        f"{s.seconds} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
