"""One backend's limits shared by every ``moa serve`` replica that names the same Redis store (``rate_limit.store``).

Each limit is one key of the store, changed only by Lua scripts that read the store's own clock
(``redis.call('TIME')``), so replicas' clocks do not matter and no read-modify-write races:

- requests per second: GCRA. A call reserves the next place on the shared schedule and sleeps until it; a call
  cancelled while it sleeps gives its place back (as in process, nothing stays reserved): the places behind it
  keep their times and the next caller takes the freed one, so no place is ever held twice. A call cancelled
  while its reservation is on the wire keeps it (it cannot know whether the store took it): one place unused.
- tokens per minute: one shared bucket with the in-process reserve/settle rule. A call takes its estimate when
  the level covers it (else sleeps the computed refill time and asks again); ``settle`` charges or refunds the
  difference. Within a process calls wait FIFO; across processes the first to ask after a refill wins.
- concurrency: leases, ids in a sorted set scored by their expiry, renewed by a heartbeat while the call runs
  and removed at its end; the leases of a replica that died expire after ``lease_ttl_s``. Waiting for a lease
  backs off (5 ms doubling to 100 ms) and only ``concurrency`` calls of a process ask at once.

Any store error switches the backend to its in-process limits divided by ``replicas`` (state
``local-fallback``, with the reason in ``reason``); no call fails because of the store. Two kinds:

- unreachable (no connection, timed out): logged once; a ping every ``PROBE_INTERVAL_S`` switches back when the
  store answers again.
- refused (the store answers, but with an error: a key of the wrong type at the prefix, out of memory, a
  read-only replica, no permission): a ping would succeed while every call keeps failing, so this is its own
  state. It is logged once per reason and probed with backoff (``REFUSED_BACKOFF_S``, doubling): the probe
  checks the keys' types, then lets calls try the store again; a call refused again goes back to local limits
  without a new log line, and the backoff keeps doubling until a call succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from moa.config import RateLimit
from moa.errors import ConfigError
from moa.limits import BackendLimits, Limits, LimitsState

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

#: seconds a store command may take (connect, send, answer) before the backend falls back to local limits
SOCKET_TIMEOUT_S = 0.5
#: connections to the store per backend and process; a call waits up to POOL_TIMEOUT_S for one of them
MAX_CONNECTIONS = 64
POOL_TIMEOUT_S = 1.0
#: seconds between probes of an unreachable store
PROBE_INTERVAL_S = 0.5
#: seconds before the first probe of a store that refused a command, doubling after each refusal, up to the second
REFUSED_BACKOFF_S = (0.5, 30.0)
#: the Redis type each key must have (or ``none``: not there yet)
KEY_TYPES = {"rps": "string", "rps:given-back": "zset", "tpm": "hash", "leases": "zset"}
LEASE_BACKOFF_S = (0.005, 0.1)

# KEYS[1] the schedule (the next free place), KEYS[2] places given back; ARGV interval, tolerance (microseconds).
# Takes the earliest place given back that is not past, else the schedule's next; returns {place, wait} (us).
GCRA_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
local back = redis.call('ZRANGE', KEYS[2], 0, 0)
if #back > 0 then
  redis.call('ZREM', KEYS[2], back[1])
  local place = tonumber(back[1])
  return {place, math.max(0, place - tolerance - now)}
end
local place = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local ttl = math.ceil((place + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', place + interval), 'PX', ttl)
return {place, math.max(0, place - tolerance - now)}
"""

# KEYS[1] the schedule, KEYS[2] places given back; ARGV a place (us). Gives a place that is not past back for the
# next caller to take (the places behind it keep theirs): 1 if it did.
GCRA_GIVE_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local place = tonumber(ARGV[1])
if place < now then return 0 end
redis.call('ZADD', KEYS[2], place, ARGV[1])
redis.call('PEXPIRE', KEYS[2], math.ceil((place - now) / 1000) + 1000)
return 1
"""

# KEYS[1] the bucket (level, stamp); ARGV capacity, tokens a second, mode ('take' or 'settle'), amount.
# take: takes ``amount`` when the level covers it and returns 0, else returns the milliseconds to wait.
# settle: lowers the level by ``amount`` (negative refunds), at most to the capacity; returns 0.
TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local capacity, rate, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or ARGV[1])
local stamp = tonumber(redis.call('HGET', KEYS[1], 'stamp') or now)
level = math.min(capacity, level + math.max(0, now - stamp) * rate)
local wait = 0
if ARGV[3] == 'take' then
  if level >= amount then level = level - amount else wait = math.ceil((amount - level) / rate * 1000) end
else
  level = math.min(capacity, level - amount)
end
redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level), 'stamp', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 60000)
return wait
"""

