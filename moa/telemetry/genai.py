"""The attributes of moa's spans: OpenTelemetry's GenAI semantic conventions (``gen_ai.*``) and moa's own
(``moa.*``), from what moa already knows of a call (its sampling, its trace record) and a request (its trace)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from moa.telemetry.span import AttributeValue
from moa.types import CallRecord, Message, SamplingParams, Usage

#: each sampling field and its GenAI request attribute
_REQUEST_FIELDS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "max_tokens": "gen_ai.request.max_tokens",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


def server(endpoint: str | None) -> dict[str, AttributeValue]:
    """``server.address`` and ``server.port`` of an upstream's URL (never its user or password)."""
    if not endpoint:
        return {}
    split = urlsplit(endpoint)
    if split.hostname is None:
        return {}
    try:
        port = split.port or (443 if split.scheme == "https" else 80)
    except ValueError:
        return {"server.address": split.hostname}
    return {"server.address": split.hostname, "server.port": port}


def call_attributes(
    operation: str, provider: str, model: str, where: dict[str, AttributeValue], params: SamplingParams | None, n: int
) -> dict[str, AttributeValue]:
    """A CLIENT span's attributes when the call starts: its operation, provider, model and sampling."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        **where,
    }
    if params is not None:
        for name, key in _REQUEST_FIELDS.items():
            value = getattr(params, name)
            if value is not None:
                attributes[key] = value
        if params.stop:
            attributes["gen_ai.request.stop_sequences"] = list(params.stop)
    if n != 1:
        attributes["gen_ai.request.choice.count"] = n
    return attributes


def record_attributes(record: CallRecord) -> dict[str, AttributeValue]:
    """A CLIENT span's attributes when the call ends, from its trace record."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "moa.outcome": record.outcome,
        "moa.hedge": record.hedge,
        "moa.cached_tokens": record.cached_prompt_tokens,
        "moa.retries": record.retries,
        "moa.backend": record.backend,
    }
    if record.cached_prompt_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = record.cached_prompt_tokens
    if record.reason is not None:
        attributes["moa.reason"] = record.reason
    if record.cost_usd is not None:
        attributes["moa.cost_usd"] = record.cost_usd
    if record.generations is not None:
        attributes["moa.generations"] = record.generations
    return attributes


def request_attributes(ensemble: str, request_id: str) -> dict[str, AttributeValue]:
    """A request's span when it starts (``moa.request_id``: a server's ``x-request-id``; the SDK's requests have none)."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": ensemble,
    }
    if request_id != "-":
        attributes["moa.request_id"] = request_id
    return attributes


def totals(trace: Sequence[CallRecord]) -> dict[str, AttributeValue]:
    """A request's span when it ends: the tokens and cost of every call it made."""
    usage = Usage.total(list(trace))
    attributes: dict[str, AttributeValue] = {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "moa.calls": len(trace),
    }
    if usage.cost is not None:
        attributes["moa.cost_usd"] = usage.cost
    return attributes


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, list):  # content parts: their text
        return [{"type": "text", "content": p["text"]} for p in content if isinstance(p, dict) and "text" in p]
    return []


def input_messages(messages: Sequence[Message]) -> str:
    """``gen_ai.input.messages``: the prompt as sent, in the conventions' JSON shape."""
    shaped = []
    for message in messages:
        wire = message.to_dict()
        shaped.append({"role": wire.get("role"), "parts": _text_parts(wire.get("content"))})
    return json.dumps(shaped, ensure_ascii=False)


def output_messages(texts: Sequence[str], finish_reasons: Sequence[str]) -> str:
    """``gen_ai.output.messages``: each generation's text and finish reason."""
    shaped = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": text}],
            "finish_reason": finish_reasons[i] if i < len(finish_reasons) else "stop",
        }
        for i, text in enumerate(texts)
    ]
    return json.dumps(shaped, ensure_ascii=False)
