"""What a backend does about load, failure and slowness: its rate limits (``rate_limit:``), its retries
(``retry:``) and its hedged calls (``hedge:``, which an agent or the aggregator may set for its own calls)."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from moa.config.base import Strict
from moa.validation import PathError


class RateLimit(Strict):
    """Limits shared by every agent and request that uses one backend."""

    rps: Annotated[float, Field(gt=0)] | None = Field(default=None, description="requests per second")
    burst: Annotated[int, Field(ge=1)] = Field(
        default=1, description="requests that may go back to back before rps spacing"
    )
    concurrency: Annotated[int, Field(gt=0)] | None = Field(default=None, description="requests in flight")
    tpm: Annotated[int, Field(gt=0)] | None = Field(default=None, description="tokens per minute")
    store: str | None = Field(
        default=None, description="redis://host:port/db shared by every replica that names it (moa[redis])"
    )
    key_prefix: str | None = Field(default=None, description="the store's keys; default the backend's name and host")
    replicas: Annotated[int, Field(ge=1)] = Field(
        default=1, description="replicas sharing the store: the local limits while it is unreachable are divided by it"
    )
    lease_ttl_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="seconds a concurrency lease outlives a replica that stopped renewing it"
    )

    @field_validator("store")
    @classmethod
    def _check_store(cls, url: str | None) -> str | None:
        """The one check of a store URL (``moa validate`` and ``moa serve`` alike); it never quotes the URL,
        which may hold a password."""
        if url is None:
            return url
        if not re.match(r"^(rediss?|unix)://\S+$", url):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if url.startswith("unix://"):
            return url
        try:
            split = urlsplit(url)
            split.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
        except ValueError:
            raise ValueError(
                "not a valid Redis URL: the port must be a number from 0 to 65535 (redis://[:password@]host:port/db)"
            ) from None
        if not split.hostname:
            raise ValueError("not a valid Redis URL: it names no host (redis://[:password@]host:port/db)")
        if split.path not in ("", "/") and not re.fullmatch(r"/\d+", split.path):
            raise ValueError("not a valid Redis URL: the database must be a number (redis://[:password@]host:port/db)")
        return url


class RetryPolicy(Strict):
    """Retries for 408/409/429/5xx, timeouts and dropped connections (openai-python's schedule)."""

    max_retries: Annotated[int, Field(ge=0, le=20)] = 2
    initial_backoff_s: Annotated[float, Field(ge=0)] = 0.5
    max_backoff_s: Annotated[float, Field(ge=0)] = 8.0
    max_retry_after_s: Annotated[float, Field(ge=0)] = 60.0


class HedgePolicy(Strict):
    """Hedged calls: a call with no answer (a stream, or a call of one sample: no first token) after a delay gets a
    second, identical call; the first to answer wins and the other is cancelled. Only for idempotent calls (every
    chat call today). With both delays, ``after_s`` holds until ``min_samples`` latencies are seen."""

    after_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="a fixed delay; with after_quantile, the delay until min_samples are seen"
    )
    after_quantile: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None, description="the delay as this quantile of the latencies seen for the model"
    )
    min_samples: Annotated[int, Field(ge=1)] = Field(
        default=20, description="after_quantile: latencies needed before it hedges"
    )
    max_extra: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.1, description="the share of calls that may be hedged"
    )

    @model_validator(mode="after")
    def _one_delay(self) -> HedgePolicy:
        if self.after_s is None and self.after_quantile is None:
            raise PathError("after_s", "give after_s, after_quantile or both")
        return self
