"""Where moa's log lines go: one stderr handler, installed by the application (the CLI, ``moa serve``).

Library code only logs, to ``logging.getLogger(__name__)``; it never prints to stderr nor configures logging.
The CLI installs the handler that prints ``moa: <message>`` lines (``CLI_FORMAT``); ``moa serve`` installs it
again with its own format and the request-id filter (moa.server.ids). Installing replaces the handler installed
before, so a process has one at most. An SDK user who wants these lines installs it too, or a handler of their
own on the loggers in ``LOGGERS``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

#: the top-level loggers of moa's packages; every module's ``__name__`` logger is under one of them
LOGGERS: tuple[str, ...] = ("moa", "proposers", "aggregators", "defenses")
#: the CLI's lines: a long step says what it does, e.g. ``moa: starting vLLM engine for backend 'local' ...``
CLI_FORMAT = "moa: %(message)s"

#: the packages whose start-up warnings and log lines moa's commands keep off the terminal unless ``--verbose``
NOISY_LOGGERS: tuple[str, ...] = ("vllm", "torch", "transformers", "triton")

_installed: logging.Handler | None = None


def quiet_third_party() -> None:
    """Keep local engines' start-up noise off the terminal: vLLM's and transformers' log lines below errors (their
    own settings, which vLLM's engine processes inherit) and the warnings torch, vLLM, transformers and Triton
    raise. An environment that already sets the levels keeps them. ``moa run``, ``moa serve`` and ``moa
    alpaca-eval`` call it unless ``--verbose``; an SDK script may call it (with ``native_output_to``) too."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=rf"({'|'.join(NOISY_LOGGERS)})(\.|$)")


def engine_log_path(command: str = "run") -> Path:
    """Where ``moa <command>`` keeps what local engines and native code print (their stderr) unless ``--verbose``:
    ``~/.cache/moa/logs/<command>-engines.log``."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("moa")) / "logs" / f"{command}-engines.log"


@contextmanager
def engine_output_to_log(command: str, verbose: bool) -> Iterator[None]:
    """What ``moa <command>`` does with third-party noise: unless ``verbose``, quiet the libraries' loggers and send
    file descriptor 2 to ``engine_log_path(command)``; on a failure, say where that output went."""
    if verbose:
        yield
        return
    quiet_third_party()
    log = engine_log_path(command)
    try:
        with native_output_to(log):
            yield
    except BaseException:
        if log.is_file() and log.stat().st_size:
            print(f"moa: what local engines printed is in {log}", file=sys.stderr)
        raise


def configure_logging(
    fmt: str = CLI_FORMAT,
    *filters: logging.Filter,
    stream: TextIO | None = None,
    level: int = logging.INFO,
) -> logging.Handler:
    """Send the records of ``LOGGERS`` at ``level`` and above to ``stream`` (stderr) as ``fmt`` lines, through
    ``filters``; replaces the handler an earlier call installed, and returns the new one."""
    global _installed
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    for f in filters:
        handler.addFilter(f)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _installed is not None:
            logger.removeHandler(_installed)
        logger.addHandler(handler)
        logger.setLevel(level)
    _installed = handler
    return handler


@contextmanager
def native_output_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` while the block runs, and keep Python's ``sys.stderr`` (moa's log lines,
    the CLI's progress) on the terminal it was: what native code and child processes write to their stderr
    (vLLM's engine processes, torch's C++ warnings, Triton) goes to the file instead. The log handler installed
    by ``configure_logging`` follows ``sys.stderr``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 2)
    os.close(log)
    before = sys.stderr
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=before.encoding, errors="backslashreplace")
    if _installed is not None and isinstance(_installed, logging.StreamHandler):
        _installed.setStream(sys.stderr)
    try:
        yield
    finally:
        ours = sys.stderr
        if _installed is not None and isinstance(_installed, logging.StreamHandler):
            _installed.setStream(before)  # flushes ours first
        ours.flush()
        os.dup2(ours.fileno(), 2)  # the terminal again
        sys.stderr = before
        ours.close()


__all__ = [
    "CLI_FORMAT",
    "LOGGERS",
    "NOISY_LOGGERS",
    "configure_logging",
    "engine_log_path",
    "engine_output_to_log",
    "native_output_to",
    "quiet_third_party",
]
