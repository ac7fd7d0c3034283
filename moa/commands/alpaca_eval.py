"""``moa alpaca-eval generate`` and ``moa alpaca-eval evaluate``.

Figures go to stdout, progress and the list of failed instructions to stderr. Exit status: 0 when every
instruction is done, 1 when some failed (rerun the same command to retry them), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from moa.alpaca_eval.batch import Failure
from moa.logs import engine_output_to_log

if TYPE_CHECKING:
    from moa.alpaca_eval.evaluate import EvaluationReport


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _print_failures(failures: list[Failure], instructions: list[str], what: str) -> None:
    print(f"{len(failures)} instruction(s) failed; rerun the same command to retry {what}:", file=sys.stderr)
    for f in failures:
        text = " ".join(instructions[f.index].split())
        print(f"  #{f.index} {text[:60]!r}: {f.error}", file=sys.stderr)


def cmd_estimate(args: argparse.Namespace) -> int:
    """The whole job's calls, worst-case tokens and cost from the config, running nothing."""
    from moa.alpaca_eval.data import load_instructions
    from moa.alpaca_eval.estimate import estimate_job
    from moa.config import load_config

    config = load_config(args.config)
    every = load_instructions(args.instructions)
    chosen = every[: args.limit] if args.limit else every
    print(estimate_job(config, [i.instruction for i in chosen], args.concurrency).line())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from moa.alpaca_eval.generate import GenerateOptions, generate

    if args.estimate:
        return cmd_estimate(args)
    options = GenerateOptions(
        config=args.config,
        output=args.output,
        generator=args.generator,
        instructions=args.instructions,
        limit=args.limit,
        concurrency=args.concurrency,
        traces=args.traces,
        allow_partial=args.allow_partial,
    )
    with engine_output_to_log("alpaca-eval", args.verbose):  # sys.stderr inside: the terminal, not the log
        report = asyncio.run(generate(options, sys.stderr))
    if report.failures:
        _print_failures(report.failures, [i.instruction for i in report.instructions], "them")
    fresh = report.done - report.resumed
    cost = "" if report.cost_usd is None else f", ${report.cost_usd:.4f}"
    status = (
        f"{report.done}/{report.total} instructions done ({report.resumed} from the checkpoint, {fresh} now, "
        f"{report.tokens} tokens{cost} in {report.wall_s:.1f} s)"
    )
    if report.written:
        print(f"wrote {report.output}: {status}")
    else:
        print(f"not written: {status}; the submission is written once all are done (or pass --allow-partial)")
    return 1 if report.done < report.total else 0


def report_lines(report: EvaluationReport) -> list[str]:
    """The judge, its position bias and the raw win rate, each caveat on its own line."""
    from moa.alpaca_eval.checks import position_bias_warning

    how = "each pair in both orders" if report.order == "both" else "one order a pair, half of the pairs each way"
    lines = [
        f"judge: {report.judge} ({report.judged}/{report.total} instructions judged, {report.judgements} "
        f"judgements: {how}; {report.from_logprobs} from log-probabilities)",
        report.judge_note,
    ]
    if report.position_a_share is not None:
        lines.append(f"position bias: {100 * report.position_a_share:.0f}% of the verdicts chose answer A")
        if (warning := position_bias_warning(report.position_a_share)) is not None:
            lines.append(warning)
    if report.consistent is not None:
        lines.append(
            f"order consistency: {report.consistent} of {report.judged} pairs had the same winner in both orders"
        )
    if report.judged:
        se = "" if math.isnan(report.standard_error) else f" ± {report.standard_error:.2f}"
        low, high = report.win_rate_ci95
        lines.append(
            f"win rate: {report.win_rate:.2f}{se} (95% bootstrap interval {low:.2f}-{high:.2f}; discrete "
            f"{report.discrete_win_rate:.2f})"
        )
    if report.lc_note is not None:
        lines.append(report.lc_note)
    return lines


