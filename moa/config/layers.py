"""The proposer layers (``layers:``): each layer's agents, the sampling fields an agent (and the aggregator)
sets, how long a layer waits for its stragglers, and where later layers read their references."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from moa.config.base import Strict
from moa.config.policies import HedgePolicy
from moa.defense_config import DeceptionConfig
from moa.sampling import SamplingFields
from moa.validation import PathError


class WaitPolicy(Strict):
    """Quorum: a layer goes on once ``min`` proposals are in and every call has answered or the grace has passed;
    calls still running are cancelled. No grace given: it goes on at the ``min``-th proposal."""

    min: Annotated[int, Field(ge=1)] = Field(description="proposals that let the layer go on")
    grace_s: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="seconds to wait for the rest after the min-th proposal"
    )
    grace_ratio: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="wait for the rest up to this times the time the min-th proposal took"
    )

    @model_validator(mode="after")
    def _one_grace(self) -> WaitPolicy:
        if self.grace_s is not None and self.grace_ratio is not None:
            raise PathError("grace_ratio", "give at most one of grace_s and grace_ratio")
        return self


class SamplingConfig(SamplingFields, Strict):
    """The sampling fields an agent and the aggregator set, declared once in ``moa.types.SamplingFields``."""


class AgentConfig(SamplingConfig):
    backend: str
    model: str | None = Field(default=None, description="defaults to the backend's model")
    name: str | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    system_prompt: str | None = None
    deceptive: DeceptionConfig | None = Field(
        default=None, description="red-teaming: true, or {target: B} to argue for an option of a multiple-choice"
    )
    hedge: HedgePolicy | None = Field(default=None, description="hedged calls for this agent (default: its backend's)")

    @field_validator("deceptive", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        return ({} if value else None) if isinstance(value, bool) else value


class LayerConfig(Strict):
    agents: Annotated[list[AgentConfig], Field(min_length=1)]
    min_proposals: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="fewer survivors fail the request (default: the ensemble's)"
    )
    wait: WaitPolicy | None = Field(default=None, description="quorum (default: the ensemble's; none: wait for all)")


#: where prompts put the instructions and fenced references: a system turn after the conversation (which then
#: stays a prefix every layer's and the aggregator's prompt shares), or the system message in front of it
ReferencesAt = Literal["end", "system"]


class ReferencesConfig(Strict):
    at: ReferencesAt = Field(
        default="end", description="end: after the conversation (cache-friendly); system: in the system message"
    )


class StructuredConfig(Strict):
    """Who answers in the request's ``response_format`` (``structured:``): always the aggregator."""

    proposers: bool = Field(
        default=False,
        description="proposers answer in it too (default: they answer freely, as reasoning helps the aggregator)",
    )
