"""Content parts: a message's ``text``, ``image_url`` and ``input_audio`` parts, as OpenAI's chat API sends them.

``read_content`` validates a message's content at the edge (server, SDK): a string, or a list of parts; the text
parts joined by newlines are the message's ``content`` (what every prompt, budget and template reads), and the
parts are kept on the message (``Message.parts``) when any is not text. Each backend takes the kinds its config's
``input`` lists (``moa.config.BackendConfigBase.reads``): a part of another kind is replaced by a marker
(``[image]``, ``[audio]``) where it stood, and the call's trace record says so (``with_markers``). A layer where no
proposer reads a part is refused before it runs (``unread_part``): the client hears which part, it is never
stripped in silence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from moa.errors import ConfigError
from moa.types import Message
from moa.validation import describe_error

#: what a backend may take: text, images, audio (``input:`` of a backend config)
InputKind = Literal["text", "image", "audio"]
#: each part type's kind, and the marker a backend that does not take it reads instead
KINDS: dict[str, InputKind] = {"text": "text", "image_url": "image", "input_audio": "audio"}
MARKERS: dict[str, str] = {"image_url": "[image]", "input_audio": "[audio]"}


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageURL(_Part):
    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Part):
    data: Annotated[str, Field(min_length=1)]
    format: Literal["wav", "mp3"]


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


_PART: TypeAdapter[TextPart | ImagePart | AudioPart] = TypeAdapter(
    Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]
)


def read_content(content: Any, at: str) -> tuple[str, tuple[dict[str, Any], ...] | None]:
    """A message's content (``at`` its path, ``messages[1].content``): its text, and its parts when any is not
    text (``None`` otherwise). Raises ``ConfigError`` naming the part (``messages[1].content[0].type``)."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise ConfigError("must be a string or a list of content parts", at)
    parts = []
    for j, raw in enumerate(content):
        where = f"{at}[{j}]"
        if not isinstance(raw, dict) or raw.get("type") not in KINDS:
            got = raw.get("type") if isinstance(raw, dict) else None
            raise ConfigError(
                f"unsupported content part type {got!r}; moa takes 'text', 'image_url' and 'input_audio'",
                f"{where}.type",
            )
        try:
            part = _PART.validate_python(raw)
        except ValidationError as e:
            path, message = describe_error(e.errors(include_url=False)[0])
            raise ConfigError(message, f"{where}.{path.removeprefix(part_tag(raw) + '.')}") from None
        parts.append(part.model_dump(exclude_none=True))
    text = "\n".join(p["text"] for p in parts if p["type"] == "text")
    return text, tuple(parts) if any(p["type"] != "text" for p in parts) else None


def part_tag(raw: dict[str, Any]) -> str:
    """The tag pydantic writes into a part's error path (its ``type``)."""
    return str(raw.get("type"))


def kind_of(part: dict[str, Any]) -> InputKind:
    return KINDS[part["type"]]


def with_markers(messages: Sequence[Message], reads: Callable[[InputKind], bool]) -> tuple[list[Message], str | None]:
    """``messages`` as a backend that reads only what ``reads`` says sees them: each part of another kind replaced
    by its marker in the text, where it stood; and what was replaced (``None``: nothing)."""
    out: list[Message] = []
    replaced: list[str] = []
    for i, m in enumerate(messages):
        if m.parts is None or all(reads(kind_of(p)) for p in m.parts):
            out.append(m)
            continue
        pieces: list[str] = []
        kept: list[dict[str, Any]] = []
        for j, p in enumerate(m.parts):
            if reads(kind_of(p)):
                kept.append(p)
                if p["type"] == "text":
                    pieces.append(p["text"])
            else:
                replaced.append(f"messages[{i}].content[{j}] ({p['type']})")
                marker = MARKERS[p["type"]]
                pieces.append(marker)
                kept.append({"type": "text", "text": marker})
        parts = tuple(kept) if any(p["type"] != "text" for p in kept) else None
        out.append(replace(m, content="\n".join(pieces), parts=parts))
    if not replaced:
        return out, None
    return out, f"content parts this backend does not take (input:) replaced by markers: {', '.join(replaced)}"


def unread_part(messages: Sequence[Message], readers: Sequence[Callable[[InputKind], bool]]) -> str | None:
    """The path of the first part no reader takes (``messages[0].content[1]``); ``None`` when each is read."""
    for i, m in enumerate(messages):
        for j, p in enumerate(m.parts or ()):
            if not any(reads(kind_of(p)) for reads in readers):
                return f"messages[{i}].content[{j}]"
    return None


__all__ = ["KINDS", "MARKERS", "InputKind", "kind_of", "read_content", "unread_part", "with_markers"]
