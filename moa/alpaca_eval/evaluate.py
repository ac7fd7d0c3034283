"""``moa alpaca-eval evaluate``: a submission against a reference, judged pairwise, with the LC win rate.

Each submission row is paired with the reference row of the same instruction and judged in both orders (or,
with ``order="balanced"``, once, half of the pairs each way); the judgements go to a checkpoint beside the
annotations file as they arrive (a rerun judges only what is missing), and the annotations, in AlpacaEval's
format (``output_1`` the reference, ``output_2`` the model, ``preference`` in [1, 2] where 2 means the model
won, the mean over the pair's judgements), are written atomically at the end. The report carries what keeps it
from misleading (``moa.alpaca_eval.checks``): the judge's position bias, a bootstrap interval, no LC figure
below 100 instructions, and whether the judge is one of alpaca_eval's annotators.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from moa.alpaca_eval.batch import Failure, run_batch
from moa.alpaca_eval.checkpoint import Checkpoint, write_json_atomic
from moa.alpaca_eval.checks import (
    bootstrap_interval,
    comparability,
    lc_refusal,
    position_a_share,
    position_bias_warning,
)
from moa.alpaca_eval.data import ModelOutput, digest, instruction_difficulty, load_outputs
from moa.alpaca_eval.judge import JudgeOrder, JudgeVerdict, PairwiseJudge, orders_of
from moa.alpaca_eval.lc import LCResult, length_controlled_win_rate
from moa.alpaca_eval.progress import Progress
from moa.config import load_config
from moa.errors import ConfigError

CHECKPOINT_KIND = "alpaca-eval evaluate"


@dataclass(frozen=True, slots=True)
class EvaluateOptions:
    submission: Path
    config: str | Path | dict[str, Any]
    judge_backend: str | None = None
    judge_model: str | None = None
    reference: Path | None = None
    annotations: Path | None = None
    seed: int = 0
    limit: int | None = None
    concurrency: int = 16
    logprobs: int | None = 5
    order: JudgeOrder = "both"


@dataclass(frozen=True, slots=True)
class Pair:
    model: ModelOutput
    reference: ModelOutput


@dataclass(slots=True)
class EvaluationReport:
    judge: str
    annotations: Path
    total: int
    judged: int
    win_rate: float  # percent; nan when nothing was judged
    standard_error: float
    discrete_win_rate: float
    lc: LCResult | None
    from_logprobs: int
    avg_length: int
    wall_s: float
    order: JudgeOrder = "both"
    judgements: int = 0  # judge calls behind the judged instructions (two each in both orders)
    win_rate_ci95: tuple[float, float] = (math.nan, math.nan)  # percent, bootstrap over instructions
    position_a_share: float | None = None  # share of the decided verdicts that chose answer A
    consistent: int | None = None  # pairs whose winner was the same in both orders (order "both" only)
    lc_note: str | None = None  # why there is no LC figure
    comparable: bool = False  # the judge is the leaderboard annotator's model
    judge_note: str = ""
    failures: list[Failure] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lc = self.lc
        return {
            "judge": self.judge,
            "annotations": str(self.annotations),
            "total": self.total,
            "judged": self.judged,
            "failed": len(self.failures),
            "win_rate": self.win_rate,
            "standard_error": self.standard_error,
            "discrete_win_rate": self.discrete_win_rate,
            "length_controlled_winrate": lc.win_rate if lc else None,
            "lc_weights": None
            if lc is None
            else {"length": lc.weights.length, "difficulty": lc.weights.difficulty, "baseline": lc.weights.baseline},
            "lc_uses_difficulty": lc.uses_difficulty if lc else None,
            "judged_from_logprobs": self.from_logprobs,
            "avg_length": self.avg_length,
            "wall_s": self.wall_s,
            "order": self.order,
            "judgements": self.judgements,
            "win_rate_ci95": list(self.win_rate_ci95),
            "position_a_share": self.position_a_share,
            "position_bias_warning": position_bias_warning(self.position_a_share),
            "consistent_pairs": self.consistent,
            "lc_note": self.lc_note,
            "comparable_to_leaderboard": self.comparable,
            "judge_note": self.judge_note,
        }


def annotations_path(options: EvaluateOptions) -> Path:
    return options.annotations or options.submission.with_name(options.submission.stem + ".annotations.json")


def pair_up(submission: list[ModelOutput], reference: list[ModelOutput], where: str) -> list[Pair]:
    """Each submission row with the reference row of the same instruction (in the submission's order)."""
    by_instruction = {r.instruction: r for r in reference}
    pairs = []
    for i, row in enumerate(submission):
        ref = by_instruction.get(row.instruction)
        if ref is None:
            raise ConfigError("this instruction is not in the reference", f"{where}[{i}].instruction")
        pairs.append(Pair(row, ref))
    return pairs


def _annotation(index: int, pair: Pair, judge: str, verdicts: list[JudgeVerdict]) -> dict[str, Any]:
    p_model = sum(v.p_model for v in verdicts) / len(verdicts)
    return {
        "index": index,
        "instruction": pair.model.instruction,
        "dataset": pair.model.dataset or pair.reference.dataset,
        "output_1": pair.reference.output,
        "generator_1": pair.reference.generator,
        "output_2": pair.model.output,
        "generator_2": pair.model.generator,
        "annotator": judge,
        "preference": 1.0 + p_model,
        "p_model": p_model,
        "judgements": [
            {
                "model_position": "A" if v.model_first else "B",
                "p_model": v.p_model,
                "preferred": v.preferred_position,
                "judge_source": v.source,
                "judge_output": v.text,
            }
            for v in verdicts
        ],
    }


def _consistent(records: list[dict[str, Any]]) -> int | None:
    """Pairs judged in both orders whose winner (model or reference) was the same both times."""
    both = [r["judgements"] for r in records if len(r["judgements"]) == 2]
    if not both:
        return None
    winners = [(float(a["p_model"]), float(b["p_model"])) for a, b in both]
    return sum(a != 0.5 != b and (a > 0.5) == (b > 0.5) for a, b in winners)


def _scores(pairs: list[Pair], records: list[dict[str, Any]]) -> dict[str, Any]:
    p = np.array([r["p_model"] for r in records], float)  # [N]
    if p.size == 0:
        return {"win_rate": math.nan, "standard_error": math.nan, "discrete_win_rate": math.nan, "lc": None}
    se = 100 * p.std(ddof=1) / math.sqrt(p.size) if p.size > 1 else math.nan
    discrete = 100 * float(np.mean(np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))))
    judged = [pairs[r["index"]] for r in records]
    difficulty = instruction_difficulty()
    gamma = None
    if all(pair.model.instruction in difficulty for pair in judged):
        gamma = np.array([difficulty[pair.model.instruction] for pair in judged])
    lc = None
    if lc_refusal(p.size) is None:
        model_len = np.array([len(pair.model.output) for pair in judged])
        ref_len = np.array([len(pair.reference.output) for pair in judged])
        lc = length_controlled_win_rate(p, model_len, ref_len, gamma)
    return {"win_rate": 100 * float(p.mean()), "standard_error": se, "discrete_win_rate": discrete, "lc": lc}


