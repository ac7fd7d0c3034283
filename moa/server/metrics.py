"""The server's counters in Prometheus text format (exposition format 0.0.4), written by hand.

Request-level figures come from the handler; upstream figures come from the trace records of each request
(one record per model call): calls by outcome (``error`` is a failure), retries and tokens, per backend.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable

from moa.types import CallRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds; ensembles run from tens of milliseconds (cached) to minutes (long answers of big models)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, extra] if extra else list(labels)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def samples(self) -> Iterable[str]:
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {_fmt_value(value)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help_, buckets
        # per label set: [count per bucket (the last is +Inf)], sum
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def samples(self) -> Iterable[str]:
        for labels, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                yield f"{self.name}_bucket{_fmt_labels(labels, ('le', _fmt_value(bound)))} {running}"
            yield f"{self.name}_sum{_fmt_labels(labels)} {_fmt_value(self.sums[labels])}"
            yield f"{self.name}_count{_fmt_labels(labels)} {running}"


class ServerMetrics:
    """Every figure ``/metrics`` reports; one instance per server."""

    def __init__(self) -> None:
        self.requests = Counter("moa_requests_total", "Chat completion requests by ensemble and HTTP status.")
        self.latency = Histogram("moa_request_duration_seconds", "Chat completion latency, to the last byte.")
        self.ttft = Histogram("moa_time_to_first_token_seconds", "Streamed requests: time to the first token.")
        self.in_flight = Gauge("moa_requests_in_flight", "Chat completion requests admitted and not finished.")
        self.calls = Counter("moa_upstream_calls_total", "Model calls by backend and outcome (ok, error, cancelled).")
        self.retries = Counter("moa_upstream_retries_total", "Retried attempts of model calls, by backend.")
        self.tokens = Counter("moa_upstream_tokens_total", "Tokens of model calls by backend and kind.")
        self.call_latency = Histogram("moa_upstream_call_duration_seconds", "Model call latency, retries included.")
        self.limits_store = Gauge("moa_limits_store", "Backends with a limits store: 1 for the state they are in.")
        self._all = (
            self.requests, self.latency, self.ttft, self.in_flight, self.calls, self.retries, self.tokens,
            self.call_latency, self.limits_store,
        )  # fmt: skip
        self.in_flight.set(0)

    def record_request(self, ensemble: str, status: int, seconds: float | None) -> None:
        self.requests.inc(ensemble=ensemble, status=str(status))
        if seconds is not None:
            self.latency.observe(seconds, ensemble=ensemble)

    def record_calls(self, ensemble: str, records: Iterable[CallRecord]) -> None:
        for r in records:
            self.calls.inc(ensemble=ensemble, backend=r.backend, outcome=r.outcome)
            if r.retries:
                self.retries.inc(r.retries, ensemble=ensemble, backend=r.backend)
            if r.prompt_tokens:
                self.tokens.inc(r.prompt_tokens, ensemble=ensemble, backend=r.backend, kind="prompt")
            if r.completion_tokens:
                self.tokens.inc(r.completion_tokens, ensemble=ensemble, backend=r.backend, kind="completion")
            self.call_latency.observe(r.latency_s, ensemble=ensemble, backend=r.backend)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
            lines += metric.samples()
        return "\n".join(lines) + "\n"
