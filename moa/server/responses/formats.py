"""``text.format`` of a Responses request as the chat request's ``response_format``, and back for the echo.

The Responses API writes a schema's format flat (``{"type": "json_schema", "name", "schema", "strict",
"description"}``), chat completions under ``json_schema``; ``text`` and ``json_object`` are the same in both. The
translated format is checked by the chat request's own field (``moa.response_format``: a bad schema is a 400),
its error's path written back in the Responses request's terms (``text.format.schema``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from moa.config import config_error
from moa.errors import ConfigError
from moa.response_format import JSONFormat, ResponseFormatJSONObject, ResponseFormatJSONSchema
from moa.types import SamplingParams

TEXT = {"type": "text"}
_SCHEMA_FIELDS = ("name", "schema", "strict", "description")


class TextConfig(BaseModel):
    """``text``: the answer's format; ``verbosity`` only as OpenAI's default (moa cannot honour another)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: dict[str, Any] | None = None
    verbosity: Literal["medium"] | None = None


def chat_format(text: TextConfig | None) -> JSONFormat | None:
    """The ``response_format`` the request's ``text.format`` asks for; ``None`` for plain text."""
    fmt = None if text is None else text.format
    if fmt is None or fmt == TEXT:
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        unknown = sorted(set(fmt) - {"type", *_SCHEMA_FIELDS})
        if unknown:
            raise ConfigError("unknown field", f"text.format.{unknown[0]}")
        wire: dict[str, Any] = {"type": "json_schema", "json_schema": {k: fmt[k] for k in _SCHEMA_FIELDS if k in fmt}}
    elif kind == "json_object":
        wire = dict(fmt)
    else:
        raise ConfigError("must be 'text', 'json_object' or 'json_schema'", "text.format.type")
    try:
        checked = SamplingParams.model_validate({"response_format": wire}).response_format
    except ValidationError as e:
        raise _renamed(config_error(e)) from None
    return checked if isinstance(checked, (ResponseFormatJSONObject, ResponseFormatJSONSchema)) else None


def _renamed(error: ConfigError) -> ConfigError:
    """A chat ``response_format`` error's path as the Responses request's."""
    path = error.path or "text.format"
    for chat, ours in (("response_format.json_schema.", "text.format."), ("response_format", "text.format")):
        if path.startswith(chat):
            path = ours + path.removeprefix(chat)
            break
    message = str(error).removeprefix(f"{error.path}: ") if error.path else str(error)
    return ConfigError(message, path)


def echoed(text: TextConfig | None) -> dict[str, Any]:
    """The response object's ``text``: the format as the request wrote it."""
    fmt = TEXT if text is None or text.format is None else text.format
    return {"format": fmt, "verbosity": "medium"}
