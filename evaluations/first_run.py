"""What a newcomer's first answers look like: prompt markup and repetition over AlpacaEval instructions.

    python -m evaluations.first_run --limit 50 [-c default] [--json out.json]

Sends the first ``--limit`` instructions of ``moa/data/instructions.json`` (AlpacaEval's) to one ensemble, all at
once so a local engine batches them, and prints how many answers hold a reference fence (``<<reference ...>>`` /
``<<end of reference ...>>``, whole or cut), how many repeat one sentence three or more times, their mean length
and the seconds the batch took (the engine start included when the ensemble is cold, reported apart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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
    instruction: str
    text: str
    completion_tokens: int  # the final answer's
    finish_reason: str | None
    fence: bool
    repeated: str | None


@dataclass(frozen=True, slots=True)
class Summary:
    config: str
    answers: int
    failed: int
    fences: int
    repeating: int
    mean_words: float
    mean_tokens: float
    cut_at_cap: int  # finish_reason "length"
    start_s: float
    batch_s: float


def load_instructions(limit: int, offset: int = 0) -> list[str]:
    rows = json.loads(resources.files("moa.data").joinpath("instructions.json").read_text(encoding="utf-8"))
    return [str(r["instruction"]) for r in rows[offset : offset + limit]]


def summarize(config: str, answers: list[Answer], failed: int, start_s: float, batch_s: float) -> Summary:
    n = len(answers) or 1
    return Summary(
        config=config,
        answers=len(answers),
        failed=failed,
        fences=sum(a.fence for a in answers),
        repeating=sum(a.repeated is not None for a in answers),
        mean_words=round(sum(len(a.text.split()) for a in answers) / n, 1),
        mean_tokens=round(sum(a.completion_tokens for a in answers) / n, 1),
        cut_at_cap=sum(a.finish_reason == "length" for a in answers),
        start_s=round(start_s, 1),
        batch_s=round(batch_s, 1),
    )


async def measure(
    config: str, instructions: list[str], concurrency: int, seed: int | None
) -> tuple[Summary, list[Answer]]:
    from moa.ensemble import Ensemble

    gate = asyncio.Semaphore(concurrency)
    failed = 0
    overrides: dict[str, Any] = {} if seed is None else {"seed": seed}

    async with Ensemble.from_config(config) as ens:
        started = time.perf_counter()
        await ens.astart()
        start_s = time.perf_counter() - started

        async def one(instruction: str) -> Answer | None:
            nonlocal failed
            async with gate:
                try:
                    result = await ens.acomplete([{"role": "user", "content": instruction}], **overrides)
                except Exception as e:  # a failed answer is counted, not fatal to the measurement
                    print(f"failed: {instruction[:60]!r}: {e}", file=sys.stderr)
                    failed += 1
                    return None
            text = result.text
            final = [r for r in result.trace if r.role == "aggregator"]
            tokens = final[-1].completion_tokens if final else 0
            reason = result.choices[0].finish_reason
            return Answer(instruction, text, tokens, reason, has_fence(text), repeated_sentence(text))

        began = time.perf_counter()
        got = await asyncio.gather(*(one(i) for i in instructions))
        batch_s = time.perf_counter() - began
    answers = [a for a in got if a is not None]
    return summarize(config, answers, failed, start_s, batch_s), answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluations.first_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="default", help="a recipe name or a config file (default: default)")
    parser.add_argument("--limit", type=int, default=50, help="how many instructions (default 50)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many instructions first")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (default 64)")
    parser.add_argument("--seed", type=int, help="seed every request with this (default: unseeded)")
    parser.add_argument("--json", type=Path, help="write the summary and every answer here")
    parser.add_argument("--verbose", action="store_true", help="let local engines print to the terminal")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.concurrency < 1:
        parser.error("--limit and --concurrency must be >= 1")

    from moa.cli import engine_log_path, quiet_third_party
    from moa.logs import native_output_to

    instructions = load_instructions(args.limit, args.offset)
    if args.verbose:
        summary, answers = asyncio.run(measure(args.config, instructions, args.concurrency, args.seed))
    else:
        quiet_third_party()
        with native_output_to(engine_log_path()):
            summary, answers = asyncio.run(measure(args.config, instructions, args.concurrency, args.seed))
    print(
        f"{summary.config}: {summary.answers} answers ({summary.failed} failed) | with a fence: {summary.fences} | "
        f"repeating a sentence {REPEATS}+ times: {summary.repeating} | mean {summary.mean_words} words, "
        f"{summary.mean_tokens} tokens, {summary.cut_at_cap} cut at the cap | engine start {summary.start_s} s, "
        f"{len(instructions)} requests {summary.batch_s} s"
    )
    if args.json is not None:
        payload = {"summary": asdict(summary), "answers": [asdict(a) for a in answers]}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
