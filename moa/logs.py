"""Where moa's log lines go: one stderr handler, installed by the application (the CLI, ``moa serve``).

Library code only logs, to ``logging.getLogger(__name__)``; it never prints to stderr nor configures logging.
The CLI installs the handler that prints ``moa: <message>`` lines (``CLI_FORMAT``); ``moa serve`` installs it
again with its own format and the request-id filter (moa.server.ids). Installing replaces the handler installed
before, so a process has one at most. An SDK user who wants these lines installs it too, or a handler of their
own on the loggers in ``LOGGERS``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

#: the top-level loggers of moa's packages; every module's ``__name__`` logger is under one of them
LOGGERS: tuple[str, ...] = ("moa", "proposers", "aggregators", "defenses")
#: the CLI's lines: a long step says what it does, e.g. ``moa: starting vLLM engine for backend 'local' ...``
CLI_FORMAT = "moa: %(message)s"

_installed: logging.Handler | None = None


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


__all__ = ["CLI_FORMAT", "LOGGERS", "configure_logging"]