# KEYS[1] the leases; ARGV limit, ttl (ms), id. Drops expired leases, adds this one if there is room: 1, else 0.
LEASE_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""

# KEYS[1] the leases; ARGV ttl (ms), id. Pushes a live lease's expiry out; 0 when it is gone (it expired).
LEASE_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return renewed
"""


SCRIPTS = (GCRA_RESERVE, GCRA_GIVE_BACK, TOKEN_BUCKET, LEASE_TAKE, LEASE_RENEW)


def safe_url(url: str) -> str:
    """The store's URL without its user and password, for logs."""
    split = urlsplit(url)
    if split.scheme == "unix":
        return f"unix://{split.path}"
    port = f":{split.port}" if split.port else ""
    return f"{split.scheme}://{split.hostname}{port}{split.path}"


def default_key_prefix(name: str, base_url: str | None) -> str:
    """``moa:limits:<backend>@<host>``: two replicas that name one backend at one host share its limits."""
    host = urlsplit(base_url).netloc.rpartition("@")[2] if base_url else ""
    return f"moa:limits:{name}@{host}" if host else f"moa:limits:{name}"


def per_replica(config: RateLimit) -> RateLimit:
    """The in-process limits while the store is unreachable: each replica's share of the shared ones."""
    r = config.replicas
    return RateLimit(
        rps=config.rps / r if config.rps else None,
        burst=max(1, config.burst // r),
        concurrency=max(1, math.ceil(config.concurrency / r)) if config.concurrency else None,
        tpm=max(1, config.tpm // r) if config.tpm else None,
    )


class SharedLimits:
    """A backend's limits on a Redis store, with ``BackendLimits``' interface and its local fallback."""

    def __init__(self, name: str, config: RateLimit, key_prefix: str, path: str = "rate_limit.store") -> None:
        if config.store is None:
            raise ConfigError("shared limits need a store", path)
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigError("a limits store needs the redis package: pip install 'moa[redis]'", path) from None
        self.name = name
        self.config = config
        # no retries of its own: a failed command means local limits now, and the probe decides when to come back
        try:
            self.store = safe_url(config.store)
            pool = BlockingConnectionPool.from_url(
                config.store,
                max_connections=MAX_CONNECTIONS,
                timeout=POOL_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        except ValueError:  # its message may quote the URL (and a password in it)
            raise ConfigError("not a valid Redis URL (redis://[:password@]host:port/db)", path) from None
        self._redis: Redis = Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._gcra = self._redis.register_script(GCRA_RESERVE)
        self._give_back = self._redis.register_script(GCRA_GIVE_BACK)
        self._bucket = self._redis.register_script(TOKEN_BUCKET)
        self._lease_take = self._redis.register_script(LEASE_TAKE)
        self._lease_renew = self._redis.register_script(LEASE_RENEW)
        self.keys = {kind: f"{key_prefix}:{kind}" for kind in ("rps", "rps:given-back", "tpm", "leases")}
        self.local = BackendLimits(per_replica(config))
        self._gate = asyncio.Semaphore(config.concurrency) if config.concurrency else None
        self._token_lock = asyncio.Lock()
        self._shared = True
        #: why the limits are local (None while shared): what the store did, never its URL
        self.reason: str | None = None
        self._refused: str | None = None  # the refusal last logged; not logged again until a call succeeds
        self._backoff = REFUSED_BACKOFF_S[0]
        self._trial = False  # shared again after a refusal, on probation until a call succeeds
        self.answered = False  # the store has answered once
        self._started = False
        self._closed = False
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # give-backs, releases, settles: short, awaited on close
        self._heartbeats: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> LimitsState:
        return "shared" if self._shared else "local-fallback"

    # ---- store health -------------------------------------------------------------------------------------

    def _errors(self) -> tuple[type[BaseException], ...]:
        from redis.exceptions import RedisError

        return (RedisError, OSError)

    @staticmethod
    def _unreachable(err: BaseException) -> bool:
        """No answer (connection, timeout), as opposed to an answer that is an error (the store refused)."""
        from redis.exceptions import ConnectionError, TimeoutError

        return isinstance(err, (ConnectionError, TimeoutError, OSError))

    def _down(self, err: BaseException) -> None:
        """The store failed: local limits from now on (logged once), a probe to come back."""
        if self._unreachable(err):
            self._fall_back(f"unreachable ({type(err).__name__})", refused=False)
        else:
            message = " ".join(str(err).split())[:200]
            self._fall_back(f"the store refused a command ({type(err).__name__}: {message})", refused=True)

    def _fall_back(self, reason: str, refused: bool) -> None:
        was_shared, self._shared = self._shared, False
        if refused:
            if self._trial:  # refused again after a probe let calls back: wait longer before the next
                self._backoff = min(2 * self._backoff, REFUSED_BACKOFF_S[1])
            self._trial = False
            if was_shared and reason != self._refused:
                self._refused = reason
                log.warning(
                    "backend %s: limits store %s %s; using local limits (divided by replicas=%d), probing again "
                    "in %g s (doubling while it refuses)",
                    self.name,
                    self.store,
                    reason,
                    self.config.replicas,
                    self._backoff,
                )
        elif was_shared:
            log.warning(
                "backend %s: limits store %s %s; using local limits (divided by replicas=%d) until it answers",
                self.name,
                self.store,
                reason,
                self.config.replicas,
            )
        if was_shared or self.reason is None:
            self.reason = reason
        if not self._closed and (self._probe is None or self._probe.done()):
            probe = self._probe_refused() if refused else self._probe_until_up()
            self._probe = asyncio.get_running_loop().create_task(probe)

    async def _probe_until_up(self) -> None:
        while not await self._ping():
            await asyncio.sleep(PROBE_INTERVAL_S)
        self._shared, self.reason = True, None
        log.warning("backend %s: limits store %s answers again; shared limits resume", self.name, self.store)

    async def _probe_refused(self) -> None:
        """After the backoff, and each time the keys still have the wrong types, again after twice as long; then
        calls try the store again (on probation: the next refusal doubles the backoff)."""
        while True:
            await asyncio.sleep(self._backoff)
            if await self._keys_fit():
                break
            self._backoff = min(2 * self._backoff, REFUSED_BACKOFF_S[1])
        self._shared, self.reason, self._trial = True, None, True

    async def _keys_fit(self) -> bool:
        """The store answers and none of this backend's keys has a type its scripts cannot use."""
        try:
            for kind, key in self.keys.items():
                found = await self._redis.type(key)
                found = found.decode() if isinstance(found, bytes) else str(found)
                if found not in ("none", KEY_TYPES[kind]):
                    return False
        except self._errors():
            return False
        return True

    def _succeeded(self) -> None:
        self.answered = True
        if self._trial:
            self._trial, self._refused, self._backoff = False, None, REFUSED_BACKOFF_S[0]
            log.warning(
                "backend %s: limits store %s accepts commands again; shared limits resume", self.name, self.store
            )

    async def _ping(self) -> bool:
        try:
            await self._redis.ping()
        except self._errors():
            return False
        self.answered = True
        return True

    async def _call(self, script: Callable[..., Awaitable[Any]], key: str, *args: object) -> int | None:
        """One script on the store: its integer answer, or None when the store failed (now in fallback)."""
        try:
            answer = await script(keys=[self.keys[key]], args=list(args))
        except self._errors() as e:
            self._down(e)
            return None
        self._succeeded()
        return int(answer)

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        """Ask the store once, so that ``state`` says where the limits are before the first call, and load the
        scripts (else the first call of each pays a NOSCRIPT round trip)."""
        if self._started:
            return
        self._started = True
        try:
            for script in SCRIPTS:
                await self._redis.script_load(script)
        except self._errors() as e:
            self._down(e)
            return
        self.answered = True

    async def ready(self) -> bool:
        """The store has answered once (asking it now if it has not)."""
        return self.answered or await self._ping()

    async def aclose(self) -> None:
        """Finish the releases and settlements under way (briefly), stop heartbeats and the probe, disconnect."""
        for heartbeat in list(self._heartbeats):
            heartbeat.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2 * SOCKET_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
        self._closed = True  # no new probe
        if self._probe is not None:
            self._probe.cancel()
        await self._redis.aclose(close_connection_pool=True)

    # ---- the three limits ---------------------------------------------------------------------------------

    async def _concurrency(self, stack: AsyncExitStack) -> None:
        if self._gate is None or self.config.concurrency is None:
            return
        await self._gate.acquire()
        stack.callback(self._gate.release)
        if self._shared:
            lease = uuid.uuid4().hex
            ttl_ms = math.ceil(self.config.lease_ttl_s * 1000)
            delay = LEASE_BACKOFF_S[0]
            while self._shared:
                try:
                    got = await self._call(self._lease_take, "leases", self.config.concurrency, ttl_ms, lease)
                except asyncio.CancelledError:
                    self._spawn(self._release(lease))  # it may have been taken: don't leave it to expire
                    raise
                if got == 1:
                    heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(lease, ttl_ms))
                    self._heartbeats.add(heartbeat)
                    heartbeat.add_done_callback(self._heartbeats.discard)
                    stack.push_async_callback(self._end_lease, lease, heartbeat)
                    return
                if got is None:
                    break
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, LEASE_BACKOFF_S[1])
        semaphore = self.local.in_flight
        assert semaphore is not None
        await semaphore.acquire()
        stack.callback(semaphore.release)

    async def _give_back_place(self, place: int) -> None:
        try:
            await self._give_back(keys=[self.keys["rps"], self.keys["rps:given-back"]], args=[place])
        except self._errors():
            pass  # the place goes unused

    async def _heartbeat(self, lease: str, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            try:
                await self._lease_renew(keys=[self.keys["leases"]], args=[ttl_ms, lease])
            except self._errors():
                pass  # the store is down: the lease expires there, this call goes on

    async def _release(self, lease: str) -> None:
        try:
            await self._redis.zrem(self.keys["leases"], lease)
        except self._errors():
            pass  # it expires

    async def _end_lease(self, lease: str, heartbeat: asyncio.Task[None]) -> None:
        heartbeat.cancel()
        await asyncio.shield(self._spawn(self._release(lease)))  # a second cancellation leaves it running

    async def _rate(self) -> None:
        if self.config.rps is None:
            return
        if self._shared:
            interval = 1_000_000 / self.config.rps
            keys, args = (
                [self.keys["rps"], self.keys["rps:given-back"]],
                [round(interval), round((self.config.burst - 1) * interval)],
            )
            try:
                place, wait = (int(x) for x in await self._gcra(keys=keys, args=args))
            except self._errors() as e:
                self._down(e)
            else:
                self._succeeded()
                if wait > 0:
                    try:
                        await asyncio.sleep(wait / 1e6)
                    except asyncio.CancelledError:
                        self._spawn(self._give_back_place(place))
                        raise
                return
        requests = self.local.requests
        assert requests is not None
        await requests.acquire()

    async def _tokens(self, estimated: int) -> None:
        if self.config.tpm is None:
            return
        need = min(estimated, self.config.tpm)
        async with self._token_lock:
            while self._shared:
                wait = await self._call(self._bucket, "tpm", self.config.tpm, self.config.tpm / 60, "take", need)
                if wait is None:
                    break
                if wait == 0:
                    return
                await asyncio.sleep(wait / 1000)
        tokens = self.local.tokens
        assert tokens is not None
        await tokens.acquire(estimated)

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        """Hold a slot for one call: concurrency first (so queued calls don't burn rate), then rate, then tokens."""
        async with AsyncExitStack() as stack:
            await self._concurrency(stack)
            await self._rate()
            await self._tokens(estimated_tokens)
            yield

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Charge (or refund) the difference, on the store in the background (or on the local bucket)."""
        if self.config.tpm is None:
            return
        if self._shared:
            delta = actual_tokens - min(estimated_tokens, self.config.tpm)
            self._spawn(self._call(self._bucket, "tpm", self.config.tpm, self.config.tpm / 60, "settle", delta))
        else:
            self.local.settle(estimated_tokens, actual_tokens)


def limits_for(name: str, config: RateLimit, base_url: str | None = None) -> Limits:
    """A backend's limits: on its store when ``config.store`` names one, else in this process."""
    if config.store is None:
        return BackendLimits(config)
    prefix = config.key_prefix or default_key_prefix(name, base_url)
    return SharedLimits(name, config, prefix, f"backends.{name}.rate_limit.store")
