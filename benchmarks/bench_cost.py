"""Prompt layout against vLLM's prefix cache: a multi-turn conversation through a 2-layer Self-MoA.

The embedded SmolLM2-135M-Instruct in in-process vLLM, today's layout (``references: {at: system}``) against the
cache-friendly one (``at: end``), side by side on one engine, turns alternating which layout goes first. A third
side, ``end-gemma``, sends the ``at: end`` prompts fitted to Gemma's chat-template rules (no system role, strict
alternation: ``proposers.chat_template.conform``) to the same engine, which renders them with the model's own
template: the constrained layout's cost beside the unconstrained one's.

Each layout has its own conversation (each turn appends its own previous answer) behind a tag of its own, so
neither finds the other's prompts in the cache. Printed per turn and layout: prompt tokens, cached prompt tokens
(vLLM's ``num_cached_tokens``, from the trace), the smallest share cached over the turn's calls, and seconds.
Goal (from turn 2 on): >= 80% of the prompt tokens of every call from the cache, and each turn faster than today's.

    python -m benchmarks.bench_cost [--turns 6] [--max-tokens 48] [--n 3] [--sides system,end,end-gemma]
                                    [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.figures import add_json_option, write_figures
from moa import registry
from moa.backend import Backend
from moa.config import EnsembleConfig, local_device, parse_config
from moa.engine import Agent, Layer, LayeredEngine
from moa.ensemble import build_request
from moa.interfaces import Proposer
from moa.types import CallRecord, Delta, GenerateResult, Message, SamplingParams
from proposers.chat_template import TemplateRules, conform

MODEL = "embedded:smollm2-135m-instruct"
LAYOUTS = ("system", "end")  # today's, then the new default
SIDES = (*LAYOUTS, "end-gemma")  # end-gemma: the at: end prompts under Gemma's chat-template rules
GEMMA_RULES = TemplateRules("fold", alternate=True, tool=False)
_NOTE = (
    "The harbour office logged the day: the ferry left at seven with forty passengers, the wind backed to the "
    "south-west by noon, two fishing boats came in early with nets torn on the reef, the pilot boat went out "
    "twice for the grain ship, and the lamp on the north pier failed at dusk and was mended by nine. "
)
DOCUMENT = "".join(f"Day {i}. {_NOTE}" for i in range(1, 41))
QUESTIONS = [
    "Here is a harbour log.\n\n" + DOCUMENT + "\nWhat happens to the ferry each day?",
    "Which problems come back again and again in the log? Answer in two sentences.",
    "What should the harbour master repair first, and why?",
    "Write a short notice to the fishermen about the reef.",
    "Summarise the pilot boat's work in one line.",
    "What would you add to the log to make it more useful?",
    "Give the lamp keeper three tips.",
    "Write a one-line headline for the week.",
]


def config_for(at: str, n: int, max_tokens: int) -> EnsembleConfig:
    """The 2-layer Self-MoA: layer 1 samples ``n`` answers, layer 2 samples 2 more reading them, then the
    aggregator; one vLLM backend with prefix caching (its default)."""
    return parse_config(
        {
            "name": f"self-moa-{at}",
            "backends": {"local": {"type": "vllm", "model": MODEL, "timeout_s": 300}},
            "layers": [
                {"agents": [{"backend": "local", "n": n, "temperature": 0.7, "max_tokens": max_tokens}]},
                {"agents": [{"backend": "local", "n": 2, "temperature": 0.7, "max_tokens": max_tokens}]},
            ],
            "aggregator": {"type": "synthesize", "backend": "local", "temperature": 0.3, "max_tokens": max_tokens},
            "references": {"at": at},
        }
    )


def engine_over(config: EnsembleConfig, backends: dict[str, Backend]) -> LayeredEngine:
    """``config``'s engine on backends already built (one vLLM engine for both layouts); Self-MoA only: no
    deceptive agents, no defense."""
    at = config.references.at
    layers = []
    for li, lc in enumerate(config.layers):
        agents = [
            Agent.from_config(
                ac,
                config.agent_name(li, ai),
                backends[ac.backend],
                config.model_for(ac.backend, ac.model),
                references_at=at,
            )
            for ai, ac in enumerate(lc.agents)
        ]
        layers.append(Layer(li + 1, agents, lc.min_proposals or config.min_proposals, config.wait_for(li)))
    aggregator = registry.resolve("aggregator", config.aggregator.type)(config.aggregator, at)
    return LayeredEngine(config, backends, layers, aggregator=aggregator, defense=None)


class Conformed:
    """A proposer whose prompts are fitted to ``rules`` first: another layout on the same engine."""

    def __init__(self, inner: Proposer, rules: TemplateRules) -> None:
        self.inner = inner
        self.rules = rules
        self.supports_n = inner.supports_n

    async def start(self) -> None:
        start = getattr(self.inner, "start", None)  # optional in the protocol
        if start is not None:
            await start()

    async def generate(
        self, messages: list[Message], params: SamplingParams, n: int = 1, *, model: str | None = None
    ) -> GenerateResult:
        return await self.inner.generate(conform(messages, self.rules), params, n, model=model)

    def stream(
        self, messages: list[Message], params: SamplingParams, *, model: str | None = None
    ) -> AsyncIterator[Delta]:
        return self.inner.stream(conform(messages, self.rules), params, model=model)

    async def aclose(self) -> None:  # the inner proposer's owner closes it
        pass


@dataclass
class Turn:
    """One layout's figures for one turn."""

    prompt_tokens: int
    cached_tokens: int
    min_share: float  # the smallest cached share over the turn's calls
    seconds: float


