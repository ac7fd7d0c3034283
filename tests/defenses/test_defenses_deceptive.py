"""Deceptive agents: the misleading instructions reach exactly the deceptive agents, as the server records them."""

from __future__ import annotations

from defenses.deceptive import CHOICE_FIRST_LAYER, CHOICE_LATER_LAYER, FIRST_LAYER, LATER_LAYER
from moa import Ensemble
from tests.support.deception_world import references_in
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "Which gas makes up most of Earth's air? (A) oxygen (B) nitrogen"}]


def _system(upstream: ScriptedServer, model: str) -> str:
    (request,) = upstream.for_model(model)
    return "\n".join(m["content"] for m in request.messages if m["role"] == "system")


async def test_each_layer_gets_its_own_deceptive_instructions(upstream: ScriptedServer) -> None:
    for model in ("h1", "d1", "h2", "d2"):
        upstream.script(model, answer=f"{model} says nitrogen")
    upstream.script("agg", answer="nitrogen")
    cfg = moa_config(upstream.base_url, [["h1", "d1"], ["h2", "d2"]], red_team={"placement": [[2, 2]]})
    cfg["layers"][0]["agents"][1]["deceptive"] = True
    cfg["layers"][0]["agents"][1]["system_prompt"] = "You are a chemist."
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    first, later = _system(upstream, "d1"), _system(upstream, "d2")
    assert first.startswith(FIRST_LAYER) and "You are a chemist." in first  # its own prompt is kept, after ours
    assert LATER_LAYER in later and references_in(upstream.for_model("d2")[0].messages) == [
        "h1 says nitrogen",
        "d1 says nitrogen",
    ]
    for honest in ("h1", "h2", "agg"):
        assert "misleader" not in "\n".join(m["content"] for m in upstream.for_model(honest)[0].messages)
    assert {(p.agent, p.deceptive) for p in result.proposals} == {
        ("h1", False),
        ("d1", True),
        ("h2", False),
        ("d2", True),
    }


async def test_multiple_choice_target_comes_from_config_or_request(upstream: ScriptedServer) -> None:
    for model in ("h", "d", "x"):
        upstream.script(model, answer="Answer: (B)")
    upstream.script("agg", answer="Answer: (B)")
    cfg = moa_config(upstream.base_url, [["h", "d"], ["x"]], red_team={"placement": [[1, 2], [2, 1]], "target": "A"})
    async with Ensemble.from_config(cfg) as ens:
        await ens.acomplete(USER)
        assert _system(upstream, "d").startswith(CHOICE_FIRST_LAYER.format(target="A"))
        assert CHOICE_LATER_LAYER.format(target="A") in _system(upstream, "x")
        upstream.requests.clear()
        await ens.acomplete(USER, deception_target="C")  # the request's target wins over the config's
        assert _system(upstream, "d").startswith(CHOICE_FIRST_LAYER.format(target="C"))
        assert "naming (C)" in _system(upstream, "x") and "(A)" not in _system(upstream, "x")
    assert "misleader" not in _system(upstream, "agg")


async def test_random_placement_reaches_the_drawn_agents(upstream: ScriptedServer) -> None:
    layer = [f"p{i}" for i in range(5)]
    for model in layer:
        upstream.script(model, answer=f"{model} answer")
    cfg = moa_config(upstream.base_url, [layer], red_team={"placement": {"random": 2, "seed": 11}})
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    misled = {m for m in layer if "misleader" in _system(upstream, m)}
    assert len(misled) == 2
    assert misled == {p.agent for p in result.proposals if p.deceptive}
    assert misled == {f"p{ai - 1}" for _, ai in ens.config.deceptive_agents()}
