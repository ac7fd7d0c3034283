"""The ``moa`` command line: ``moa run``, ``moa validate`` and the commands of ``moa.commands``.

Errors moa raises on purpose print as one ``error:`` line (exit 2 for bad input, 1 for failures at run time),
never as a traceback. Library code's log lines (a long step saying what it does) print as ``moa: ...`` lines on
stderr (moa.logs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from moa.config import builtin_configs, describe_config, load_config
from moa.errors import ConfigError, MoaError
from moa.logs import configure_logging, native_output_to
from moa.types import Completion

DEFAULT_CONFIG = "default"
#: modules under moa.commands that add subcommands (each has ``register(subparsers)``)
COMMAND_MODULES: tuple[str, ...] = ("serve", "alpaca_eval", "specdec")
#: the packages whose start-up warnings and log lines ``moa run`` keeps off the terminal unless ``--verbose``
NOISY_LOGGERS: tuple[str, ...] = ("vllm", "torch", "transformers", "triton")


def _print_trace(result: Completion, out: TextIO) -> None:
    for p in result.proposals:
        print(f"--- proposal (layer {p.layer}, {p.agent}) ---\n{p.text}\n", file=out)
    header = (
        f"{'layer':>5} {'role':<10} {'agent':<24} {'model':<28} {'in':>6} {'out':>6} {'sec':>7} {'retry':>5}  outcome"
    )
    print(header, file=out)
    for r in result.trace:
        outcome = r.outcome if r.error is None else f"{r.outcome}: {r.error}"
        agent = r.agent if r.step is None else f"{r.agent} [{r.step}]"
        print(
            f"{r.layer:>5} {r.role:<10} {agent[:24]:<24} {r.model[-28:]:<28} {r.prompt_tokens:>6} "
            f"{r.completion_tokens:>6} {r.latency_s:>7.2f} {r.retries:>5}  {outcome}",
            file=out,
        )
    u = result.usage
    print(f"usage: {u.prompt_tokens} prompt + {u.completion_tokens} completion = {u.total_tokens} tokens", file=out)


async def _run(args: argparse.Namespace) -> int:
    from moa.commands.progress_view import ProgressView, timeline
    from moa.ensemble import Ensemble
    from moa.progress import ProgressSink, progress_sink

    given = (("temperature", args.temperature), ("max_tokens", args.max_tokens), ("seed", args.seed))
    overrides = {k: v for k, v in given if v is not None}
    messages = [{"role": "user", "content": args.prompt}]
    view = ProgressView(None if args.no_progress else sys.stderr, live=sys.stderr.isatty())
    async with Ensemble.from_config(args.config) as ens:
        token = progress_sink.set(ProgressSink(view.on_event))
        view.start()
        try:
            if args.stream and not (args.json or args.trace):
                async for delta in ens.astream(messages, **overrides):
                    if delta.content and sys.stdout.isatty():
                        view.freeze()  # the answer goes to the same terminal from here on
                    print(delta.content, end="", flush=True)
                print()
                return 0
            result = await ens.acomplete(messages, **overrides)
        finally:
            view.freeze()
            progress_sink.reset(token)
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    if args.trace:
        _print_trace(result, sys.stderr)
        for line in timeline(list(view.rows.values())):
            print(line, file=sys.stderr)
    print(result.choices[0].message.content)
    return 0


def quiet_third_party() -> None:
    """Keep local engines' start-up noise off the terminal: vLLM's and transformers' log lines below errors (their
    own settings, which vLLM's engine processes inherit) and the warnings torch, vLLM, transformers and Triton
    raise. An environment that already sets the levels keeps them."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=rf"({'|'.join(NOISY_LOGGERS)})(\.|$)")


def cmd_run(args: argparse.Namespace) -> int:
    if args.verbose:
        return asyncio.run(_run(args))
    quiet_third_party()
    log = engine_log_path()
    try:
        with native_output_to(log):
            return asyncio.run(_run(args))
    except BaseException:
        if log.is_file() and log.stat().st_size:
            print(f"moa: what local engines printed is in {log}", file=sys.stderr)
        raise


def engine_log_path() -> Path:
    """Where ``moa run`` keeps what local engines and native code print (their stderr) unless ``--verbose``."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("moa")) / "logs" / "run-engines.log"


def cmd_validate(args: argparse.Namespace) -> int:
    for source in args.configs:
        print(f"{source}: ok ({describe_config(load_config(source))})")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    for name, path in builtin_configs().items():
        cfg = load_config(path)
        print(f"{name:<16} {cfg.description or ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moa", description="Mixture-of-Agents ensembles over LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="answer one prompt with an ensemble")
    run.add_argument("prompt", help="the user message")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                     help="config file or shipped recipe name (default: the embedded Self-MoA)")  # fmt: skip
    run.add_argument("--trace", action="store_true",
                     help="print each proposal, a per-call table and a timeline of the calls to stderr")  # fmt: skip
    run.add_argument("--json", action="store_true", help="print the whole result object as JSON")
    run.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    run.add_argument("--temperature", type=float, help="the final answer's temperature")
    run.add_argument("--max-tokens", type=int, help="the final answer's token cap")
    run.add_argument("--seed", type=int, help="seed every call of the run, so it repeats (default: a fresh draw)")
    run.add_argument("--no-progress", action="store_true", help="show no per-call progress on stderr")
    run.add_argument("--verbose", action="store_true",
                     help="let local engines' start-up output (vLLM, torch, Triton) through to the terminal")  # fmt: skip
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check config files")
    validate.add_argument("configs", nargs="+", metavar="CONFIG")
    validate.set_defaults(func=cmd_validate)

    configs = sub.add_parser("configs", help="list the shipped recipes")
    configs.set_defaults(func=cmd_configs)

    for module in COMMAND_MODULES:
        importlib.import_module(f"moa.commands.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()  # `moa: ...` lines on stderr; `moa serve` installs its own format in their place
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MoaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
