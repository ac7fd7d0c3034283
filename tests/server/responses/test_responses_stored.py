"""Stored responses through a real ``moa serve``: retrieve, delete, input items, ``previous_response_id``, ``store:
false``, keys as tenants, the TTL, two replicas over Redis, and a server killed (SIGKILL) while it writes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.redis_server import RedisServer
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve


def configs(url: str) -> list[dict[str, object] | str]:
    return [ensemble(url, "fast", [["p1"]], "agg")]


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stored") / "responses.sqlite3"


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, db_path: Path) -> Iterator[ServeProcess]:
    with moa_serve(db_path.parent, configs(upstream_sync_url), "--response-store", f"sqlite:///{db_path}") as s:
        yield s


@pytest.fixture
def client(serve: ServeProcess) -> Iterator[openai.OpenAI]:
    with serve.client(timeout=30) as c:
        yield c


def rows(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        (count,) = db.execute("SELECT count(*) FROM responses").fetchone()
    return int(count)


def test_a_response_is_retrieved_listed_and_deleted(client: openai.OpenAI) -> None:
    created = client.responses.create(model="fast", input="hi", metadata={"k": "v"})
    got = client.responses.retrieve(created.id)
    assert got.model_dump() == created.model_dump()
    (item,) = client.responses.input_items.list(created.id).data
    assert item.type == "message" and item.role == "user"  # type: ignore[union-attr]
    assert [(p.type, p.text) for p in item.content] == [("input_text", "hi")]  # type: ignore[union-attr]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(created.id)


def test_input_items_are_paged_by_order_after_and_limit(client: openai.OpenAI) -> None:
    items = [{"role": "user", "content": f"m{i}"} for i in range(4)]
    created = client.responses.create(model="fast", input=items)  # type: ignore[arg-type]
    texts = lambda page: [i.content[0].text for i in page.data]  # noqa: E731
    newest = client.responses.input_items.list(created.id)
    assert texts(newest) == ["m3", "m2", "m1", "m0"] and newest.has_more is False
    first = client.responses.input_items.list(created.id, order="asc", limit=3)
    assert texts(first) == ["m0", "m1", "m2"] and first.has_more is True
    rest = client.responses.input_items.list(created.id, order="asc", limit=3, after=first.last_id)
    assert texts(rest) == ["m3"] and rest.has_more is False
    every = list(client.responses.input_items.list(created.id, order="asc", limit=1))  # the client pages itself
    assert [i.content[0].text for i in every] == ["m0", "m1", "m2", "m3"]  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.input_items.list(created.id, limit=101)
    assert e.value.body["param"] == "limit"  # type: ignore[index]


def test_previous_response_id_continues_with_its_items_then_the_new_input(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("agg", answer=lambda m, msgs, i: f"reply {sum(x['role'] == 'user' for x in msgs)}")
    first = client.responses.create(model="fast", input="one", instructions="Only now.")
    second = client.responses.create(model="fast", input="two", previous_response_id=first.id)
    third = client.responses.create(
        model="fast", input=[{"role": "user", "content": "three"}], previous_response_id=second.id
    )
    assert third.previous_response_id == second.id
    p1 = upstream_thread.for_model("p1")[-1]
    assert p1.messages == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "three"},
    ]  # instructions are not carried over, as OpenAI does
    assert [i.content[0].text for i in client.responses.input_items.list(third.id).data] == ["three"]  # type: ignore[union-attr]


def test_store_false_leaves_nothing_behind(client: openai.OpenAI, db_path: Path) -> None:
    before = rows(db_path)
    response = client.responses.create(model="fast", input="secret", store=False)
    assert response.store is False and rows(db_path) == before
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with client.responses.stream(model="fast", input="secret", store=False) as stream:
        streamed = stream.get_final_response()
    assert rows(db_path) == before
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fast", input="x", previous_response_id=streamed.id)
    with sqlite3.connect(db_path) as db:
        assert not [r for (r,) in db.execute("SELECT input_items FROM responses") if "secret" in r]


def test_a_streamed_response_is_stored_before_its_last_event(client: openai.OpenAI) -> None:
    with client.responses.stream(model="fast", input="streamed") as stream:
        for event in stream:
            if event.type == "response.completed":
                assert client.responses.retrieve(event.response.id).output_text == event.response.output_text


def test_a_failed_request_stores_nothing(client: openai.OpenAI, upstream_thread: ScriptedServer, db_path: Path) -> None:
    before = rows(db_path)
    upstream_thread.script("agg", faults=["400"])
    with pytest.raises(openai.APIStatusError):
        client.responses.create(model="fast", input="doomed")
    assert rows(db_path) == before


def test_an_input_over_the_body_limit_is_refused_before_it_is_stored(serve: ServeProcess, db_path: Path) -> None:
    before = rows(db_path)
    body = json.dumps({"model": "fast", "input": "x" * (5 * 1024 * 1024)}).encode()  # the limit is 4 MiB
    status, _, raw = serve.request("POST", "/v1/responses", body, {"Content-Type": "application/json"})
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    assert rows(db_path) == before


def test_unknown_query_parameters_are_refused_by_name(serve: ServeProcess, client: openai.OpenAI) -> None:
    created = client.responses.create(model="fast", input="hi")
    status, _, body = serve.request("GET", f"/v1/responses/{created.id}/input_items?ordr=asc")
    assert status == 400 and json.loads(body)["error"]["param"] == "ordr"


# ---- keys are tenants ----------------------------------------------------------------------------------------


def test_another_key_gets_404_for_the_same_id_and_without_keys_all_is_one_tenant(
    upstream_sync_url: str, tmp_path: Path
) -> None:
    store = ("--response-store", f"sqlite:///{tmp_path / 'r.sqlite3'}")
    env = {"MOA_TEST_KEYS": "key-alice-0001,key-bob-000002"}
    with moa_serve(tmp_path, configs(upstream_sync_url), "--api-key-env", "MOA_TEST_KEYS", *store, env=env) as s:
        alice, bob = s.client("key-alice-0001"), s.client("key-bob-000002")
        mine = alice.responses.create(model="fast", input="private")
        assert alice.responses.retrieve(mine.id).id == mine.id
        for call in (
            lambda: bob.responses.retrieve(mine.id),
            lambda: bob.responses.input_items.list(mine.id),
            lambda: bob.responses.delete(mine.id),
            lambda: bob.responses.create(model="fast", input="x", previous_response_id=mine.id),
        ):
            with pytest.raises(openai.APIStatusError) as e:
                call()
            assert e.value.status_code == 404
            assert e.value.message.replace(mine.id, "ID") == _missing_message(bob)
        assert alice.responses.retrieve(mine.id).id == mine.id  # bob's delete did nothing
        with sqlite3.connect(tmp_path / "r.sqlite3") as db:
            (tenant,) = db.execute("SELECT tenant FROM responses").fetchone()
        assert tenant and "key-alice" not in tenant  # a digest, never the key
    with moa_serve(tmp_path, configs(upstream_sync_url), *store) as s:  # keyless: one tenant, whatever is sent
        a, b = s.client("anything"), s.client("something else")
        shared = a.responses.create(model="fast", input="hi")
        assert b.responses.retrieve(shared.id).id == shared.id


def _missing_message(client: openai.OpenAI) -> str:
    """What the server says for an id that never existed (no existence oracle: the same words for another's)."""
    try:
        client.responses.retrieve("ID")
    except openai.NotFoundError as e:
        return e.message
    raise AssertionError("an unknown id was found")


def test_stored_responses_expire_after_the_ttl(upstream_sync_url: str, tmp_path: Path) -> None:
    store = ("--response-store", f"sqlite:///{tmp_path / 'r.sqlite3'}", "--response-ttl", "1s")
    with moa_serve(tmp_path, configs(upstream_sync_url), *store) as s, s.client() as c:
        created = c.responses.create(model="fast", input="hi")
        assert c.responses.retrieve(created.id).id == created.id
        threading.Event().wait(1.3)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(created.id)


def test_a_bad_store_option_exits_with_one_error_line(upstream_sync_url: str, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="--response-store: must be sqlite"):
        with moa_serve(tmp_path, configs(upstream_sync_url), "--response-store", "postgres://db/x"):
            pass


# ---- replicas over Redis -------------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_chain_started_on_one_replica_continues_on_another_over_redis(
    upstream_sync_url: str, upstream_thread: ScriptedServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    store = ("--response-store", redis_server.url)
    cfg = configs(upstream_sync_url)
    with moa_serve(tmp_path, cfg, *store) as one, moa_serve(tmp_path, cfg, *store) as two:
        with one.client(timeout=30) as a, two.client(timeout=30) as b:
            first = a.responses.create(model="fast", input="started on one")
            second = b.responses.create(model="fast", input="went on at two", previous_response_id=first.id)
            assert [m["content"] for m in upstream_thread.for_model("p1")[-1].messages] == [
                "started on one",
                first.output_text,
                "went on at two",
            ]
            assert a.responses.retrieve(second.id).id == second.id
            b.responses.delete(first.id)
            with pytest.raises(openai.NotFoundError):
                a.responses.retrieve(first.id)
    with redis_server.client() as r:
        (key,) = r.keys("moa:response:*")
        assert 0 < r.pttl(key) <= 30 * 86400 * 1000  # the TTL rides on the key


def test_another_keys_404_holds_across_replicas_over_redis(
    upstream_sync_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    args = ("--response-store", redis_server.url, "--api-key-env", "MOA_TEST_KEYS")
    env = {"MOA_TEST_KEYS": "key-alice-0001,key-bob-000002"}
    cfg = configs(upstream_sync_url)
    with moa_serve(tmp_path, cfg, *args, env=env) as one, moa_serve(tmp_path, cfg, *args, env=env) as two:
        mine = one.client("key-alice-0001").responses.create(model="fast", input="private")
        assert two.client("key-alice-0001").responses.retrieve(mine.id).id == mine.id
        with pytest.raises(openai.NotFoundError):
            two.client("key-bob-000002").responses.retrieve(mine.id)


def test_a_100_turn_chain_loads_in_one_store_round_trip(
    upstream_sync_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    with moa_serve(tmp_path, configs(upstream_sync_url), "--response-store", redis_server.url) as s, s.client() as c:
        previous = None
        for turn in range(100):
            previous = c.responses.create(model="fast", input=f"turn {turn}", previous_response_id=previous).id
        with redis_server.client() as r:
            r.config_resetstat()
            c.responses.create(model="fast", input="turn 100", previous_response_id=previous)
            stats = r.info("commandstats")
        assert stats["cmdstat_get"]["calls"] == 1  # the chain's whole history in one read
        made = set(stats) - {"cmdstat_config|resetstat", "cmdstat_info"}  # the test's own
        assert stats["cmdstat_set"]["calls"] == 1 and made == {"cmdstat_get", "cmdstat_set"}


# ---- a server killed while it writes ---------------------------------------------------------------------


def test_a_server_killed_mid_write_restarts_on_an_intact_database(
    upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    path = tmp_path / "r.sqlite3"
    store = ("--response-store", f"sqlite:///{path}")
    upstream_thread.script("agg", answer=" ".join(["many words"] * 2000))  # large records: writes take a while
    completed: list[str] = []
    lock = threading.Lock()
    with moa_serve(tmp_path, configs(upstream_sync_url), *store) as s:
        stop = threading.Event()

        def hammer() -> None:
            with s.client(timeout=10) as c:
                while not stop.is_set():
                    try:
                        rid = c.responses.create(model="fast", input="write me").id
                    except openai.APIError:
                        return  # the server is gone
                    with lock:
                        completed.append(rid)

        workers = [threading.Thread(target=hammer) for _ in range(8)]
        for w in workers:
            w.start()
        while len(completed) < 40:
            threading.Event().wait(0.01)
        os.kill(s.proc.pid, signal.SIGKILL)
        stop.set()
        for w in workers:
            w.join(timeout=20)
        s.proc.wait(timeout=10)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with moa_serve(tmp_path, configs(upstream_sync_url), *store) as again, again.client() as c:
        for rid in completed:
            assert c.responses.retrieve(rid).output_text.startswith("many words")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert rows(path) >= len(completed)


def test_the_default_store_is_one_file_under_the_state_directory(upstream_sync_url: str, tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    with moa_serve(tmp_path, configs(upstream_sync_url), env=env) as s, s.client() as c:
        created = c.responses.create(model="fast", input="hi")
        assert c.responses.retrieve(created.id).id == created.id
    assert rows(tmp_path / "state" / "moa" / "responses.sqlite3") == 1


def test_a_default_store_that_cannot_be_opened_leaves_chat_completions_serving(
    upstream_sync_url: str, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    env = {"XDG_STATE_HOME": str(tmp_path / "not-a-folder")}
    with moa_serve(tmp_path, configs(upstream_sync_url), env=env) as s, s.client() as c:
        chat = c.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
        created = c.responses.create(model="fast", input="hi")
        assert created.output_text and created.store is False  # answered, and told it was not stored
        with pytest.raises(openai.APIStatusError) as e:
            c.responses.retrieve(created.id)
        assert e.value.status_code == 503 and e.value.body["code"] == "response_store_unavailable"  # type: ignore[index]
        assert "responses will not be stored" in s.stderr
