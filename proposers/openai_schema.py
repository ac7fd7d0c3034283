"""Pydantic models of what an OpenAI-compatible upstream sends: the bodies ``OpenAIProposer`` reads.

Validated at the edge, so a body of the wrong shape is one ``MalformedResponseError`` naming the field
(``choices[0].message: ...``) instead of an AttributeError deep in the code that reads it. Unknown fields are
ignored; token counts are strict non-negative integers and indices strict integers (``null`` reads as 0 for
both); text is strictly a string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from moa import validation
from moa.types import Usage


def _none_is_zero(value: object) -> object:
    return 0 if value is None else value


TokenCount = Annotated[StrictInt, Field(ge=0), BeforeValidator(_none_is_zero)]
Index = Annotated[StrictInt, BeforeValidator(_none_is_zero)]
Number = StrictFloat | StrictInt


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PromptTokensDetails(_Body):
    cached_tokens: TokenCount = 0


class CompletionUsage(_Body):
    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    def to_usage(self) -> Usage:
        """Moa's usage; cached tokens only when the upstream reported them (never more than the prompt)."""
        details = self.prompt_tokens_details
        cached = None if details is None else min(details.cached_tokens, self.prompt_tokens)
        return Usage.of(self.prompt_tokens, self.completion_tokens, cached)


class TopLogprob(_Body):
    token: StrictStr
    logprob: Number


class TokenLogprob(_Body):
    token: StrictStr
    logprob: Number
    top_logprobs: list[TopLogprob] | None = None


class ChoiceLogprobs(_Body):
    content: list[TokenLogprob] | None = None


class FunctionCall(_Body):
    name: StrictStr
    arguments: StrictStr = "{}"


class MessageToolCall(_Body):
    id: StrictStr | None = None  # some servers send none: moa makes one
    function: FunctionCall


class ChatCompletionMessage(_Body):
    content: StrictStr | None = None
    tool_calls: list[MessageToolCall] | None = None


class ChatCompletionChoice(_Body):
    index: Index = 0
    message: ChatCompletionMessage
    finish_reason: StrictStr | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Body):
    """A ``/chat/completions`` answer."""

    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None = None
    id: Any = None  # read for traces only (``gen_ai.response.id``): any shape is taken, a string is used
    model: Any = None  # the same (``gen_ai.response.model``)


class FunctionCallPiece(_Body):
    name: StrictStr | None = None
    arguments: StrictStr | None = None


class ToolCallPiece(_Body):
    index: Index = 0
    id: StrictStr | None = None
    function: FunctionCallPiece | None = None


class ChoiceDelta(_Body):
    content: StrictStr | None = None
    tool_calls: list[ToolCallPiece] | None = None


class ChunkChoice(_Body):
    index: Index = 0
    delta: ChoiceDelta | None = None
    finish_reason: StrictStr | None = None
    logprobs: ChoiceLogprobs | None = None  # the positions this chunk's text begins


class ErrorObject(_Body):
    message: StrictStr | None = None


class ChatCompletionChunk(_Body):
    """One event of a streamed ``/chat/completions`` answer (or an ``error`` sent mid-stream)."""

    choices: list[ChunkChoice] | None = None
    usage: CompletionUsage | None = None
    error: ErrorObject | StrictStr | None = None
    id: Any = None  # read for traces only, as ChatCompletion's
    model: Any = None


class ErrorBody(_Body):
    """An error status's body: ``{"error": {"message": ...}}``."""

    error: ErrorObject | StrictStr


class EmbeddingItem(_Body):
    index: Index = 0
    embedding: list[Number]


class EmbeddingUsage(_Body):
    prompt_tokens: TokenCount = 0


class CreateEmbeddingResponse(_Body):
    """An ``/embeddings`` answer."""

    data: list[EmbeddingItem]
    usage: EmbeddingUsage | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """One embeddings call: a vector per input, in input order, and the tokens the upstream counted."""

    vectors: list[list[float]]
    usage: Usage


_M = TypeVar("_M", bound=BaseModel)


def parse_body(model: type[_M], raw: bytes | str) -> _M:
    """``raw`` validated as ``model``: pydantic's JSON parser first (fast), and Python's for what JSON allows but
    that parser refuses (a lone surrogate escape such as ``"\\ud83d"``, which a model's text may hold).
    Raises ``ValidationError``."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        if not any(item["type"] == "json_invalid" for item in e.errors(include_url=False)):
            raise
        try:
            decoded = json.loads(raw)
        except (ValueError, RecursionError):
            raise e from None
        return model.model_validate(decoded)


def describe(error: ValidationError, what: str = "") -> str:
    """What was wrong, by field path (``choices[0].message: Input should be an object``), at most three problems;
    ``what`` names the part read (``chunk``), else the ``body``."""
    return validation.describe(error, what or None, root="body", limit=3)


__all__ = [
    "parse_body",
    "ChatCompletion",
    "ChatCompletionChunk",
    "CreateEmbeddingResponse",
    "EmbeddingResult",
    "ErrorBody",
    "describe",
]
