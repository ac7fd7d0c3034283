"""moa's exceptions, one tree.

    MoaError
    ├── ConfigError                  a config or an argument is invalid; names the dotted field path
    │   └── UnsupportedFieldError        a backend cannot honour a sampling field that is set (names both)
    ├── BackendError                 a model call failed (carries backend name and HTTP status if any)
    │   ├── APIStatusError           the backend answered with an error status
    │   │   ├── BadRequestError          400, 422: the request itself is wrong (not retried)
    │   │   │   └── ContextLengthError       the prompt does not fit the model's context
    │   │   ├── AuthenticationError      401 (not retried)
    │   │   ├── PermissionDeniedError    403 (not retried)
    │   │   ├── NotFoundError            404 (not retried)
    │   │   ├── RequestTimeoutError      408: retried
    │   │   ├── ConflictError            409: retried (openai-python does)
    │   │   ├── RateLimitError           429: retried, honouring Retry-After
    │   │   └── ServerError              5xx: retried
    │   ├── MalformedResponseError   the body is not what the protocol says (wrong shape, bad JSON): retried
    │   ├── APIConnectionError       connection refused, reset or dropped: retried
    │   ├── APITimeoutError          one call ran past its timeout: retried
    │   └── EngineError              a local engine failed (not retried)
    ├── InsufficientProposalsError   fewer agents of a layer survived than ``min_proposals``
    ├── InvalidAnswerError           the final answer breaks what the request asked of it, after one repair call
    │   ├── InvalidStructuredOutputError    its content is not the JSON that ``response_format`` asks for
    │   └── InvalidToolCallError            its tool calls break ``tool_choice``, ``tools`` or their schemas
    ├── BudgetExceededError          the next call would take the request past its ``max_cost_usd``
    └── DeadlineExceededError        the request ran past its deadline

Foreign exceptions (aiohttp, asyncio, vLLM) are mapped to these at the boundary of the module that meets them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moa.types import CallRecord


class MoaError(Exception):
    """Base of every error moa raises on purpose."""

    #: set when a request fails: its trace so far (``CallRecord``s of the calls made before the failure)
    trace: list[CallRecord] | None = None


class ConfigError(MoaError, ValueError):
    """A config or argument is invalid; ``path`` is the dotted field path, e.g. ``layers[1].agents[0].n``."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class UnsupportedFieldError(ConfigError):
    """A sampling field is set where it would reach a backend that cannot honour it; never dropped in silence."""

    def __init__(self, message: str, path: str, *, field: str, backend: str) -> None:
        self.field = field
        self.backend = backend
        super().__init__(message, path)


class BackendError(MoaError):
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        self.backend = backend
        self.status = status
        #: seconds the upstream asked us to wait (Retry-After / retry-after-ms), as sent: may be <= 0
        self.retry_after = retry_after
        #: the upstream's own verdict (``x-should-retry: true|false``); ``None`` when it gave none
        self.should_retry = should_retry
        super().__init__(message)


class APIStatusError(BackendError):
    pass


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class RequestTimeoutError(APIStatusError):
    retryable = True


class ConflictError(APIStatusError):
    retryable = True


class RateLimitError(APIStatusError):
    retryable = True


class ServerError(APIStatusError):
    retryable = True


class MalformedResponseError(BackendError):
    """The upstream answered, but its body is not the shape the protocol promises; retried like a 5xx."""

    retryable = True


class APIConnectionError(BackendError):
    retryable = True


class APITimeoutError(BackendError):
    retryable = True


class ContextLengthError(BadRequestError):
    pass


class EngineError(BackendError):
    pass


class InsufficientProposalsError(MoaError):
    """Raised when too few agents of a layer answered; ``failures`` maps agent name to why it failed."""

    def __init__(self, layer: int, survivors: int, required: int, failures: dict[str, str]) -> None:
        self.layer = layer
        self.survivors = survivors
        self.required = required
        self.failures = failures
        why = "; ".join(f"{agent}: {reason}" for agent, reason in failures.items())
        super().__init__(f"layer {layer}: only {survivors} of the agents answered, {required} required (failed: {why})")


class BudgetExceededError(MoaError):
    """A call was not made: the request's spend so far plus that call's worst case passes ``max_cost_usd``."""

    def __init__(self, limit_usd: float, spent_usd: float, needed_usd: float, call: str) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd  # spent and held by calls in flight when the call was refused
        self.needed_usd = needed_usd  # the refused call's worst case
        self.call = call
        super().__init__(
            f"budget of ${limit_usd:.6g} exceeded: ${spent_usd:.6g} spent, the next call ({call}) needs up to "
            f"${needed_usd:.6g}"
        )


class DeadlineExceededError(MoaError, TimeoutError):
    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        super().__init__(f"request exceeded its deadline of {deadline_s:g} s")


class InvalidAnswerError(MoaError):
    """The final answer breaks what the request asked of it (``moa.repair``); ``param`` names the request field."""

    param: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param if param is not None else type(self).param
        super().__init__(message)


class InvalidStructuredOutputError(InvalidAnswerError):
    """The answer's content is not valid JSON, or breaks ``response_format``'s schema (the first violation)."""

    param = "response_format"


class InvalidToolCallError(InvalidAnswerError):
    """The answer's tool calls break the request: no call under ``tool_choice: required``, another function than
    the named one, a call under ``none``, an unknown function, arguments that are not a JSON object, or arguments
    failing a ``strict`` tool's schema."""

    param = "tool_choice"


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
    409: ConflictError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_for_status(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status >= 500:
        return ServerError
    return _STATUS_ERRORS.get(status, BadRequestError)
