"""Limits shared on a real ``redis-server`` (started by these tests on a free 127.0.0.1 port): the limiters
themselves, then ``moa serve`` replicas against the threaded scripted upstream, with windows measured from the
upstream's recorded request start times."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from moa.config import RateLimit, load_config
from moa.ensemble import Ensemble
from moa.errors import ConfigError, DeadlineExceededError
from moa.shared_limits import SharedLimits, default_key_prefix, limits_for, per_replica
from tests.support.ensembles import moa_config
from tests.support.redis_server import RedisServer
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve, wait_until


@pytest.fixture(scope="session")
def redis_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def _prefix() -> str:
    return f"moa:test:{uuid.uuid4().hex[:8]}"


async def _until(condition: Callable[[], bool], timeout: float = 2) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def _max_window(starts: list[float], window: float = 1.0) -> int:
    starts = sorted(starts)
    return max((sum(1 for t in starts if s <= t < s + window) for s in starts), default=0)


# ---- the limiters on the store -------------------------------------------------------------------------------


async def test_two_limiters_on_one_store_share_requests_per_second(redis_store: RedisServer) -> None:
    config, prefix = RateLimit(rps=50, store=redis_store.url), _prefix()
    replicas = [SharedLimits("up", config, prefix), SharedLimits("up", config, prefix)]
    loop, grants = asyncio.get_running_loop(), list[float]()

    async def call(limits: SharedLimits) -> None:
        async with limits.slot(1):
            grants.append(loop.time())

    try:
        await asyncio.gather(*(call(replicas[i % 2]) for i in range(40)))
        assert [r.state for r in replicas] == ["shared", "shared"]
    finally:
        for r in replicas:
            await r.aclose()
    # each alone would let 40 through in 0.78 s at 50/s; together they are one schedule of 40 places
    assert max(grants) - min(grants) >= 39 / 50 * 0.95
    assert _max_window(grants, 0.99) <= 50


async def test_a_waiter_cancelled_while_it_waits_gives_its_place_back(redis_store: RedisServer) -> None:
    config, prefix = RateLimit(rps=2, store=redis_store.url), _prefix()
    limits = SharedLimits("up", config, prefix)
    store = redis_store.client()

    async def enter() -> None:
        async with limits.slot(1):
            pass

    try:
        await enter()  # the first goes at once; the schedule's next place is 0.5 s away
        first = int(store.get(f"{prefix}:rps") or 0)
        waiter = asyncio.create_task(enter())
        await asyncio.sleep(0.1)
        assert int(store.get(f"{prefix}:rps") or 0) == first + 500_000  # it reserved the next place
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await _until(lambda: store.zcard(f"{prefix}:rps:given-back") == 1)
        assert store.zscore(f"{prefix}:rps:given-back", str(first)) == first  # its place, given back
        started = asyncio.get_running_loop().time()
        await enter()  # the next caller takes that place instead of one 0.5 s further
        assert asyncio.get_running_loop().time() - started < 0.45
        assert int(store.get(f"{prefix}:rps") or 0) == first + 500_000
        assert store.zcard(f"{prefix}:rps:given-back") == 0
    finally:
        await limits.aclose()
        store.close()


async def test_tokens_per_minute_are_one_bucket_with_reserve_and_settle(redis_store: RedisServer) -> None:
    config, prefix = RateLimit(tpm=6000, store=redis_store.url), _prefix()  # 100 tokens a second
    a, b = SharedLimits("up", config, prefix), SharedLimits("up", config, prefix)
    loop = asyncio.get_running_loop()
    try:
        async with a.slot(6000):  # empties the shared bucket
            pass
        started = loop.time()
        async with b.slot(50):  # the other replica waits for the refill
            pass
        assert 0.3 <= loop.time() - started <= 3
        a.settle(6000, 100)  # the first call used 100 of its 6000: the rest comes back, to every replica
        store = redis_store.client()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if float(store.hget(f"{prefix}:tpm", "level") or 0) >= 5000:
                break
        store.close()
        started = loop.time()
        async with b.slot(5000):
            pass
        assert loop.time() - started < 0.3
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_request_deadline_cuts_a_wait_for_a_shared_place_and_gives_it_back(
    redis_store: RedisServer, upstream: ScriptedServer
) -> None:
    prefix = _prefix()
    rate_limit = {"rps": 0.5, "store": redis_store.url, "key_prefix": prefix}  # places 2 s apart
    config = {**moa_config(upstream.base_url, [["p"]], backend={"rate_limit": rate_limit}), "deadline_s": 0.5}
    store = redis_store.client()
    loop = asyncio.get_running_loop()
    async with Ensemble.from_config(config) as moa:
        started = loop.time()
        with pytest.raises(DeadlineExceededError):  # the proposer goes at once, the aggregator's place is 2 s away
            await moa.acomplete([{"role": "user", "content": "hi"}])
        assert loop.time() - started < 1.5
        assert [r.model for r in upstream.requests] == ["p"]
        # the aggregator's place (2 s after the proposer's) came back for the next caller
        await _until(lambda: store.zcard(f"{prefix}:rps:given-back") == 1)
    store.close()


async def test_an_unreachable_store_falls_back_to_the_local_share_at_once() -> None:
    from tests.support.redis_server import free_port

    config = RateLimit(rps=100, concurrency=4, tpm=60_000, replicas=2, store=f"redis://127.0.0.1:{free_port()}/0")
    limits = SharedLimits("up", config, _prefix())
    try:
        await limits.start()
        assert limits.state == "local-fallback" and not await limits.ready()
        async with asyncio.timeout(5):
            for _ in range(3):
                async with limits.slot(100):
                    pass
                limits.settle(100, 200)
    finally:
        await limits.aclose()
    assert per_replica(config) == RateLimit(rps=50, concurrency=2, tpm=30_000)


def test_config_names_a_bad_store_and_keys_default_to_backend_and_host(tmp_path: Path) -> None:
    base = {
        "name": "t",
        "layers": [{"agents": [{"backend": "up", "model": "m"}]}],
        "aggregator": {"backend": "up", "model": "m"},
    }
    bad = {**base, "backends": {"up": {"type": "openai", "rate_limit": {"store": "http://127.0.0.1:1"}}}}
    with pytest.raises(ConfigError, match=r"backends\.up\.rate_limit\.store"):
        load_config(bad)
    bad_port = {**base, "backends": {"up": {"type": "openai", "rate_limit": {"store": "redis://:pw@h:port/x"}}}}
    with pytest.raises(ConfigError, match=r"backends\.up\.rate_limit\.store: not a valid Redis URL") as info:
        Ensemble.from_config(bad_port)
    assert "pw" not in str(info.value)
    assert default_key_prefix("up", "http://user:pw@10.0.0.5:8000/v1") == "moa:limits:up@10.0.0.5:8000"
    assert limits_for("up", RateLimit(rps=1)).state == "local"


@pytest.mark.parametrize(
    ("store", "says"),
    [("redis://:pw-9f3e@127.0.0.1:notaport/0", "the port must be a number"),
     ("redis://:pw-9f3e@127.0.0.1:6379/zero", "the database must be a number"),
     ("redis://:pw-9f3e@:6379/0", "it names no host")],
)  # fmt: skip
def test_validate_and_serve_refuse_the_same_bad_store_url(tmp_path: Path, store: str, says: str) -> None:
    """One check of the store URL, in the config model: ``moa validate`` no longer accepts what ``serve`` refuses."""
    config = _replica_config("http://127.0.0.1:1/v1", {"rps": 5, "store": store})
    path = tmp_path / "share.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in (["validate", str(path)], ["serve", "--port", "0", "-c", str(path)]):
        done = subprocess.run(
            [sys.executable, "-m", "moa.cli", *command], capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        assert done.returncode != 0, (command, done.stdout)
        assert f"backends.up.rate_limit.store: not a valid Redis URL: {says}" in done.stderr, done.stderr
        assert "pw-9f3e" not in done.stderr + done.stdout and "Traceback" not in done.stderr


# ---- replicas: `moa serve` processes ----------------------------------------------------------------------


def _replica_config(base_url: str, rate_limit: dict[str, Any], proposers: list[str] | None = None) -> dict[str, Any]:
    return ensemble(base_url, "share", [proposers or ["p"]], "agg", backend={"rate_limit": rate_limit})


async def _offer(servers: list[ServeProcess], rate: float, seconds: float) -> tuple[float, float]:
    """Chat requests at ``rate`` a second, spread over ``servers``, for ``seconds``; then cancels what is left.
    Returns the offer's start and end (monotonic)."""
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))
    clients = [s.aclient(timeout=60, http_client=http) for s in servers]
    for client in clients:  # the client's first request builds its types: a GIL stall the upstream thread would see
        await client.chat.completions.create(model="share", messages=[{"role": "user", "content": "warm up"}])
    await asyncio.sleep(0.5)
    gc.collect()
    gc.freeze()  # a full collection of this process would stall the upstream's thread too (its starts bunch up)
    tasks: list[asyncio.Task[Any]] = []
    start = time.monotonic()
    while (i := len(tasks)) < rate * seconds:
        call = clients[i % len(clients)].chat.completions.create(
            model="share", messages=[{"role": "user", "content": f"q{i}"}]
        )
        tasks.append(asyncio.ensure_future(call))
        await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    end = time.monotonic()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await http.aclose()
    gc.unfreeze()
    return start, end


