"""The final aggregator (``aggregator:``): which backend and model answer, and how it reads the last layer's
proposals."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from moa.config.layers import SamplingConfig
from moa.config.policies import HedgePolicy
from moa.validation import PathError

#: the aggregator types, each implemented by a class the registry names
AggregatorType = Literal["synthesize", "self-moa-seq"]


class AggregatorConfig(SamplingConfig):
    type: AggregatorType = "synthesize"
    backend: str
    model: str | None = None
    system_prompt: str | None = Field(default=None, description="replaces moa's synthesis instructions")
    window: Annotated[int, Field(ge=2)] = Field(
        default=3, description="self-moa-seq: samples seen per step, the running synthesis included"
    )
    hedge: HedgePolicy | None = Field(default=None, description="hedged calls (default: its backend's)")

    @model_validator(mode="before")
    @classmethod
    def _trusted(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("deceptive"):
            raise PathError("deceptive", "the final aggregator is always trusted; make proposer agents deceptive")
        return data
