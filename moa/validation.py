"""Pydantic validation errors as moa reports them at every edge: the config, the SDK's arguments, the server's
request bodies and an upstream's answers. Each problem is a dotted path (``layers[0].agents[1].temperature``,
``choices[0].message``) and a short message (``must be <= 2``, ``unknown field``).

A validator that finds a problem in another field than its own raises ``PathError`` (or several as
``PathErrors``), and the path is reported as the field's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from moa.errors import ConfigError

#: where a discriminated union sits (a pattern matching the dotted path so far) and its tags: pydantic writes the
#: tag into an error's location, though it is not a field anyone wrote
UnionTags = Sequence[tuple[re.Pattern[str], Collection[str]]]


class PathError(ValueError):
    """Raised inside a validator to report a path under the one being validated."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(message)


class PathErrors(ValueError):
    """Several ``PathError`` found by one validator, reported one by one."""

    def __init__(self, errors: list[PathError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in errors))


def dotted_path(loc: tuple[int | str, ...], tags: UnionTags = ()) -> str:
    """``loc`` written as a field path (``layers[0].agents``), without the tags of ``tags``' unions."""
    out, tag_at = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out != tag_at and any(where.fullmatch(out) and part in names for where, names in tags):
            tag_at = out  # a discriminated union's tag: not a field the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out


def _under(base: str, path: str) -> str:
    return f"{base}.{path}" if base and path else base or path


def describe_error(err: ErrorDetails | Mapping[str, Any], tags: UnionTags = ()) -> tuple[str, str]:
    """(dotted path, short message) of one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    path = dotted_path(err["loc"], tags)
    bound = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
    messages: dict[str, Callable[[], str]] = {
        "less_than_equal": lambda: f"must be <= {bound['le']}",
        "less_than": lambda: f"must be < {bound['lt']}",
        "greater_than_equal": lambda: f"must be >= {bound['ge']}",
        "greater_than": lambda: f"must be > {bound['gt']}",
        "extra_forbidden": lambda: "unknown field",
        "missing": lambda: "field required",
        "too_short": lambda: f"must have at least {ctx.get('min_length')} item(s)",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "union_tag_invalid": lambda: f"unknown type {ctx.get('tag')!r}, expected one of {ctx.get('expected_tags')}",
        "union_tag_not_found": lambda: "field 'type' required",
    }
    if kind == "value_error":
        exc = ctx.get("error")
        if isinstance(exc, PathError):
            return _under(path, exc.path), exc.message
        return path, str(exc) if exc else err["msg"]
    make = messages.get(kind)
    return path, make() if make else err["msg"].removeprefix("Value error, ")


def problems(
    error: ValidationError, at: str | None = None, tags: UnionTags = (), root: str = ""
) -> list[tuple[str, str]]:
    """Every problem of ``error`` as (dotted path, message), each path under ``at``; ``root`` names the whole
    input where a problem has no path of its own (``body``). Invalid JSON is one problem with no path."""
    whole = at or root
    found: list[tuple[str, str]] = []
    for err in error.errors(include_url=False):
        several = (err.get("ctx") or {}).get("error")
        if err["type"] == "json_invalid":
            found.append(("", f"{whole} is not valid JSON" if whole else "not valid JSON"))
        elif err["type"] == "value_error" and isinstance(several, PathErrors):
            base = _under(at or "", dotted_path(err["loc"], tags))
            found += [(_under(base, e.path), e.message) for e in several.errors]
        else:
            path, message = describe_error(err, tags)
            found.append((_under(at or "", path) or root, message))
    return found


def joined(found: Sequence[tuple[str, str]]) -> str:
    """Problems as ``path: message`` (the message alone where there is no path) joined by ``; ``."""
    return "; ".join(f"{path}: {message}" if path else message for path, message in found)


def describe(error: ValidationError, at: str | None = None, *, root: str = "", limit: int | None = None) -> str:
    """``error``'s problems as one line: the first ``limit`` of them, then how many more there are."""
    found = problems(error, at, root=root)
    shown = found if limit is None else found[:limit]
    more = len(found) - len(shown)
    return joined(shown) + (f" (and {more} more)" if more > 0 else "")


class ConfigProblems(ConfigError):
    """Every problem of one input, each as (dotted path, message); ``str()`` joins them with ``; ``."""

    def __init__(self, found: list[tuple[str, str]]) -> None:
        self.problems = found
        super().__init__(joined(found))


def config_error(
    error: ValidationError, at: str | None = None, *, every: bool = False, tags: UnionTags = ()
) -> ConfigError:
    """A pydantic ``ValidationError`` as a ``ConfigError`` naming the field: its first problem, at a path under
    ``at`` (``messages[1]`` + ``role``); with ``every``, all its problems as ``path: message`` joined by ``; ``
    (``path`` is then the first problem's)."""
    found = problems(error, at, tags)
    first_path = found[0][0] or None
    if not every:
        return ConfigError(found[0][1], first_path)
    err = ConfigProblems(found)
    err.path = first_path
    return err


__all__ = [
    "ConfigProblems",
    "PathError",
    "PathErrors",
    "UnionTags",
    "config_error",
    "describe",
    "describe_error",
    "dotted_path",
    "joined",
    "problems",
]
