"""The whole config (``EnsembleConfig``): its parts, and the checks that need more than one of them (names that
exist, counts a layer can reach, a budget every call can be held to, placements of deceptive agents)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, model_validator

from moa.config.aggregator import AggregatorBase, AggregatorConfig
from moa.config.backends import BackendConfig
from moa.config.base import Strict
from moa.config.layers import AgentConfig, LayerConfig, ReferencesConfig, StructuredConfig, WaitPolicy
from moa.defense_config import DeceptionConfig, DefenseConfig, OpenAIEmbeddings, RandomPlacement, RedTeamConfig
from moa.sampling import set_fields
from moa.validation import PathError, PathErrors


class EnsembleConfig(Strict):
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    backends: Annotated[dict[str, BackendConfig], Field(min_length=1)]
    layers: Annotated[list[LayerConfig], Field(min_length=1)]
    aggregator: AggregatorConfig
    red_team: RedTeamConfig | None = Field(default=None, description="deceptive agents placed by position or at random")
    defense: DefenseConfig | None = None
    min_proposals: Annotated[int, Field(ge=1)] = 1
    deadline_s: Annotated[float, Field(gt=0)] | None = Field(default=None, description="per-request deadline")
    max_cost_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="per-request budget in USD; a request may lower it, never raise it"
    )
    wait: WaitPolicy | None = Field(default=None, description="every layer's quorum unless it sets its own")
    references: ReferencesConfig = Field(
        default_factory=ReferencesConfig, description="where layers 2.. and the aggregator get their references"
    )
    structured: StructuredConfig = Field(
        default_factory=StructuredConfig, description="who answers in a request's response_format"
    )

    @model_validator(mode="after")
    def _check_references(self) -> EnsembleConfig:
        known = sorted(self.backends)
        found: list[PathError] = []  # every check runs, so one validation names every problem

        def check(run: Callable[..., None], *args: Any) -> None:
            try:
                run(*args)
            except PathError as e:
                found.append(e)

        for li, layer in enumerate(self.layers):
            for ai, agent in enumerate(layer.agents):
                check(self._check_backend, agent.backend, agent.model, f"layers[{li}].agents[{ai}]", known)
        check(self._check_backend, self.aggregator.backend, self.aggregator.model, "aggregator", known)
        unknown_backends = bool(found)
        check(self._check_min_proposals)
        check(self._check_wait)
        if unknown_backends:  # the checks below read the agents' backends
            raise PathErrors(found)
        check(self._check_names)
        check(self._check_budget)
        check(self._check_fields)
        if self.red_team is not None:
            check(self._check_placement, self.red_team.placement)
        if found:
            raise PathErrors(found)
        return self

    def agent_name(self, li: int, ai: int) -> str:
        """Agent ``ai`` of layer ``li`` (both 0-based): its ``name``, else ``L{layer}.{agent}:{model}`` (1-based,
        the model's last path part)."""
        agent = self.layers[li].agents[ai]
        if agent.name is not None:
            return agent.name
        model = self.model_for(agent.backend, agent.model)
        return f"L{li + 1}.{ai + 1}:{model.rsplit('/', 1)[-1]}"

    def model_for(self, backend: str, model: str | None) -> str:
        """The model a call names: its own ``model``, else ``backend``'s default (validation guarantees one)."""
        return model or self.backends[backend].model or ""

    def _check_min_proposals(self) -> None:
        """A layer must be able to produce ``min_proposals`` proposals (its agents' n summed), else every request
        fails."""
        for li, layer in enumerate(self.layers):
            most = sum(agent.n for agent in layer.agents)
            where = f"layers[{li}].min_proposals" if layer.min_proposals is not None else "min_proposals"
            required = layer.min_proposals or self.min_proposals
            if required > most:
                raise PathError(
                    where, f"must be <= {most}, the proposals layers[{li}] can produce (the sum of its agents' n)"
                )

    def _check_fields(self) -> None:
        """Every sampling field an agent or the aggregator sets is one its backend honours."""
        calls: list[tuple[str, AgentConfig | AggregatorBase]] = []
        for li, layer in enumerate(self.layers):
            calls += [(f"layers[{li}].agents[{ai}]", agent) for ai, agent in enumerate(layer.agents)]
        for at, call in [*calls, ("aggregator", self.aggregator)]:
            for field in set_fields(call):
                reason = self.backends[call.backend].field_support().refusal(field, call.backend)
                if reason is not None:
                    raise PathError(f"{at}.{field}", reason)

    def _check_budget(self) -> None:
        if self.max_cost_usd is not None and (gap := self.budget_gap()) is not None:
            raise PathError(gap, "required when max_cost_usd is set")

    def budget_gap(self) -> str | None:
        """The first field a budget needs that is not set, or None: every call's worst case must be known, so
        every backend (and a defense's embeddings endpoint) needs ``prices`` and every call ``max_tokens``."""
        for name, backend in self.backends.items():
            if backend.prices is None:
                return f"backends.{name}.prices"
        embeddings = None if self.defense is None else self.defense.embeddings
        if isinstance(embeddings, OpenAIEmbeddings) and embeddings.prices is None:
            return "defense.embeddings.prices"
        for li, layer in enumerate(self.layers):
            for ai, agent in enumerate(layer.agents):
                if agent.max_tokens is None:
                    return f"layers[{li}].agents[{ai}].max_tokens"
        return "aggregator.max_tokens" if self.aggregator.max_tokens is None else None

    def wait_for(self, li: int) -> WaitPolicy | None:
        """The quorum of layer ``li`` (0-based): its own ``wait``, else the ensemble's; ``None``: wait for all."""
        return self.layers[li].wait or self.wait

    def _check_wait(self) -> None:
        """A quorum's ``min`` lies between the layer's ``min_proposals`` and the proposals it can produce."""
        for li, layer in enumerate(self.layers):
            wait = self.wait_for(li)
            if wait is None:
                continue
            where = f"layers[{li}].wait.min" if layer.wait is not None else "wait.min"
            most = sum(agent.n for agent in layer.agents)
            required = layer.min_proposals or self.min_proposals
            if wait.min > most:
                raise PathError(where, f"must be <= {most}, the proposals layers[{li}] can produce")
            if wait.min < required:
                raise PathError(where, f"must be >= {required}, the min_proposals of layers[{li}]")

    def _check_names(self) -> None:
        """Agent names (explicit or derived) and the names of their samples (``name#k`` when n > 1) are unique in
        the ensemble: traces, failures and defense records tell agents apart by them."""
        owners: dict[str, tuple[int, int]] = {}
        for li, layer in enumerate(self.layers):
            for ai, agent in enumerate(layer.agents):
                name = self.agent_name(li, ai)
                names = [name] if agent.n == 1 else [name, *(f"{name}#{k}" for k in range(1, agent.n + 1))]
                for taken in names:
                    if taken in owners:
                        here, there = (li, ai), owners[taken]
                        if agent.name is None:  # blame the explicit name: derived names never collide
                            here, there = there, here
                        samples = (
                            not taken == name == self.agent_name(*owners[taken])
                        )  # a sample's name, not two agents'
                        raise PathError(
                            f"layers[{here[0]}].agents[{here[1]}].name",
                            f"{taken!r} names both this agent and layers[{there[0]}].agents[{there[1]}]"
                            + (" (an agent with n > 1 names its samples NAME#1, NAME#2, ...)" if samples else "")
                            + "; agent names must be unique in the ensemble",
                        )
                    owners[taken] = (li, ai)

    def _check_placement(self, placement: list[tuple[int, int]] | RandomPlacement) -> None:
        if isinstance(placement, RandomPlacement):
            total = sum(len(layer.agents) for layer in self.layers)
            if placement.random > total:
                raise PathError("red_team.placement.random", f"must be <= {total}, the number of proposer agents")
            return
        for i, (layer, agent) in enumerate(placement):
            where = f"red_team.placement[{i}]"
            if layer == len(self.layers) + 1:
                raise PathError(where, f"layer {layer} is the final aggregator, which is always trusted")
            if layer > len(self.layers):
                raise PathError(where, f"no layer {layer}: the ensemble has {len(self.layers)} proposer layer(s)")
            agents = len(self.layers[layer - 1].agents)
            if agent > agents:
                raise PathError(where, f"no agent {agent} in layer {layer}: it has {agents}")
            if (layer, agent) in placement[:i]:
                raise PathError(where, f"[{layer}, {agent}] is placed twice")

    def deceptive_agents(self) -> dict[tuple[int, int], DeceptionConfig]:
        """Every deceptive proposer by (layer, agent), 1-based: agents marked ``deceptive`` and ``red_team``'s."""
        marked = {
            (li, ai): agent.deceptive
            for li, layer in enumerate(self.layers, 1)
            for ai, agent in enumerate(layer.agents, 1)
            if agent.deceptive is not None
        }
        if self.red_team is None:
            return marked
        placement = self.red_team.placement
        if isinstance(placement, RandomPlacement):
            slots = [(li, ai) for li, layer in enumerate(self.layers, 1) for ai in range(1, len(layer.agents) + 1)]
            placement = random.Random(placement.seed).sample(slots, placement.random)
        placed = {(li, ai): DeceptionConfig(target=self.red_team.target) for li, ai in placement}
        return {**placed, **marked}

    def _check_backend(self, name: str, model: str | None, where: str, known: list[str]) -> None:
        if name not in self.backends:
            raise PathError(f"{where}.backend", f"unknown backend {name!r} (known: {', '.join(known)})")
        if model is None and self.backends[name].model is None:
            raise PathError(f"{where}.model", f"required: backend {name!r} names no default model")


def describe_config(config: EnsembleConfig) -> str:
    """One line on what ``config`` runs, as ``moa validate`` and ``moa serve`` print it:
    ``name: <L> layer(s), <N> proposal(s), aggregator <type>`` (L counts the proposer layers, not the aggregator;
    N counts every agent's ``n``). ``moa configs`` prints the same shape, so the two never disagree."""
    calls = sum(agent.n for layer in config.layers for agent in layer.agents)
    return f"{config.name}: {len(config.layers)} layer(s), {calls} proposal(s), aggregator {config.aggregator.type}"
