"""The server's one map from exceptions to HTTP statuses and OpenAI error bodies.

Requests the server refuses before running them raise a ``Rejected`` subclass; everything an ensemble raises
is already in ``moa.errors``. ``error_for`` looks an exception up along its class hierarchy, so the most
specific entry wins (``ContextLengthError`` before ``BackendError``), and returns the status plus the body
``{"error": {"message", "type", "param", "code"}}``. Anything not in the map is a bug: status 500 with a
fixed message, and the details go to the server's log, never to the client.
"""

from __future__ import annotations

from typing import Any

from moa.errors import (
    BackendError,
    BudgetExceededError,
    ConfigError,
    ContextLengthError,
    DeadlineExceededError,
    InsufficientProposalsError,
    InvalidAnswerError,
    InvalidStructuredOutputError,
    InvalidToolCallError,
    MoaError,
    RateLimitError,
)


class Rejected(MoaError):
    """The server refuses a request without running it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class Unauthorized(Rejected):
    pass


class ModelNotFound(Rejected):
    pass


class RouteNotFound(Rejected):
    pass


class MethodNotAllowed(Rejected):
    pass


class BodyTooLarge(Rejected):
    pass


class QueueFull(Rejected):
    pass


class ShuttingDown(Rejected):
    pass


class MalformedRequest(Rejected):
    """The HTTP message itself is broken: bad framing, oversized headers, a body that cannot be decoded."""


class BodyReadTimeout(Rejected):
    """The request body did not arrive within ``--read-timeout``."""


class UnsupportedMediaType(Rejected):
    """The body is not declared ``application/json``."""


class ExpectationFailed(Rejected):
    """An ``Expect`` header other than ``100-continue``."""


class ResponseNotFound(Rejected):
    """No stored response of that id for this key (``/v1/responses/{id}``, ``previous_response_id``)."""


class StoreUnavailable(Rejected):
    """The response store did not answer (a Redis server down, a SQLite file that cannot be written)."""


class ClientClosed(ConnectionResetError):
    """The client closed its connection before its answer was complete: nothing more is written to it. Counted
    with status 499 (nginx's "client closed request"); aiohttp drops the connection quietly."""


#: exception class -> (HTTP status, OpenAI error type, code)
STATUS_MAP: dict[type[BaseException], tuple[int, str, str | None]] = {
    ConfigError: (400, "invalid_request_error", None),
    MalformedRequest: (400, "invalid_request_error", "malformed_request"),
    ContextLengthError: (400, "invalid_request_error", "context_length_exceeded"),
    Unauthorized: (401, "authentication_error", "invalid_api_key"),
    BudgetExceededError: (402, "invalid_request_error", "budget_exceeded"),
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    RouteNotFound: (404, "invalid_request_error", "not_found"),
    ResponseNotFound: (404, "invalid_request_error", "response_not_found"),
    MethodNotAllowed: (405, "invalid_request_error", "method_not_allowed"),
    BodyReadTimeout: (408, "invalid_request_error", "request_timeout"),
    BodyTooLarge: (413, "invalid_request_error", "request_too_large"),
    UnsupportedMediaType: (415, "invalid_request_error", "unsupported_media_type"),
    ExpectationFailed: (417, "invalid_request_error", "expectation_failed"),
    ClientClosed: (499, "invalid_request_error", "client_closed_request"),
    QueueFull: (429, "rate_limit_error", "queue_full"),
    BackendError: (502, "upstream_error", "upstream_failed"),
    RateLimitError: (503, "upstream_error", "upstream_rate_limited"),
    InsufficientProposalsError: (503, "upstream_error", "insufficient_proposals"),
    ShuttingDown: (503, "server_error", "shutting_down"),
    StoreUnavailable: (503, "server_error", "response_store_unavailable"),
    DeadlineExceededError: (504, "timeout_error", "deadline_exceeded"),
    InvalidAnswerError: (502, "upstream_error", "invalid_answer"),
    InvalidStructuredOutputError: (502, "upstream_error", "invalid_structured_output"),
    InvalidToolCallError: (502, "upstream_error", "invalid_tool_call"),
}

_INTERNAL = (500, "server_error", "internal_error")

#: refusals after which the connection is closed: what follows on it cannot be trusted to be a new request
CLOSES_CONNECTION = (MalformedRequest, BodyReadTimeout, ExpectationFailed)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for an exception; unknown ones become a 500 that reveals nothing."""
    for cls in type(exc).__mro__:
        if cls in STATUS_MAP:
            status, type_, code = STATUS_MAP[cls]
            return status, error_body(str(exc), type_, _param(exc), code)
    status, type_, code = _INTERNAL
    return status, error_body("internal server error; the server log has the details", type_, None, code)


def _param(exc: BaseException) -> str | None:
    if isinstance(exc, (ConfigError, Rejected)):
        return exc.param if isinstance(exc, Rejected) else exc.path
    if isinstance(exc, InvalidAnswerError):
        return exc.param
    if isinstance(exc, ContextLengthError):
        return "messages"
    return None
