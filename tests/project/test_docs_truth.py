"""The documents that describe the code's shape stay true to it: the exception tree drawn in ``moa/errors.py``,
the layer list in CONTRIBUTING.md against the import contract, the README's architecture tree against the
modules, and the metrics table of docs/server.md against what ``moa serve`` registers."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import moa.errors
from moa.server.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[2]


def _drawn_tree(doc: str) -> dict[str, str | None]:
    """Each class of a drawn tree (``├──`` / ``└──`` lines, 4 columns a level) with its drawn parent."""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*)((?:[│ ]   )*)(?:[├└]── )?([A-Z]\w+)\b", line)
        if match is None or not match.group(3).endswith(("Error", "MoaError")):
            continue
        depth = len(match.group(2)) // 4 + (1 if "──" in line else 0)
        del stack[depth:]
        parents[match.group(3)] = stack[-1] if stack else None
        stack.append(match.group(3))
    return parents


def test_the_drawn_exception_tree_is_the_class_tree() -> None:
    drawn = _drawn_tree(moa.errors.__doc__ or "")
    actual: dict[str, str | None] = {}
    for name, cls in inspect.getmembers(moa.errors, inspect.isclass):
        if issubclass(cls, moa.errors.MoaError) and cls.__module__ == "moa.errors":
            base = next((b for b in cls.__bases__ if issubclass(b, moa.errors.MoaError)), None)
            actual[name] = None if base is None else base.__name__
    assert drawn == actual


def _contract_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    return [{part.strip() for part in layer.split("|")} for layer in contract["layers"]]


def test_the_layer_list_in_contributing_is_the_import_contract() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    block = text.split("## Layering", 1)[1].split("```", 2)[1]
    documented = []
    for line in block.splitlines()[1:]:
        names = line.split("#", 1)[0].strip().removeprefix(">").strip()
        if names:
            documented.append({part.strip() for part in names.split("|")})
    assert documented == _contract_layers()


def test_the_readme_architecture_tree_names_every_module() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"[\w/]+\.py|\b\w+/", block))
    names = {n.removesuffix(".py").removesuffix("/") for n in named} | {
        w for w in re.findall(r"\b\w+\b", block)
    }  # a module may be named without .py in a list ("openai_http (aiohttp)")
    missing = []
    for package in ("moa", "proposers", "aggregators", "defenses"):
        for path in sorted((ROOT / package).iterdir()):
            stem = path.stem
            if stem.startswith("_") or stem == "py" or path.suffix not in (".py", ""):
                continue
            if path.is_dir() and not (path / "__init__.py").exists() and stem not in ("configs", "data"):
                continue
            if stem not in names:
                missing.append(f"{package}/{path.name}")
    assert not missing, f"README's architecture tree does not name: {missing}"


def _documented_metrics() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "server.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        name = re.match(r"`(\w+)`", cells[0])
        assert name is not None, line
        labels = re.sub(r"\([^)]*\)", "", cells[1])  # values of a label are noted in brackets
        rows[name.group(1)] = set(re.findall(r"`(\w+)`", labels))
    return rows


def test_every_registered_metric_is_in_the_docs_table() -> None:
    metrics = ServerMetrics()
    registered: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            registered[name] = set(value._labelnames)
    assert _documented_metrics() == registered