async def test_two_replicas_on_one_store_keep_the_upstream_at_its_rate(
    redis_store: RedisServer, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    rate = 50  # upstream calls a second; each chat request is four (three proposers, then the aggregator)
    seen: dict[str, int] = {}
    stall = 0.0
    for label, extra in (("alone", {}), ("shared", {"store": redis_store.url, "key_prefix": _prefix()})):
        upstream_thread.reset()
        config = _replica_config(upstream_thread.base_url, {"rps": rate, **extra}, ["p1", "p2", "p3"])
        with moa_serve(tmp_path, [config]) as one, moa_serve(tmp_path, [config]) as two:
            start, end = await _offer([one, two], 3 * rate / 4, 2.5)  # 3R calls a second offered
            starts = [r.started for r in upstream_thread.requests if start <= r.started <= end]
            seen[label] = _max_window(starts)
            if label == "shared":  # the longest time the upstream's thread recorded nothing, beyond one place
                ordered = sorted(starts)
                stall = max((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=0.0) - 1 / rate
            if label == "shared":
                assert json.loads(one.request("GET", "/health")[2])["limits"] == "shared"
    assert seen["alone"] >= 1.6 * rate, seen  # each replica spends the whole limit: about 2R
    # R over any one-second window, +5%. On a loaded machine the upstream's thread (in this process) can go
    # unscheduled for a while and then record the calls granted meanwhile all at once: a stall of s seconds
    # shows up to s * R extra in one window, which no limiter causes, so that much more is allowed.
    assert 0.8 * rate <= seen["shared"] <= 1.05 * rate + max(0.0, stall) * rate, (seen, stall)


def test_the_leases_of_a_killed_replica_expire(
    redis_store: RedisServer, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    upstream_thread.script("p", latency_s=6)
    prefix = _prefix()
    rate_limit = {"concurrency": 1, "store": redis_store.url, "key_prefix": prefix, "lease_ttl_s": 1.0}
    store = redis_store.client()

    async def take_slot(timeout: float) -> float:
        limits = SharedLimits("up", RateLimit.model_validate(rate_limit), prefix)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout), limits.slot(1):
                return time.monotonic() - started
        finally:
            await limits.aclose()

    with moa_serve(tmp_path, [_replica_config(upstream_thread.base_url, rate_limit)]) as serve:

        def call() -> None:
            try:
                serve.post_json({"model": "share", "messages": [{"role": "user", "content": "hold"}]})
            except OSError:
                pass  # the replica is killed under it

        threading.Thread(target=call, daemon=True).start()
        wait_until(lambda: len(upstream_thread.for_model("p")) == 1, what="the call to reach the upstream")
        assert store.zcard(f"{prefix}:leases") == 1
        with pytest.raises(TimeoutError):  # the heartbeat keeps the lease past its ttl while the replica lives
            asyncio.run(take_slot(1.5))
        serve.proc.kill()
        serve.proc.wait(timeout=10)
        # it expires within about its ttl of the last renewal (the slack is for a loaded machine; a lease that
        # never expired would time out at 5 s)
        assert asyncio.run(take_slot(5)) <= 1.0 + 2.0
    store.close()


def test_store_down_mid_run_falls_back_then_shared_limits_resume(
    upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    password = "s3cret-redis-pw"
    store = RedisServer(tmp_path, password=password)  # not running yet: the replica starts without its store
    prefix = _prefix()
    rate_limit = {"rps": 200, "concurrency": 8, "tpm": 10**6, "replicas": 2, "store": "${REDIS_URL}"}
    config = _replica_config(upstream_thread.base_url, {**rate_limit, "key_prefix": prefix})

    def ask(serve: ServeProcess) -> None:
        answer = serve.client(timeout=10).chat.completions.create(
            model="share", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "agg answer 0"

    def limits(serve: ServeProcess) -> str:
        return str(json.loads(serve.request("GET", "/health")[2])["limits"])

    try:
        with moa_serve(tmp_path, [config], env={"REDIS_URL": store.url}) as serve:
            assert serve.request("GET", "/ready")[0] == 503
            ask(serve)  # no store yet: local limits, and the request succeeds
            assert limits(serve) == "local-fallback"
            store.start()
            wait_until(lambda: serve.request("GET", "/ready")[0] == 200, what="/ready once the store answers")
            wait_until(lambda: limits(serve) == "shared", what="shared limits")
            ask(serve)
            with store.client() as c:
                assert c.exists(f"{prefix}:rps", f"{prefix}:tpm") == 2

            store.stop()  # mid-run
            for _ in range(3):
                ask(serve)
            assert limits(serve) == "local-fallback"
            assert serve.request("GET", "/ready")[0] == 200  # it answered once: replicas stay in the pool
            metrics = serve.request("GET", "/metrics")[2].decode()
            assert 'moa_limits_store{backend="up",ensemble="share",state="local-fallback"} 1' in metrics

            store.start()  # back, empty
            wait_until(lambda: limits(serve) == "shared", what="shared limits to resume")
            ask(serve)
            with store.client() as c:
                assert c.exists(f"{prefix}:rps", f"{prefix}:tpm") == 2  # the limits are on the store again
            metrics = serve.request("GET", "/metrics")[2].decode()
            assert 'moa_limits_store{backend="up",ensemble="share",state="shared"} 1' in metrics
        out = serve.output
        assert out.count("unreachable") == 2  # once at start, once mid-run: not once per request
        assert password not in out and password not in metrics
    finally:
        store.stop()


def test_without_a_store_health_is_unchanged_and_ready_needs_no_key(
    upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    config = _replica_config(upstream_thread.base_url, {"rps": 5})
    with moa_serve(tmp_path, [config], "--api-key-env", "MOA_TEST_KEY", env={"MOA_TEST_KEY": "k-123"}) as serve:
        assert json.loads(serve.request("GET", "/health")[2]) == {"status": "ok", "ensembles": ["share"]}
        status, _, body = serve.request("GET", "/ready")
        assert status == 200 and json.loads(body) == {"status": "ready"}  # probes need no key
        assert serve.request("GET", "/v1/models")[0] == 401


def test_a_key_of_the_wrong_type_is_one_fallback_with_its_reason_not_a_flip_per_probe(
    redis_store: RedisServer, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    prefix = _prefix()
    with redis_store.client() as c:
        c.rpush(f"{prefix}:rps", "not", "a", "schedule")  # a list where the GCRA script keeps a string
    config = _replica_config(
        upstream_thread.base_url, {"rps": 200, "tpm": 10**6, "store": redis_store.url, "key_prefix": prefix}
    )
    with moa_serve(tmp_path, [config]) as serve:
        with serve.client(timeout=10) as client:
            until = time.monotonic() + 3
            while time.monotonic() < until:  # calls for 3 s: each would flip the backend under the old probe
                answer = client.chat.completions.create(model="share", messages=[{"role": "user", "content": "hi"}])
                assert answer.choices[0].message.content == "agg answer 0"
                time.sleep(0.05)
            for path in ("/health", "/ready"):
                status, _, raw = serve.request("GET", path)
                body = json.loads(raw)
                assert status == 200 and body["limits"] == "local-fallback", (path, body)
                [fallback] = body["limits_fallback"]
                assert fallback["ensemble"] == "share" and fallback["backend"] == "up", fallback
                assert "refused" in fallback["reason"] and "WRONGTYPE" in fallback["reason"], fallback
            metrics = serve.request("GET", "/metrics")[2].decode()
            assert 'moa_limits_store{backend="up",ensemble="share",state="local-fallback"} 1' in metrics

            with redis_store.client() as c:
                c.delete(f"{prefix}:rps")  # repaired: the probe (with backoff) finds it and calls try the store
            wait_until(lambda: json.loads(serve.request("GET", "/health")[2])["limits"] == "shared", 15, "shared")
            client.chat.completions.create(model="share", messages=[{"role": "user", "content": "hi"}])
            with redis_store.client() as c:
                assert c.type(f"{prefix}:rps") == b"string"  # the schedule is on the store again
            assert "limits_fallback" not in json.loads(serve.request("GET", "/health")[2])
    out = serve.output
    assert out.count("WRONGTYPE") == 1, out  # logged once, not once per probe
    assert out.count("shared limits resume") == 1, out
    assert "unreachable" not in out and "Traceback" not in out
