"""Red-team and defense config: errors name the field; the final aggregator cannot be made deceptive."""

from __future__ import annotations

import copy

import pytest

from moa.config import parse_config
from moa.defense_config import DeceptionConfig, DropoutVoteConfig
from moa.errors import ConfigError

BASE = {
    "name": "t",
    "backends": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
    "layers": [{"agents": [{"backend": "up"}, {"backend": "up"}, {"backend": "up"}]}, {"agents": [{"backend": "up"}]}],
    "aggregator": {"backend": "up"},
}


def _with(**top) -> dict:
    return {**copy.deepcopy(BASE), **top}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_with(aggregator={"backend": "up", "deceptive": True}), "aggregator.deceptive: the final aggregator is always trusted"),
        (_with(red_team={"placement": [[3, 1]]}), "red_team.placement[0]: layer 3 is the final aggregator, which is always trusted"),
        (_with(red_team={"placement": [[1, 1], [5, 1]]}), "red_team.placement[1]: no layer 5"),
        (_with(red_team={"placement": [[2, 2]]}), "red_team.placement[0]: no agent 2 in layer 2"),
        (_with(red_team={"placement": [[1, 2], [1, 2]]}), "red_team.placement[1]: [1, 2] is placed twice"),
        (_with(red_team={"placement": [[0, 1]]}), "red_team.placement[0][0]: must be >= 1"),
        (_with(red_team={"placement": {"random": 5}}), "red_team.placement.random: must be <= 4"),
        (_with(red_team={"placement": {"random": 1, "sead": 2}}), "red_team.placement.sead: unknown field"),
        (_with(defense={"type": "vote"}), "defense: unknown type 'vote'"),
        (_with(defense={"type": "dropout-vote", "max_subset": 4}), "defense.max_subset: unknown field"),
        (_with(defense={"type": "dropout-vote", "vote": "loudest"}), "defense.vote: must be one of"),
        (_with(defense={"type": "dropout-cluster", "max_subsets": 0}), "defense.max_subsets: must be >= 1"),
        (_with(defense={"type": "cluster-filter", "embeddings": {"type": "openai", "model": "e"}}),
         "defense.embeddings.base_url: field required"),
    ],
)  # fmt: skip
def test_errors_name_the_field(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert expected in str(info.value)
    assert info.value.path is not None and str(info.value).startswith(info.value.path)


def test_agent_flags_and_targets() -> None:
    data = copy.deepcopy(BASE)
    data["layers"][0]["agents"][1]["deceptive"] = True
    data["layers"][1]["agents"][0]["deceptive"] = {"target": "C"}
    assert parse_config(data).deceptive_agents() == {(1, 2): DeceptionConfig(), (2, 1): DeceptionConfig(target="C")}
    data["layers"][0]["agents"][0]["deceptive"] = {"targt": "C"}
    with pytest.raises(ConfigError, match=r"layers\[0\].agents\[0\].deceptive.targt: unknown field"):
        parse_config(data)
    data["layers"][0]["agents"][0]["deceptive"] = False
    assert (1, 1) not in parse_config(data).deceptive_agents()


def test_placement_by_position_and_at_random() -> None:
    placed = parse_config(_with(red_team={"placement": [[1, 3], [2, 1]], "target": "B"})).deceptive_agents()
    assert placed == {(1, 3): DeceptionConfig(target="B"), (2, 1): DeceptionConfig(target="B")}
    draws = {
        seed: sorted(parse_config(_with(red_team={"placement": {"random": 2, "seed": seed}})).deceptive_agents())
        for seed in range(12)
    }
    assert all(len(d) == 2 and all(p in [(1, 1), (1, 2), (1, 3), (2, 1)] for p in d) for d in draws.values())
    assert draws[3] == sorted(parse_config(_with(red_team={"placement": {"random": 2, "seed": 3}})).deceptive_agents())
    assert len({tuple(d) for d in draws.values()}) > 1  # the seed matters


def test_defense_defaults() -> None:
    config = parse_config(_with(defense={"type": "dropout-vote"})).defense
    assert isinstance(config, DropoutVoteConfig)
    assert (config.max_subsets, config.max_size, config.vote, config.between_layers) == (16, None, "auto", False)
    assert config.embeddings.type == "local"
