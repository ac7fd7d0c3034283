"""A tool-calling turn through a 2-layer MoA: ``decide: aggregator`` against ``decide: vote``, side by side.

A simulated endpoint (the scripted OpenAI-compatible server of the tests, on 127.0.0.1, with a fixed latency per
call) answers every call with a ``get_weather`` tool call. In a request where the proposals agree, every proposer
calls it for Paris; where they disagree, each proposer names another city (no majority), so the aggregator decides.
Each agreement rate (0%, 50%, 90% of the requests by default) runs the same requests under both decide modes.

Printed per rate and mode: mean latency per request (its critical path: the layers, then the aggregator's call or
the vote), aggregator calls per request, model calls per request, and, for the vote, how many requests where the
proposals disagreed got another answer than under ``decide: aggregator`` (the goal: none). Goal at 90% agreement:
``vote`` cuts mean latency by >= 30% and aggregator calls by >= 80%.

    python -m benchmarks.bench_agents [--requests 20] [--rates 0,50,90] [--proposer-latency 0.05]
                                      [--aggregator-latency 0.1] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

from benchmarks.figures import add_json_option, write_figures
from moa import Ensemble
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Call, Reply, ScriptedServer

LAYERS = [["a1", "a2", "a3"], ["b1", "b2", "b3"]]
CITIES = {"a1": "Paris", "a2": "Lyon", "a3": "Nice", "b1": "Paris", "b2": "Lyon", "b3": "Nice"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def weather_call(city: str) -> Reply:
    return Reply(None, (Call("get_weather", json.dumps({"city": city}), f"call_{city.lower()}"),))


def proposer(model: str, messages: list[dict[str, Any]], index: int) -> Reply:
    """Paris when the request's proposals agree; else this agent's own city."""
    agree = "[agree]" in next(m["content"] for m in messages if m["role"] == "user")
    return weather_call("Paris" if agree else CITIES[model])


def aggregator(model: str, messages: list[dict[str, Any]], index: int) -> Reply:
    """The aggregator settles on the first reference it reads (deterministic, so both modes can be compared)."""
    text = "\n".join(m["content"] or "" for m in messages)
    city = next((c for c in ("Paris", "Lyon", "Nice") if c in text), "Paris")
    return weather_call(city)


def requests(total: int, rate: int, seed: int = 0) -> list[bool]:
    """Which of ``total`` requests have agreeing proposals: ``rate`` percent of them, in a seeded order."""
    agreeing = round(total * rate / 100)
    flags = [True] * agreeing + [False] * (total - agreeing)
    random.Random(seed + rate).shuffle(flags)
    return flags


async def run_mode(
    server: ScriptedServer, decide: str, flags: list[bool], proposer_s: float, aggregator_s: float
) -> dict[str, Any]:
    server.reset()
    for layer in LAYERS:
        for agent in layer:
            server.script(agent, answer=proposer, latency_s=proposer_s)
    server.script("agg", answer=aggregator, latency_s=aggregator_s)
    config = moa_config(server.base_url, LAYERS, decide=decide)
    latencies: list[float] = []
    answers: list[str] = []
    async with Ensemble.from_config(config) as ens:
        for i, agree in enumerate(flags):
            tag = "[agree]" if agree else "[disagree]"
            messages = [{"role": "user", "content": f"Request {i} {tag}: what is the weather?"}]
            started = time.perf_counter()
            result = await ens.acomplete(messages, tools=[WEATHER])
            latencies.append(time.perf_counter() - started)
            answers.append(json.dumps([c["function"] for c in result.tool_calls]))
    n = len(flags)
    return {
        "latency_mean_s": sum(latencies) / n,
        "aggregator_calls_per_request": len(server.for_model("agg")) / n,
        "calls_per_request": len(server.requests) / n,
        "answers": answers,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    server = ScriptedServer()
    await server.start()
    figures: dict[str, Any] = {}
    try:
        header = f"{'agree':>5}  {'decide':<10} {'latency ms':>10} {'agg calls/req':>13} {'calls/req':>9}  changed"
        print(header)
        for rate in args.rates:
            flags = requests(args.requests, rate)
            side = {}
            for decide in ("aggregator", "vote"):
                side[decide] = await run_mode(server, decide, flags, args.proposer_latency, args.aggregator_latency)
            agg, vote = side["aggregator"], side["vote"]
            changed = sum(1 for i, agree in enumerate(flags) if not agree and agg["answers"][i] != vote["answers"][i])
            for decide, row in side.items():
                note = f"{changed} of {flags.count(False)} disagreeing" if decide == "vote" else ""
                print(
                    f"{rate:>4}%  {decide:<10} {row['latency_mean_s'] * 1000:>10.1f} "
                    f"{row['aggregator_calls_per_request']:>13.2f} {row['calls_per_request']:>9.2f}  {note}"
                )
            latency_cut = 1 - vote["latency_mean_s"] / agg["latency_mean_s"]
            calls_cut = 1 - vote["aggregator_calls_per_request"] / agg["aggregator_calls_per_request"]
            print(f"       vote vs aggregator: latency -{latency_cut:.0%}, aggregator calls -{calls_cut:.0%}")
            for decide, row in side.items():
                for key in ("latency_mean_s", "aggregator_calls_per_request", "calls_per_request"):
                    figures[f"agree_{rate}.{decide}.{key}"] = row[key]
            figures[f"agree_{rate}.vote.latency_cut"] = latency_cut
            figures[f"agree_{rate}.vote.aggregator_calls_cut"] = calls_cut
            figures[f"agree_{rate}.vote.disagreeing_changed"] = changed
    finally:
        await server.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="requests per agreement rate and mode")
    parser.add_argument(
        "--rates", type=lambda s: [int(x) for x in s.split(",")], default=[0, 50, 90], help="agreement, percent"
    )
    parser.add_argument("--proposer-latency", type=float, default=0.05, help="seconds per proposer call")
    parser.add_argument("--aggregator-latency", type=float, default=0.1, help="seconds per aggregator call")
    add_json_option(parser)
    args = parser.parse_args(argv)
    figures = asyncio.run(main_async(args))
    write_figures(args.json, "bench_agents", args, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