def cmd_evaluate(args: argparse.Namespace) -> int:
    from moa.alpaca_eval.evaluate import EvaluateOptions, evaluate

    options = EvaluateOptions(
        submission=args.submission,
        config=args.config,
        judge_backend=args.judge_backend,
        judge_model=args.judge_model,
        reference=args.reference,
        annotations=args.annotations,
        seed=args.seed,
        limit=args.limit,
        concurrency=args.concurrency,
        logprobs=None if args.no_logprobs else args.top_logprobs,
        order=args.order,
    )
    with engine_output_to_log("alpaca-eval", args.verbose):
        report = asyncio.run(evaluate(options, sys.stderr))
    if report.failures:
        _print_failures(report.failures, [p.model.instruction for p in report.pairs], "their judgements")
    if args.json:
        print(json.dumps(report.summary(), indent=2))
        return 1 if report.failures else 0
    for line in report_lines(report):
        print(line)
    if report.lc is not None:
        w = report.lc.weights
        terms = f"length {w.length:.3f}, difficulty {w.difficulty:.3f}, baseline {w.baseline:.3f}"
        note = "" if report.lc.uses_difficulty else "; instructions outside AlpacaEval 2.0: no difficulty term"
        print(f"length-controlled win rate: {report.lc.win_rate:.2f} (GLM weights: {terms}{note})")
    print(f"average length: {report.avg_length} characters; annotations: {report.annotations}")
    return 1 if report.failures else 0


_VERBOSE = "show what local engines print (default: ~/.cache/moa/logs/alpaca-eval-engines.log)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = subparsers.add_parser("alpaca-eval", help="AlpacaEval 2.0: generate a submission, evaluate one locally")
    sub = top.add_subparsers(dest="alpaca_eval_command", required=True, metavar="STEP")

    gen = sub.add_parser("generate", help="answer the instruction set with an ensemble, resumably")
    gen.add_argument("-c", "--config", required=True, help="ensemble config file or shipped recipe name")
    gen.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="the submission (model_outputs.json); its checkpoint is OUTPUT.checkpoint.jsonl",
    )
    gen.add_argument("--generator", help="the submission's generator name (default: the config's name)")
    gen.add_argument(
        "--instructions", type=Path, help="a JSON list of {instruction, dataset} (default: AlpacaEval 2.0's 805)"
    )
    gen.add_argument("--limit", type=_positive, help="only the first N instructions")
    gen.add_argument("--concurrency", type=_positive, default=32, help="instructions in flight at once (default 32)")
    gen.add_argument("--traces", type=Path, help="append every answer's proposals and call records here (JSONL)")
    gen.add_argument("--allow-partial", action="store_true", help="write the submission even if some failed")
    gen.add_argument(
        "--estimate",
        action="store_true",
        help="print the calls, worst-case tokens and cost of the job from the config; run nothing",
    )
    gen.add_argument("--verbose", action="store_true", help=_VERBOSE)
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="judge a submission against the reference: win rate and LC win rate")
    ev.add_argument("submission", type=Path, help="model_outputs.json to evaluate")
    ev.add_argument(
        "-c", "--config", required=True, help="config naming the judge: by default its aggregator's backend and model"
    )
    ev.add_argument("--judge-backend", help="judge with this backend of the config")
    ev.add_argument("--judge-model", help="judge with this model")
    ev.add_argument("--reference", type=Path, help="the outputs to compare with (default: gpt4_1106_preview's)")
    ev.add_argument(
        "--annotations", type=Path, help="where the judgements go (default: SUBMISSION_STEM.annotations.json beside it)"
    )
    ev.add_argument(
        "--order",
        choices=("both", "balanced"),
        default="both",
        help="both: every pair in both orders (2 calls a pair, the default); balanced: one call a pair, "
        "the model's answer first in exactly half of them",
    )
    ev.add_argument(
        "--seed",
        type=int,
        default=0,
        help="with --order balanced: seed of which half of the pairs shows the model's answer first",
    )
    ev.add_argument("--limit", type=_positive, help="only the first N rows of the submission")
    ev.add_argument("--concurrency", type=_positive, default=16, help="judgements in flight at once (default 16)")
    ev.add_argument("--top-logprobs", type=_positive, default=5, help="alternatives per token to ask for (default 5)")
    ev.add_argument("--no-logprobs", action="store_true", help="don't ask for log-probabilities; use the verdict")
    ev.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ev.add_argument("--verbose", action="store_true", help=_VERBOSE)
    ev.set_defaults(func=cmd_evaluate)


__all__ = ["register"]