@dataclass
class Side:
    """One layout's engine and conversation."""

    at: str
    engine: LayeredEngine
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)


def turn_figures(calls: list[CallRecord], seconds: float) -> Turn:
    made = [c for c in calls if c.outcome == "ok" and c.prompt_tokens > 0]
    return Turn(
        prompt_tokens=sum(c.prompt_tokens for c in made),
        cached_tokens=sum(c.cached_prompt_tokens for c in made),
        min_share=min((c.cached_prompt_tokens / c.prompt_tokens for c in made), default=0.0),
        seconds=seconds,
    )


async def run_turn(side: Side, question: str, seed: int) -> None:
    side.messages.append({"role": "user", "content": question})
    request = build_request(side.messages, {"seed": seed})
    started = time.perf_counter()
    result = await side.engine.complete(request, side.engine.context_for(request))
    side.turns.append(turn_figures(result.trace, time.perf_counter() - started))
    side.messages.append({"role": "assistant", "content": result.text})


def tagged(question: str, at: str) -> str:
    """The first question behind a tag of the layout's own: the two conversations share no cached prefix."""
    return f"[conversation {at}]\n{question}"


def layout_of(side: str) -> str:
    """The ``references.at`` a side's prompts use."""
    return side.split("-")[0]


async def main(turns: int, max_tokens: int, n: int, names: tuple[str, ...] = SIDES) -> dict[str, Any]:
    configs = {side: config_for(layout_of(side), n, max_tokens) for side in names}
    backend = Backend.from_config("local", configs[names[0]].backends["local"])
    gemma = Backend(
        "local",
        Conformed(backend.proposer, GEMMA_RULES),
        backend.limits,
        retry=backend.retry,
        timeout_s=backend.timeout_s,
    )
    sides = {
        side: Side(side, engine_over(configs[side], {"local": gemma if side == "end-gemma" else backend}))
        for side in names
    }
    figures: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        await backend.start()
        figures["engine_start_s"] = time.perf_counter() - started
        print(f"vLLM on {local_device()}, {MODEL}: engine started in {figures['engine_start_s']:.0f} s")
        print(f"2-layer Self-MoA: layer 1 n={n}, layer 2 n=2, aggregator; max_tokens {max_tokens}; {turns} turns")
        for t in range(turns):
            order = list(names) if t % 2 == 0 else list(names)[::-1]
            for at in order:
                question = QUESTIONS[t % len(QUESTIONS)]
                await run_turn(sides[at], tagged(question, at) if t == 0 else question, seed=t)
            for at in names:
                r = sides[at].turns[-1]
                print(
                    f"turn {t + 1} {at:<9}: {r.prompt_tokens:5d} prompt tok, {r.cached_tokens:5d} cached "
                    f"({100 * r.cached_tokens / max(r.prompt_tokens, 1):3.0f}%), min per call "
                    f"{100 * r.min_share:3.0f}%, {r.seconds:5.1f} s"
                )
    finally:
        await backend.aclose()
    for at in names:
        for t, r in enumerate(sides[at].turns, 1):
            for key, value in vars(r).items():
                figures[f"{at}.turn{t}.{key}"] = value
    later = range(1, turns)
    min_share = {at: min((sides[at].turns[t].min_share for t in later), default=0.0) for at in names}
    for at in names:
        seconds = sum(r.seconds for r in sides[at].turns[1:])
        print(
            f"{at}: smallest share cached of any call from turn 2 on: {100 * min_share[at]:.0f}%, "
            f"{seconds:.1f} s over turns 2-{turns}"
        )
        figures[f"{at}.min_share_from_turn2"] = min_share[at]
        figures[f"{at}.seconds_from_turn2"] = seconds
    if "end-gemma" in names and "end" in names:
        pairs = list(zip(sides["end"].turns[1:], sides["end-gemma"].turns[1:], strict=True))
        share = [
            (g.cached_tokens / max(g.prompt_tokens, 1), e.cached_tokens / max(e.prompt_tokens, 1)) for e, g in pairs
        ]
        print(
            "Gemma's rules vs none (at=end), turns 2 on: cached share of the prompt tokens "
            + ", ".join(f"{100 * g:.0f}% vs {100 * e:.0f}%" for g, e in share)
        )
    if not all(at in names for at in LAYOUTS):
        return figures
    new, old = sides["end"].turns, sides["system"].turns
    faster = [new[t].seconds < old[t].seconds for t in later]
    cached_goal = min_share["end"] >= 0.8
    faster_goal = bool(faster) and all(faster)
    print(
        f"goal >= 80% of every call's prompt tokens cached from turn 2 on (at=end): {'met' if cached_goal else 'NOT met'}"
    )
    print(
        f"goal each turn from turn 2 on faster at=end than at=system: {'met' if faster_goal else 'NOT met'} "
        f"({sum(faster)} of {len(faster)} turns faster; "
        f"{sum(o.seconds for o in old[1:]):.1f} s against {sum(e.seconds for e in new[1:]):.1f} s in all)"
    )
    figures.update(
        {
            "goal.cached_80_met": cached_goal,
            "goal.faster_each_turn_met": faster_goal,
            "end.turns_faster": sum(faster),
        }
    )
    return figures


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--turns", type=int, default=6, help="turns of the conversation")
    p.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every call")
    p.add_argument("--n", type=int, default=3, help="layer 1's samples")
    p.add_argument(
        "--sides", default=",".join(SIDES), help=f"the layouts to run, comma-separated (of {', '.join(SIDES)})"
    )
    add_json_option(p)
    return p


if __name__ == "__main__":
    args = parser().parse_args()
    names = tuple(side for side in args.sides.split(",") if side)
    unknown = [side for side in names if side not in SIDES]
    if unknown or not names:
        raise SystemExit(f"--sides: unknown {unknown or 'none given'} (of {', '.join(SIDES)})")
    figures = asyncio.run(main(args.turns, args.max_tokens, args.n, names))
    write_figures(args.json, "bench_cost", args, figures)
