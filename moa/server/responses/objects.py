"""The response object, as OpenAI returns it, from what an ensemble answered.

``ResponseDraft`` holds one response's identity (``resp_...``, its message item's ``msg_...``, the request's
echoed settings) from the moment it is created to its end, so the streamed events and the whole answer are
built from the same place: ``snapshot`` while in progress, ``finish`` for ``completed`` (or ``incomplete`` with
``incomplete_details.reason: max_output_tokens`` when the answer hit its token cap), ``fail`` for ``failed``
with ``error``. Usage is the chat usage summed over every model call, renamed (``input_tokens``,
``output_tokens``, ``input_tokens_details.cached_tokens``), with moa's ``cost`` (USD) when every call was priced.
"""

from __future__ import annotations

import time
from typing import Any

from moa.server.responses.formats import echoed
from moa.server.responses.items import Item, new_id
from moa.server.responses.schema import ParsedResponses
from moa.server.responses.tools import call_item, echoed_tools
from moa.tools import ToolCall
from moa.types import CallRecord, Usage

#: chat finish reasons -> (status, incomplete_details.reason)
_ENDS: dict[str, tuple[str, str | None]] = {"length": ("incomplete", "max_output_tokens")}


def response_usage(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }
    if usage.cost is not None:
        out["cost"] = usage.cost
    return out


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseDraft:
    """One response from ``created`` to its end."""

    def __init__(self, parsed: ParsedResponses) -> None:
        self.parsed = parsed
        self.id = new_id("resp")
        self.message_id = new_id("msg")
        self.created_at = int(time.time())
        self._call_items: dict[str, str] = {}  # call id -> its output item's id (``fc_...``)

    def call_item_id(self, call_id: str) -> str:
        """The ``function_call`` item's id of a call: the same in the stream's events and the finished response."""
        return self._call_items.setdefault(call_id, new_id("fc"))

    def _object(self, status: str, output: list[Item], **fields: Any) -> dict[str, Any]:
        req = self.parsed.body
        tools, tool_choice, parallel = echoed_tools(self.parsed.tools)
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": None,
            "model": req.model,
            "output": output,
            "parallel_tool_calls": parallel,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": req.store is not False,
            "temperature": req.temperature,
            "text": echoed(req.text),
            "tool_choice": tool_choice,
            "tools": tools,
            "top_logprobs": 0,
            "top_p": req.top_p,
            "truncation": "disabled",
            "usage": None,
            "user": req.user,
            "metadata": req.metadata or {},
        }
        body.update(fields)
        return body

    def snapshot(self) -> dict[str, Any]:
        """The response while in progress: no output yet (``response.created``, ``response.in_progress``)."""
        return self._object("in_progress", [])

    def message(self, status: str, content: list[dict[str, Any]]) -> Item:
        """The assistant's message item (``output[0]``)."""
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def output(self, text: str, calls: tuple[ToolCall, ...], status: str) -> list[Item]:
        """The output items: the message (unless the answer only calls tools), then a ``function_call`` a call."""
        items = [self.message(status, [output_text_part(text)])] if text or not calls else []
        items += [call_item(self.call_item_id(c.id), c.id, c.name, c.arguments) for c in calls]
        return items

    def finish(
        self,
        text: str,
        calls: tuple[ToolCall, ...],
        finish_reason: str | None,
        usage: Usage,
        trace: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """The finished response: ``completed``, or ``incomplete`` when the answer reached its token cap."""
        status, reason = _ENDS.get(finish_reason or "stop", ("completed", None))
        fields: dict[str, Any] = {"usage": response_usage(usage), "completed_at": int(time.time())}
        if reason is not None:
            fields["incomplete_details"] = {"reason": reason}
        if trace is not None:
            fields["moa_trace"] = trace
        return self._object(status, self.output(text, calls, status), **fields)

    def fail(self, error: dict[str, Any], calls: list[CallRecord]) -> dict[str, Any]:
        """The response that failed after it was created (a stream's ``response.failed``): the error's code
        and message as OpenAI's ``error``, usage so far."""
        failure = {"code": error.get("code") or error.get("type"), "message": error["message"]}
        return self._object("failed", [], error=failure, usage=response_usage(Usage.total(calls)))
