"""The final aggregator (``aggregator:``): which backend and model answer, and how it reads the last layer's
proposals. One class a ``type``, as for backends and defenses; ``type`` may be left out (``synthesize``)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from moa.config.layers import SamplingConfig
from moa.config.policies import HedgePolicy
from moa.defense_config import type_names
from moa.validation import PathError

#: the type of an aggregator that names none
DEFAULT_TYPE = "synthesize"


@dataclass(frozen=True, slots=True)
class AggregatorCall:
    """One call an aggregator makes: the proposals it reads (their indices) and whether it also reads the answer
    of its call before."""

    proposals: tuple[int, ...]
    reads_previous: bool = False


class AggregatorBase(SamplingConfig):
    """What every aggregator type shares: the backend and model it calls, its instructions, its sampling; and
    what it makes of the proposals (``calls``), which each type defines."""

    backend: str
    model: str | None = None
    system_prompt: str | None = Field(default=None, description="replaces moa's synthesis instructions")
    hedge: HedgePolicy | None = Field(default=None, description="hedged calls (default: its backend's)")

    @model_validator(mode="before")
    @classmethod
    def _trusted(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("deceptive"):
            raise PathError("deceptive", "the final aggregator is always trusted; make proposer agents deceptive")
        return data

    @abstractmethod
    def calls(self, proposals: int) -> list[AggregatorCall]:
        """The calls it makes for ``proposals`` proposals, in order (the last one writes the answer)."""


class SynthesizeConfig(AggregatorBase):
    """MoA synthesis: one call reads every proposal and writes the answer."""

    type: Literal["synthesize"] = "synthesize"

    def calls(self, proposals: int) -> list[AggregatorCall]:
        return [AggregatorCall(tuple(range(proposals)))]


class SelfMoASeqConfig(AggregatorBase):
    """Self-MoA-Seq: a sliding window over the proposals, each step reading the running synthesis and the next
    ones, so the prompt stays bounded."""

    type: Literal["self-moa-seq"] = "self-moa-seq"
    window: Annotated[int, Field(ge=2)] = Field(
        default=3, description="samples seen per step, the running synthesis included"
    )

    def calls(self, proposals: int) -> list[AggregatorCall]:
        steps = plan_windows(proposals, self.window)
        return [AggregatorCall(tuple(step), reads_previous=i > 0) for i, step in enumerate(steps)]


def plan_windows(n_samples: int, window: int) -> list[list[int]]:
    """Indices of the samples each Self-MoA-Seq step reads, in order: the first ``window``, then ``window - 1``
    a step beside the running synthesis; ``ceil((N - 1) / (window - 1))`` steps for N > window, else one."""
    if window < 2:
        raise ValueError("window must be >= 2")
    first = list(range(min(n_samples, window)))
    steps = [first]
    for start in range(len(first), n_samples, window - 1):
        steps.append(list(range(start, min(start + window - 1, n_samples))))
    return steps


def _known_type(data: Any) -> Any:
    """An aggregator without ``type`` synthesizes; an unknown ``type`` is named as the field it is."""
    if not isinstance(data, dict):
        return data
    kind = data.get("type", DEFAULT_TYPE)
    if kind not in AGGREGATOR_TYPES:
        quoted = [repr(name) for name in AGGREGATOR_TYPES]
        raise PathError("type", f"must be one of {', '.join(quoted[:-1])} or {quoted[-1]}")
    return {**data, "type": kind}


AggregatorConfig = Annotated[
    SynthesizeConfig | SelfMoASeqConfig, Field(discriminator="type"), BeforeValidator(_known_type)
]
AGGREGATOR_TYPES = type_names(AggregatorConfig)
