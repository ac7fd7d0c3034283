"""``moa alpaca-eval generate``: an ensemble's answers to an instruction set, as an AlpacaEval submission.

The checkpoint beside the output (``OUTPUT.checkpoint.jsonl``) gets one durable line per finished instruction;
a rerun with the same config and instruction set skips those. The submission, a JSON list of
``{instruction, output, generator, dataset}`` in the instruction set's order, is written atomically once every
instruction is done (or with ``allow_partial``, with what is done).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from moa.alpaca_eval.batch import Failure, run_batch
from moa.alpaca_eval.checkpoint import Checkpoint, write_json_atomic
from moa.alpaca_eval.data import OPERATIONAL_FIELDS, Instruction, digest, load_instructions
from moa.alpaca_eval.progress import Progress
from moa.config import EnsembleConfig, load_config
from moa.ensemble import Ensemble
from moa.errors import MoaError
from moa.types import Completion, Usage

CHECKPOINT_KIND = "alpaca-eval generate"


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    config: str | Path | dict[str, Any] | EnsembleConfig
    output: Path
    generator: str | None = None
    instructions: Path | None = None
    limit: int | None = None
    concurrency: int = 32
    traces: Path | None = None
    allow_partial: bool = False


@dataclass(slots=True)
class GenerateReport:
    output: Path
    checkpoint: Path
    total: int
    resumed: int
    done: int
    tokens: int
    wall_s: float
    cost_usd: float | None
    written: bool
    failures: list[Failure] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoint.jsonl")


def config_fingerprint(config: EnsembleConfig) -> str:
    """What the answers depend on: the config less its name, description and operational settings."""
    exclude: dict[str, Any] = {
        "name": True,
        "description": True,
        "deadline_s": True,
        "backends": {"__all__": set(OPERATIONAL_FIELDS)},
    }
    return digest(config.model_dump(mode="json", exclude=exclude))


def submission(instructions: list[Instruction], outputs: dict[int, str], generator: str) -> list[dict[str, str]]:
    """AlpacaEval's model_outputs rows for the done instructions, in the instruction set's order."""
    return [
        {"instruction": ins.instruction, "output": outputs[i], "generator": generator, "dataset": ins.dataset}
        for i, ins in enumerate(instructions)
        if i in outputs
    ]


@contextmanager
def _traces_file(path: Path | None) -> Iterator[TextIO | None]:
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        yield f


def _trace_line(index: int, instruction: str, result: Completion) -> str:
    """One answered instruction: its output, usage, proposals, call records (and what a defense did)."""
    recorded = result.model_dump(mode="json", include={"usage", "proposals", "trace", "defense"})
    return json.dumps({"index": index, "instruction": instruction, "output": result.text, **recorded}) + "\n"


def _failure_line(index: int, instruction: str, error: MoaError) -> str:
    """One failed instruction: the error and the calls made before it (retried on the next run)."""
    calls = [c.model_dump(mode="json") for c in error.trace or []]
    return json.dumps({"index": index, "instruction": instruction, "error": str(error), "trace": calls}) + "\n"


async def generate(options: GenerateOptions, progress_stream: TextIO) -> GenerateReport:
    config = load_config(options.config)
    every = load_instructions(options.instructions)
    chosen = every[: options.limit] if options.limit else every
    source = str(options.instructions) if options.instructions else "AlpacaEval 2.0"
    identity = {
        "config": config_fingerprint(config),
        "instructions": digest([[i.instruction, i.dataset] for i in every]),
    }
    about = {
        "config": f"{config.name} ({identity['config']})",
        "instructions": f"{len(every)} from {source} ({identity['instructions']})",
    }
    started = time.monotonic()
    with Checkpoint.open(checkpoint_path(options.output), CHECKPOINT_KIND, identity, about) as checkpoint:
        pending = [i for i in range(len(chosen)) if i not in checkpoint.records]
        resumed = len(chosen) - len(pending)
        progress = Progress("generate", len(chosen), progress_stream, done=resumed)
        async with Ensemble(config) as ensemble:
            with _traces_file(options.traces) as traces:

                def keep(line: str) -> None:
                    if traces is not None:
                        traces.write(line)
                        traces.flush()

                async def answer(index: int) -> tuple[dict[str, Any], int]:
                    instruction = chosen[index].instruction
                    try:
                        result = await ensemble.acomplete([{"role": "user", "content": instruction}])
                    except MoaError as e:
                        keep(_failure_line(index, instruction, e))
                        progress.advance(cost_usd=Usage.total(e.trace or []).cost)  # what the failed run spent
                        raise
                    keep(_trace_line(index, instruction, result))
                    progress.advance(cost_usd=result.usage.cost)
                    record = {"index": index, "instruction": instruction, "output": result.text}
                    return record, result.usage.total_tokens

                failures = await run_batch(
                    pending, answer, checkpoint, progress=progress, concurrency=options.concurrency
                )
        outputs = {i: r["output"] for i, r in checkpoint.records.items() if i < len(chosen)}
    written = not failures or options.allow_partial
    if written:
        write_json_atomic(options.output, submission(chosen, outputs, options.generator or config.name))
    return GenerateReport(
        output=options.output,
        checkpoint=checkpoint_path(options.output),
        total=len(chosen),
        resumed=resumed,
        done=len(outputs),
        tokens=progress.tokens,
        wall_s=time.monotonic() - started,
        cost_usd=progress.cost_usd,
        written=written,
        failures=failures,
        instructions=chosen,
    )


__all__ = ["GenerateOptions", "GenerateReport", "checkpoint_path", "config_fingerprint", "generate", "submission"]
