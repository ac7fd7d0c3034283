"""``response_format``, as OpenAI's chat completions take it: ``text``, ``json_object`` or ``json_schema``.

A ``json_schema`` format's schema is checked as a JSON Schema (draft 2020-12) when the request is read, so a bad
schema is the client's 400 naming ``response_format.json_schema.schema``, not an upstream's failure later. ``text``
asks for nothing and reads as no format at all. ``of_model`` makes the format of a pydantic model the way
openai's ``parse()`` does (strict: every property required, no others allowed).

Imports only pydantic and jsonschema, so ``moa.types`` may declare the field with it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import jsonschema
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class _Format(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ResponseFormatText(_Format):
    type: Literal["text"]


class ResponseFormatJSONObject(_Format):
    """Any JSON object."""

    type: Literal["json_object"]

    def wire(self) -> dict[str, Any]:
        return {"type": "json_object"}


class JSONSchema(_Format):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _a_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
            raise ValueError(f"not a valid JSON Schema (draft 2020-12): at schema{where}: {e.message}") from None
        return schema


class ResponseFormatJSONSchema(_Format):
    """JSON matching ``json_schema.schema``."""

    type: Literal["json_schema"]
    json_schema: JSONSchema

    def wire(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": self.json_schema.model_dump(by_alias=True, exclude_none=True)}


def _text_is_none(value: Any) -> Any:
    return None if isinstance(value, ResponseFormatText) else value


#: a response format that asks for JSON (``text`` reads as ``None``: no format)
JSONFormat = ResponseFormatJSONObject | ResponseFormatJSONSchema
ResponseFormat = Annotated[ResponseFormatText | JSONFormat, Field(discriminator="type"), AfterValidator(_text_is_none)]


#: the ``type`` tags of the formats
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` in the form OpenAI's strict mode takes: every object lists all its properties as required and
    allows no others (as openai's ``to_strict_json_schema`` writes a pydantic model's)."""
    out = dict(schema)
    if out.get("type") == "object" or "properties" in out:
        props = {k: strict_schema(v) for k, v in (out.get("properties") or {}).items()}
        out["properties"] = props
        out["required"] = list(props)
        out.setdefault("additionalProperties", False)
    for key in ("$defs", "definitions"):
        if key in out:
            out[key] = {k: strict_schema(v) for k, v in out[key].items()}
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        if key in out:
            out[key] = [strict_schema(v) for v in out[key]]
    if isinstance(out.get("items"), dict):
        out["items"] = strict_schema(out["items"])
    if "default" in out and out.get("default") is None:
        del out["default"]
    return out


def of_model(model: type[BaseModel]) -> ResponseFormatJSONSchema:
    """The ``json_schema`` format of a pydantic model, strict, named after the class (openai's ``parse()``)."""
    schema = strict_schema(model.model_json_schema())
    return ResponseFormatJSONSchema(
        type="json_schema", json_schema=JSONSchema(name=model.__name__[:64], schema=schema, strict=True)
    )


__all__ = [
    "RESPONSE_FORMAT_TYPES",
    "JSONFormat",
    "JSONSchema",
    "ResponseFormat",
    "ResponseFormatJSONObject",
    "ResponseFormatJSONSchema",
    "ResponseFormatText",
    "of_model",
    "strict_schema",
]
