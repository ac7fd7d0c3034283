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
from collections.abc import Callable, Sequence
from typing import TextIO

from moa.config import ConfigProblems, builtin_configs, describe_config, load_config
from moa.errors import ConfigError, MoaError
from moa.logs import configure_logging, engine_output_to_log
from moa.logs import engine_log_path as engine_log_path  # re-exported: moa.cli's API before moa.logs had it
from moa.logs import quiet_third_party as quiet_third_party
from moa.types import Completion

log = logging.getLogger("moa.cli")

DEFAULT_CONFIG = "default"
#: modules under moa.commands that add subcommands (each has ``register(subparsers)``)
COMMAND_MODULES: tuple[str, ...] = ("serve", "alpaca_eval", "specdec")


def _print_trace(result: Completion, out: TextIO, startup: list[tuple[str, str, float]]) -> None:
    from moa.commands.progress_view import print_calls

    for p in result.proposals:
        print(f"--- proposal (layer {p.layer}, {p.agent}) ---\n{p.text}\n", file=out)
    print_calls(result.trace, out, startup)
    u = result.usage
    print(f"usage: {u.prompt_tokens} prompt + {u.completion_tokens} completion = {u.total_tokens} tokens", file=out)


def _startup_steps(ens: object) -> list[tuple[str, str, float]]:
    """(backend, step, seconds) of what the local engines did before the first call (``startup_s`` of a proposer:
    the embedded model's conversion, the engine start)."""
    steps = []
    for name, backend in getattr(ens, "backends", {}).items():
        for step, seconds in getattr(backend.proposer, "startup_s", {}).items():
            steps.append((name, step, seconds))
    return steps


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config or DEFAULT_CONFIG)
    local = sorted(n for n, b in config.backends.items() if b.in_process)
    if local and not args.no_progress:  # said at once: imports, a conversion and engine starts take a while
        log.info("%s: starting local backend(s) %s (%s)", config.name, ", ".join(local), describe_config(config))

    from moa.commands.progress_view import ProgressView, timeline
    from moa.ensemble import Ensemble, build_request
    from moa.progress import ProgressSink

    given = (("temperature", args.temperature), ("max_tokens", args.max_tokens), ("seed", args.seed))
    overrides = {k: v for k, v in given if v is not None}
    request = build_request([{"role": "user", "content": args.prompt}], overrides)
    view = ProgressView(None if args.no_progress else sys.stderr, live=sys.stderr.isatty())
    async with Ensemble(config) as ens:  # leaving it shuts the engines down: after the answer is out
        await ens.astart()  # engines start (and a model converts) before the request: own rows in --trace
        context = ens.context(request, progress=ProgressSink(view.on_event))
        view.start()
        try:
            if args.stream and not (args.json or args.trace):
                async for delta in ens.astream_request(request, context=context):
                    if delta.content and sys.stdout.isatty():
                        view.freeze()  # the answer goes to the same terminal from here on
                    print(delta.content, end="", flush=True)
                print(flush=True)
                return 0
            result = await ens.arun(request, context)
        finally:
            view.freeze()
        if args.json:
            print(result.model_dump_json(indent=2), flush=True)
            return 0
        if args.trace:
            _print_trace(result, sys.stderr, _startup_steps(ens))
            for line in timeline(list(view.rows.values())):
                print(line, file=sys.stderr)
        print(result.choices[0].message.content, flush=True)
        return 0


def cmd_run(args: argparse.Namespace) -> int:
    server = args.server or os.environ.get("MOA_SERVER") or None
    if server:
        from moa.commands.remote import run_remote

        return asyncio.run(run_remote(args, server))
    with engine_output_to_log("run", args.verbose):
        code = asyncio.run(_run(args))
    if local_engines_loaded():
        exit_now(code)
    return code


def local_engines_loaded() -> bool:
    """Whether this process imported a local engine (vLLM or moa's torch loop)."""
    return "vllm" in sys.modules or "proposers.torch_local" in sys.modules


def exit_now(code: int) -> None:
    """End a one-shot command whose answer is out and whose engines are shut down: flush stdout, stderr and the log
    handlers, run the exit handlers (multiprocessing's reaps children), then leave without the interpreter's
    teardown of torch's and vLLM's modules, which took ~3.5 s on 2 busy cores and writes nothing."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_validate(args: argparse.Namespace) -> int:
    """Every config, every problem of each: one line a problem, naming its field."""
    failed = 0
    for source in args.configs:
        try:
            config = load_config(source)
        except ConfigProblems as e:
            failed += 1
            print(f"error: {source}: {len(e.problems)} error(s)", file=sys.stderr)
            for path, message in e.problems:
                print(f"  {path}: {message}" if path else f"  {message}", file=sys.stderr)
            continue
        except ConfigError as e:
            failed += 1
            print(f"error: {source}: {e}", file=sys.stderr)
            continue
        print(f"{source}: ok ({describe_config(config)})")
    return 2 if failed else 0


def cmd_configs(args: argparse.Namespace) -> int:
    for name, path in builtin_configs().items():
        cfg = load_config(path)
        shape = describe_config(cfg).removeprefix(f"{cfg.name}: ")  # the shape moa validate and moa serve print
        print(f"{name:<17} {shape}: {cfg.description or ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moa", description="Mixture-of-Agents ensembles over LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="answer one prompt with an ensemble")
    run.add_argument("prompt", help="the user message")
    run.add_argument(
        "-c",
        "--config",
        help="config file or shipped recipe name (default: the embedded Self-MoA); with --server, "
        "the server's ensemble (default: its only one, or 'default')",
    )
    run.add_argument(
        "--server",
        metavar="URL",
        help="send the prompt to a running `moa serve` at URL (default: $MOA_SERVER) instead of "
        "starting the ensemble here: no engine start",
    )
    run.add_argument(
        "--trace",
        action="store_true",
        help="print each proposal, a per-call table and a timeline of the calls to stderr",
    )
    run.add_argument("--json", action="store_true", help="print the whole result object as JSON")
    run.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    run.add_argument("--temperature", type=float, help="the final answer's temperature")
    run.add_argument("--max-tokens", type=int, help="the final answer's token cap")
    run.add_argument("--seed", type=int, help="seed every call of the run, so it repeats (default: a fresh draw)")
    run.add_argument("--no-progress", action="store_true", help="show no per-call progress on stderr")
    run.add_argument(
        "--verbose",
        action="store_true",
        help="let local engines' start-up output (vLLM, torch, Triton) through to the terminal",
    )
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