async def evaluate(options: EvaluateOptions, progress_stream: TextIO) -> EvaluationReport:
    every = pair_up(load_outputs(options.submission), load_outputs(options.reference), str(options.submission))
    pairs = every[: options.limit] if options.limit else every
    judge = PairwiseJudge.from_config(
        load_config(options.config), options.judge_backend, options.judge_model, options.logprobs
    )
    out = annotations_path(options)
    identity = {
        "judge": judge.fingerprint,
        "submission": digest([[p.model.instruction, p.model.output, p.reference.output] for p in every]),
        "seed": str(options.seed) if options.order == "balanced" else "-",  # both orders: nothing is drawn
        "order": options.order,
    }
    about = {
        "judge": f"{judge.name} ({identity['judge']})",
        "submission": f"{len(every)} rows of {options.submission} ({identity['submission']})",
        "seed": options.seed,
        "order": options.order,
    }
    started = time.monotonic()
    try:
        with Checkpoint.open(out.with_name(out.name + ".checkpoint.jsonl"), CHECKPOINT_KIND, identity, about) as ckpt:
            pending = [i for i in range(len(pairs)) if i not in ckpt.records]
            progress = Progress("evaluate", len(pairs), progress_stream, done=len(pairs) - len(pending))

            orders = orders_of(options.order, options.seed, [p.model.instruction for p in pairs])

            async def judge_one(index: int) -> tuple[dict[str, Any], int]:
                pair = pairs[index]
                verdicts = await asyncio.gather(
                    *(
                        judge.judge(pair.model.instruction, pair.model.output, pair.reference.output, first)
                        for first in orders[index]
                    )
                )
                return _annotation(index, pair, judge.name, list(verdicts)), sum(v.tokens for v in verdicts)

            failures = await run_batch(pending, judge_one, ckpt, progress=progress, concurrency=options.concurrency)
            records = [ckpt.records[i] for i in sorted(ckpt.records) if i < len(pairs)]
    finally:
        await judge.aclose()
    write_json_atomic(out, records)
    scores = _scores(pairs, records)
    judgements = [j for r in records for j in r["judgements"]]
    comparable, judge_note = comparability(judge.name, judge.model)
    return EvaluationReport(
        judge=judge.name,
        annotations=out,
        total=len(pairs),
        judged=len(records),
        win_rate=scores["win_rate"],
        standard_error=scores["standard_error"],
        discrete_win_rate=scores["discrete_win_rate"],
        lc=scores["lc"],
        from_logprobs=sum(j["judge_source"] == "logprobs" for j in judgements),
        avg_length=round(sum(len(p.model.output) for p in pairs) / len(pairs)),
        wall_s=time.monotonic() - started,
        order=options.order,
        judgements=len(judgements),
        win_rate_ci95=bootstrap_interval([r["p_model"] for r in records], seed=options.seed),
        position_a_share=position_a_share([j["preferred"] for j in judgements]),
        consistent=_consistent(records),
        lc_note=lc_refusal(len(records)) if records else None,
        comparable=comparable,
        judge_note=judge_note,
        failures=failures,
        pairs=pairs,
    )


__all__ = ["EvaluateOptions", "EvaluationReport", "annotations_path", "evaluate", "pair_up"]
