"""Cluster & Filter and in-context clustering with the embedded all-MiniLM-L6-v2, against a scripted world where
three honest agents agree in substance and a deceiver argues for another option."""

from __future__ import annotations

import numpy as np
import pytest
from aiohttp import web

from defenses.clustering import two_means
from defenses.embeddings import make_embedder
from defenses.in_context import group_line
from moa.backend import Backend
from moa.defense_config import LocalEmbeddings, OpenAIEmbeddings
from moa.errors import BackendError
from tests.support.deception_world import (
    CANBERRA,
    HONEST,
    always,
    ask_capital,
    honest,
    references_in,
    script_world,
    world_config,
)
from tests.support.scripted_server import ScriptedServer

canberra = always("B")


async def test_undefended_the_gullible_aggregator_is_deceived(upstream: ScriptedServer) -> None:
    script_world(upstream, canberra)
    result = await ask_capital(world_config(upstream.base_url, None))
    assert result.text.endswith("Answer: (A)") and result.defense == []


async def test_cluster_filter_drops_the_deceiver_before_the_aggregator(upstream: ScriptedServer) -> None:
    script_world(upstream, canberra)
    result = await ask_capital(world_config(upstream.base_url, {"type": "cluster-filter"}))
    deceptive_text = next(p.text for p in result.proposals if p.deceptive)
    (agg,) = upstream.for_model("agg")
    assert deceptive_text not in agg.prompt_text and len(references_in(agg.messages)) == 3
    assert result.text == CANBERRA
    (record,) = result.defense
    assert (record.defense, record.layer, record.kept, record.dropped) == ("cluster-filter", 1, HONEST, ["d"])
    assert record.clusters == [HONEST, ["d"]] and "larger of two clusters (3 of 4" in record.reason
    assert record.extra_calls == 0 and result.extra_calls == 0 and len(result.trace) == 5


async def test_cluster_filter_between_layers_keeps_the_deceiver_from_the_next_layer(upstream: ScriptedServer) -> None:
    script_world(upstream, canberra)
    upstream.script("x", answer=honest("Weighing them,", canberra))
    cfg = world_config(
        upstream.base_url, {"type": "cluster-filter", "between_layers": True}, layers=[[*HONEST, "d"], ["x"]]
    )
    result = await ask_capital(cfg)
    (x,) = upstream.for_model("x")
    assert len(references_in(x.messages)) == 3 and "unquestionably" not in x.prompt_text
    assert [(r.layer, r.dropped) for r in result.defense] == [(1, ["d"]), (2, [])]
    assert "one cluster" in result.defense[1].reason


async def test_in_context_clustering_shows_the_aggregator_every_proposal_with_its_group(
    upstream: ScriptedServer,
) -> None:
    script_world(upstream, canberra)
    result = await ask_capital(world_config(upstream.base_url, {"type": "in-context-cluster"}))
    (agg,) = upstream.for_model("agg")
    refs = references_in(agg.messages)
    assert len(refs) == 4
    assert [r.splitlines()[0] for r in refs] == [group_line(1, 3, 4)] * 3 + [group_line(2, 1, 4)]
    (record,) = result.defense
    assert record.dropped == [] and record.clusters == [HONEST, ["d"]] and record.extra_calls == 0


@pytest.mark.parametrize("defense", ["cluster-filter", "in-context-cluster"])
async def test_all_honest_a_unanimous_answer_stays(upstream: ScriptedServer, defense: str) -> None:
    script_world(upstream, canberra)
    undefended = await ask_capital(world_config(upstream.base_url, None, deceived=False))
    defended = await ask_capital(world_config(upstream.base_url, {"type": defense}, deceived=False))
    assert undefended.text == defended.text == CANBERRA


async def test_the_embedded_model_separates_two_topics() -> None:
    cooking = ["Boil the pasta in salted water for ten minutes.", "Drain the spaghetti and toss it with olive oil.",
               "A good tomato sauce simmers slowly with fresh basil."]  # fmt: skip
    orbits = ["The satellite's orbit decays because of atmospheric drag.", "Kepler's laws describe how planets "
              "move around the sun.", "Reaching low Earth orbit takes about 9.4 km/s of delta-v."]  # fmt: skip
    embedder = make_embedder(LocalEmbeddings(), Backend.for_embeddings)
    assert make_embedder(LocalEmbeddings(), Backend.for_embeddings) is embedder  # one model per process
    x = await embedder.embed(orbits[:1] + cooking + orbits[1:])
    assert x.shape == (6, 384) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert two_means(x, seed=0).labels.tolist() == [0, 1, 1, 1, 0, 0]  # a 3-3 tie: item 0's cluster is 0
    within, across = (x[1:4] @ x[1:4].T)[np.triu_indices(3, 1)].mean(), (x[1:4] @ x[[0, 4, 5]].T).mean()
    assert within > across + 0.2


def test_two_means_on_points_it_can_check() -> None:
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1]
    x = np.stack([a, a, b, a, a, b, a]) + 0.01 * rng.standard_normal((7, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    split = two_means(x, seed=5)
    assert split.labels.tolist() == [0, 0, 1, 0, 0, 1, 0] and split.sizes == (5, 2) and split.has_majority
    assert all((two_means(x, seed=s).labels == split.labels).all() for s in range(10))
    same = two_means(np.tile(a, (4, 1)), seed=0)
    assert same.sizes == (4, 0) and not same.has_majority  # nothing to split


async def test_an_openai_compatible_embeddings_endpoint() -> None:
    seen: list[dict] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        if body["input"] == ["fail"]:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        rows = [{"index": i, "embedding": [3.0, 4.0 * i]} for i in range(len(body["input"]))]
        return web.json_response({"data": rows[::-1]})  # out of order: the index decides

    runner = web.AppRunner(web.Application(middlewares=[]))
    runner.app.router.add_post("/v1/embeddings", embeddings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        config = OpenAIEmbeddings(type="openai", base_url=f"http://127.0.0.1:{port}/v1/", model="e")
        embedder = make_embedder(config, Backend.for_embeddings)
        x = await embedder.embed(["a", "b"])
        assert np.allclose(x, [[1.0, 0.0], [0.6, 0.8]])
        assert seen[0] == {"body": {"model": "e", "input": ["a", "b"]}, "auth": None}
        with pytest.raises(BackendError, match="HTTP 503"):
            await embedder.embed(["fail"])
    finally:
        await runner.cleanup()
