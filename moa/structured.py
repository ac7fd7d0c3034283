"""Structured outputs: the final answer's check against the request's ``response_format`` (``moa.repair`` runs it).

``json_object``: the content is one JSON object. ``json_schema``: the content is JSON valid under the schema
(JSON Schema draft 2020-12, ``jsonschema``); the problem names the first violation (``jsonschema``'s best match) at
its JSON path (``$.items[0].price: 'x' is not of type 'number'``). ``parsed`` decodes a checked answer.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import referencing.exceptions
from jsonschema.exceptions import best_match

from moa.errors import InvalidStructuredOutputError
from moa.repair import AnswerCheck
from moa.response_format import JSONFormat, ResponseFormatJSONSchema
from moa.types import ChatRequest, Generation

#: at most this much of a refused answer is quoted in the problem
_QUOTE = 80


def json_format(request: ChatRequest) -> JSONFormat | None:
    """The JSON format the request's answer must take, or ``None``."""
    fmt = request.params.response_format
    return fmt if fmt is not None and fmt.type != "text" else None


def schema_check(request: ChatRequest) -> AnswerCheck | None:
    """The check of the final answer that ``request``'s ``response_format`` asks for; ``None`` for free text."""
    fmt = json_format(request)
    if fmt is None:
        return None
    validator, name = None, ""
    if isinstance(fmt, ResponseFormatJSONSchema):
        validator, name = jsonschema.Draft202012Validator(fmt.json_schema.schema_), fmt.json_schema.name

    def check(answer: Generation) -> InvalidStructuredOutputError | None:
        if answer.tool_calls and not answer.text.strip():  # a turn of tool calls: the format is for the answer
            return None
        try:
            value = json.loads(answer.text)
        except (ValueError, RecursionError) as e:
            return InvalidStructuredOutputError(f"the answer is not valid JSON ({e}): {_quoted(answer.text)}")
        if validator is None:
            if not isinstance(value, dict):
                return InvalidStructuredOutputError(f"the answer is JSON but not an object: {_quoted(answer.text)}")
            return None
        try:
            error = best_match(validator.iter_errors(value))
        except (referencing.exceptions.Unresolvable, RecursionError) as e:
            return InvalidStructuredOutputError(f"the schema {name!r} cannot be applied: {e}")
        if error is None:
            return None
        return InvalidStructuredOutputError(
            f"the answer does not match the schema {name!r}: at {json_path(error.absolute_path)}: {error.message}"
        )

    return check


def json_path(path: Any) -> str:
    """A place in a JSON document as a JSONPath (``$.items[0].price``)."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def parsed(request: ChatRequest, text: str) -> Any:
    """The decoded JSON of a checked answer to a request that asked for JSON; ``None`` for free text."""
    return None if json_format(request) is None else json.loads(text)


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "...")


__all__ = ["json_format", "json_path", "parsed", "schema_check"]
