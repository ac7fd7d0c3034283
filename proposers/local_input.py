"""What an in-process model (vLLM, torch) reads of a conversation: text, and ``developer`` turns as ``system``.

moa hands such a model token ids from its chat template, so image and audio parts cannot reach it: with
``input: [text]`` each becomes a marker (``moa.content.with_markers``); without it a conversation holding one is
refused naming the backend and the part (and, for vLLM, whether its model is multimodal at all: vLLM's model
config says), never stripped in silence.
"""

from __future__ import annotations

from moa.config.backends import InProcessBackendConfig
from moa.content import with_markers
from moa.errors import BadRequestError
from moa.types import Message
from proposers.chat_template import developer_as_system


def local_messages(
    name: str, config: InProcessBackendConfig, messages: list[Message], *, multimodal: bool | None = None
) -> tuple[list[Message], str | None]:
    """``messages`` as the in-process backend ``name`` reads them, and what changed (``None``: nothing). Raises
    ``BadRequestError`` for an image or audio part it was not told to read as a marker."""
    if config.input is None:
        for i, m in enumerate(messages):
            for j, part in enumerate(m.parts or ()):
                if part["type"] != "text":
                    model = "its model is not multimodal" if multimodal is False else "moa sends it text only"
                    raise BadRequestError(
                        f"{name}: messages[{i}].content[{j}]: a {part['type']} part cannot reach this in-process "
                        f"backend ({model}); set backends.{name}.input: [text] to send a marker instead",
                        backend=name,
                        status=400,
                    )
    messages, marked = with_markers(messages, config.reads)
    messages, developer = developer_as_system(messages)
    return messages, "; ".join(n for n in (marked, developer) if n) or None
