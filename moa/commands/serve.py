"""``moa serve``: the OpenAI-compatible server over one or more ensembles."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable

from moa.errors import ConfigError

DEFAULT_CONFIG = "default"
LOG_LEVELS = ("debug", "info", "warning", "error")


def served_configs(args: argparse.Namespace) -> list[str]:
    """The configs ``moa serve`` serves: those given with ``-c``, else the default recipe."""
    return list(args.configs or [DEFAULT_CONFIG])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve ensembles over an OpenAI-compatible HTTP API",
        description="Serve ensembles over an OpenAI-compatible HTTP API. Chat requests must be sent as "
        "application/json (else 415); max_tokens above 2**20 is refused; every response carries x-request-id.",
    )
    p.add_argument(
        "-c",
        "--config",
        action="append",
        metavar="CONFIG",
        dest="configs",
        help="config file or shipped recipe name; repeat to serve several (model = ensemble name); "
        "default: the shipped default recipe, as for moa run",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        type=str.lower,
        help="the least severe log lines printed, access lines (info) included (default: info)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-key-env", metavar="VAR", help="require one of the keys in VAR (comma-separated)")
    keys.add_argument("--api-key-file", metavar="FILE", help="require one of the keys in FILE (one a line)")
    p.add_argument(
        "--max-queue",
        type=int,
        default=512,
        metavar="N",
        help="requests held at once, running or waiting; more get 429 (default: 512)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 * 1024 * 1024,
        metavar="N",
        help="larger request bodies get 413 (default: 4 MiB)",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="a request body must arrive within S seconds, else 408 and the connection is closed; "
        "bodies are read before a request takes a place in the queue (default: 10)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="close a connection idle for S seconds, or whose request headers are unfinished after "
        "S seconds (default: 15)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="on SIGTERM, wait this long for running requests, then cancel them and exit (default: 60)",
    )
    p.add_argument(
        "--response-store",
        metavar="URL",
        help="where /v1/responses keeps stored responses: sqlite:///PATH (an absolute path) or "
        "redis://[:password@]host:port/db, shared by replicas (default: responses.sqlite3 under the user's "
        "state directory, ~/.local/state/moa on Linux)",
    )
    p.add_argument(
        "--response-ttl",
        default="30d",
        metavar="DURATION",
        help="how long a stored response is kept: seconds, or a number with s, m, h or d (default: 30d)",
    )
    p.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop: uvloop (faster) or asyncio's own; auto: uvloop when installed",
    )
    p.add_argument(
        "--lenient",
        action="store_true",
        help="accept and ignore request fields the ensemble cannot honour (as vLLM does), naming them in the "
        "x-moa-ignored-fields response header, instead of a 400",
    )
    p.add_argument(
        "--ui",
        action="store_true",
        help="also serve the playground page at /ui: chat with an ensemble and watch each proposer's answer, the "
        "aggregator's, a timeline of the calls and their cost (the page needs no key; its API calls do)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="let local engines' output (vLLM, torch, Triton) through to stderr; else it goes to "
        "~/.cache/moa/logs/serve-engines.log",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from moa.logs import engine_output_to_log

    with engine_output_to_log("serve", args.verbose):
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from moa.ensemble import Ensemble
    from moa.logs import configure_logging
    from moa.server.auth import load_keys
    from moa.server.ids import LOG_FORMAT, RequestIdFilter
    from moa.server.responses.store import parse_ttl
    from moa.server.run import serve
    from moa.server.state import ServerSettings

    if not 0 <= args.port <= 65535:
        raise ConfigError("must be between 0 and 65535", "--port")
    if not args.drain_timeout >= 0:
        raise ConfigError("must be a number of seconds >= 0", "--drain-timeout")
    settings = ServerSettings(
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        api_keys=load_keys(args.api_key_env, args.api_key_file),
        read_timeout_s=args.read_timeout,
        keepalive_timeout_s=args.keepalive_timeout,
        lenient=args.lenient,
        response_store=args.response_store,
        response_ttl_s=parse_ttl(args.response_ttl),
        ui=args.ui,
    )
    ensembles: dict[str, Ensemble] = {}
    for source in served_configs(args):
        ensemble = Ensemble.from_config(source)
        if ensemble.name in ensembles:
            raise ConfigError(f"two configs are named {ensemble.name!r}; model names must be unique", "--config")
        ensembles[ensemble.name] = ensemble
    level = getattr(logging, args.log_level.upper())
    configure_logging(LOG_FORMAT, RequestIdFilter(), level=level)  # to stderr, each with its request's id
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        runner.run(serve(ensembles, settings, host=args.host, port=args.port, drain_timeout_s=args.drain_timeout))
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked or, for ``auto``, when installed (it comes with vLLM); else asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("uvloop is not installed (pip install uvloop)", "--loop") from None
        return None
    return uvloop.new_event_loop
