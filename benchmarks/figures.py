"""Benchmark figures, machine-readably: every benchmark's ``--json PATH`` writes what it printed.

The file is one JSON object: ``benchmark``, ``command`` (argv), ``args``, ``machine`` (cores, processor, load
averages at the start and the end of the run, Python) and ``figures`` (figure name -> value).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_LOAD_AT_START = os.getloadavg()


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: also write the figures there."""
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures here as JSON")


def machine() -> dict[str, Any]:
    """The machine and its load, as the figures were measured."""
    return {
        "cores": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": list(_LOAD_AT_START),
        "load_average_end": list(os.getloadavg()),
    }


def write_figures(path: Path | None, benchmark: str, args: argparse.Namespace, figures: Mapping[str, Any]) -> None:
    """Write ``figures`` (name -> value) with the run's arguments and machine to ``path``; nothing when it is None."""
    if path is None:
        return
    document = {
        "benchmark": benchmark,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": machine(),
        "figures": dict(figures),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"figures written to {path}", file=sys.stderr)
