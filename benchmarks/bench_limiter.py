"""CPU cost of waiting at a request-rate limit: moa's RequestRateLimiter vs asyncio-throttle, side by side.

Queues ``--waiters`` acquisitions at ``--rps`` and reports wall time, grants per second and the CPU seconds the
event loop burned while they waited (asyncio-throttle re-checks every waiter every 10 ms).

    python -m benchmarks.bench_limiter [--waiters 2000] [--rps 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from moa.limits import RequestRateLimiter


async def _drain(acquire, waiters: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(acquire() for _ in range(waiters)))
    return time.monotonic() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--rps", type=float, default=500)
    args = parser.parse_args()
    ours = RequestRateLimiter(args.rps)
    wall, cpu = asyncio.run(_drain(ours.acquire, args.waiters))
    print(
        f"moa RequestRateLimiter: {args.waiters} grants in {wall:.2f} s ({args.waiters / wall:.0f}/s), CPU {cpu:.2f} s"
    )
    try:
        from asyncio_throttle import Throttler
    except ImportError:
        print("asyncio-throttle not installed: pip install asyncio-throttle to compare")
        return
    theirs = Throttler(rate_limit=int(args.rps), period=1.0)
    wall, cpu = asyncio.run(_drain(theirs.acquire, args.waiters))
    print(
        f"asyncio-throttle:       {args.waiters} grants in {wall:.2f} s ({args.waiters / wall:.0f}/s), CPU {cpu:.2f} s"
    )


if __name__ == "__main__":
    main()
