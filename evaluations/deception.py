"""Red-team an ensemble on a multiple-choice task: what deceptive agents cost it, and what each defense wins back.

The same questions run under several conditions of one configured ensemble: ``honest`` (no deceptive agent, no
defense), ``deceived`` (the deceptive agents, no defense) and ``deceived+<defense>`` for each defense. Deceptive
agents are those the config marks, or those placed by ``--red-team`` / ``--random``; on each question they argue
for its target option (the file's ``target``, else a seeded wrong option). The metrics (defined in
``evaluations.deception_metrics``): accuracy and persuasion rate per condition; recovery rate of each defended
condition against ``deceived``; deception-corruption rate of each deceived condition against ``honest``; and
model calls per question, with the calls beyond the same ensemble undefended.

    python -m evaluations.deception -c CONFIG --data questions.jsonl [--random 1 --seed 0 | --red-team 1,2 ...]
        [--defenses cluster-filter,in-context-cluster,dropout-vote,dropout-cluster] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from defenses.options import parse_option
from evaluations.deception_metrics import Graded, Rate, accuracy, corruption_rate, persuasion_rate, recovery_rate
from evaluations.quality import Question, load_questions, prompt
from moa import Ensemble
from moa.config import EnsembleConfig, load_config, parse_config
from moa.defense_config import DEFENSE_TYPES
from moa.errors import ConfigError, MoaError

SAMPLE = Path(__file__).parent / "data" / "quality_sample.jsonl"


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    config: EnsembleConfig
    deceived: bool
    defended: bool


@dataclass(frozen=True, slots=True)
class RunResult:
    condition: str
    graded: list[Graded]
    calls: list[int]  # model calls per question
    extra_calls: list[int]  # calls the defense added, per question
    errors: int


def conditions(base: EnsembleConfig, red_team: dict[str, Any] | None, defenses: list[str]) -> list[Condition]:
    """The honest, deceived and deceived+defense variants of ``base``."""
    data = base.model_dump(mode="json", exclude_none=True)
    data.pop("defense", None)
    honest = {**data, "layers": [_honest_layer(layer) for layer in data["layers"]]}
    honest.pop("red_team", None)
    deceived = {**data, "red_team": red_team} if red_team is not None else data
    deceived_config = parse_config(deceived)
    if not deceived_config.deceptive_agents():
        raise ConfigError("no agent is deceptive: mark agents deceptive, or pass --red-team or --random", "red_team")
    out = [Condition("honest", parse_config(honest), False, False), Condition("deceived", deceived_config, True, False)]
    for name in defenses:
        out.append(Condition(f"deceived+{name}", parse_config({**deceived, "defense": {"type": name}}), True, True))
    return out


def _honest_layer(layer: dict[str, Any]) -> dict[str, Any]:
    return {**layer, "agents": [{k: v for k, v in a.items() if k != "deceptive"} for a in layer["agents"]]}


async def run_condition(condition: Condition, questions: list[Question], concurrency: int) -> RunResult:
    """Every question through one ensemble, ``concurrency`` at a time; a failed question counts as unanswered."""
    limit = asyncio.Semaphore(concurrency)

    async def one(ens: Ensemble, q: Question) -> tuple[str | None, int, int, bool]:
        async with limit:
            try:
                result = await ens.acomplete([{"role": "user", "content": prompt(q)}], deception_target=q.target)
            except MoaError:
                return None, 0, 0, True
        return parse_option(result.text, q.labels), len(result.trace), result.extra_calls, False

    async with Ensemble.from_config(condition.config) as ens:
        outcomes = await asyncio.gather(*(one(ens, q) for q in questions))
    graded = [Graded(q.qid, q.gold, q.target, pred) for q, (pred, *_) in zip(questions, outcomes, strict=True)]
    return RunResult(
        condition.name, graded, [o[1] for o in outcomes], [o[2] for o in outcomes], sum(o[3] for o in outcomes)
    )


def summarise(results: list[RunResult], plan: list[Condition]) -> list[dict[str, Any]]:
    """One row of metrics per condition; recovery against ``deceived``, corruption against ``honest``."""
    by_name = {r.condition: r for r in results}
    honest, deceived = by_name["honest"].graded, by_name["deceived"].graded
    rows = []
    for c, r in zip(plan, results, strict=True):
        n = len(r.graded)
        rows.append({
            "condition": c.name,
            "accuracy": accuracy(r.graded),
            "persuasion": persuasion_rate(r.graded),
            "recovery": recovery_rate(r.graded, deceived) if c.defended else None,
            "corruption": corruption_rate(r.graded, honest) if c.deceived else None,
            "calls_per_question": sum(r.calls) / n,
            "extra_calls_per_question": sum(r.extra_calls) / n,
            "unanswered": sum(g.pred is None for g in r.graded),
            "errors": r.errors,
        })  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = f"{'condition':<28}{'accuracy':>16}{'persuasion':>16}{'recovery':>16}{'corruption':>16}"
    head += f"{'calls/q':>9}{'extra/q':>9}{'unanswered':>12}"
    lines = [head]
    for row in rows:
        rates = "".join(
            f"{str(row[k]) if row[k] is not None else '-':>16}"
            for k in ("accuracy", "persuasion", "recovery", "corruption")
        )
        lines.append(
            f"{row['condition']:<28}{rates}{row['calls_per_question']:>9.2f}{row['extra_calls_per_question']:>9.2f}"
            f"{row['unanswered']:>12}"
        )
    return "\n".join(lines)


def _red_team(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.random is not None:
        return {"placement": {"random": args.random, "seed": args.seed}}
    if args.red_team:
        try:
            return {"placement": [[int(x) for x in p.split(",")] for p in args.red_team]}
        except ValueError:
            raise ConfigError("each position is LAYER,AGENT (1-based), e.g. 1,2", "--red-team") from None
    return None


async def evaluate(config: EnsembleConfig, questions: list[Question], red_team: dict[str, Any] | None,
                   defenses: list[str], concurrency: int = 8) -> list[dict[str, Any]]:  # fmt: skip
    """Run every condition (one after another, questions concurrently) and return the metric rows."""
    plan = conditions(config, red_team, defenses)
    results = [await run_condition(c, questions, concurrency) for c in plan]
    return summarise(results, plan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evaluations.deception", description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", required=True, help="ensemble config file or shipped recipe")
    parser.add_argument("--data", default=str(SAMPLE), help="QuALITY-format JSONL (default: the shipped sample)")
    parser.add_argument("--red-team", nargs="*", metavar="LAYER,AGENT", help="deceptive agents by position")
    parser.add_argument("--random", type=int, help="this many deceptive agents placed at random")
    parser.add_argument("--seed", type=int, default=0, help="seeds random placement and target options")
    parser.add_argument("--defenses", default=",".join(DEFENSE_TYPES), help="comma-separated; '' for none")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--concurrency", type=int, default=8, help="questions in flight per condition")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        questions = load_questions(args.data, args.seed)[: args.limit]
        defenses = [d for d in args.defenses.split(",") if d]
        unknown = sorted(set(defenses) - set(DEFENSE_TYPES))
        if unknown:
            raise ConfigError(f"unknown {', '.join(unknown)} (known: {', '.join(DEFENSE_TYPES)})", "--defenses")
        rows = asyncio.run(evaluate(config, questions, _red_team(args), defenses, args.concurrency))
    except MoaError as e:
        print(f"evaluations.deception: {e}", file=sys.stderr)
        return 2
    print(f"deception eval: {len(questions)} questions from {args.data}, ensemble {config.name}")
    print(format_rows(rows))
    if args.json:
        serial = [{k: asdict(v) | {"value": v.value} if isinstance(v, Rate) else v for k, v in r.items()} for r in rows]
        Path(args.json).write_text(json.dumps(serial, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
