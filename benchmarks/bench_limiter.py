"""CPU cost of waiting at a request-rate limit: moa's RequestRateLimiter vs asyncio-throttle, side by side.

Queues ``--waiters`` acquisitions at ``--rps`` and reports wall time, grants per second and the CPU seconds the
event loop burned while they waited (asyncio-throttle re-checks every waiter every 10 ms).

    python -m benchmarks.bench_limiter [--waiters 2000] [--rps 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.figures import add_json_option, write_figures
from moa.limits import RequestRateLimiter


async def _drain(acquire, waiters: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(acquire() for _ in range(waiters)))
    return time.monotonic() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--rps", type=float, default=500)
    add_json_option(parser)
    args = parser.parse_args()
    ours = RequestRateLimiter(args.rps)
    wall, cpu = asyncio.run(_drain(ours.acquire, args.waiters))
    figures: dict[str, object] = {"moa.wall_s": wall, "moa.grants_per_s": args.waiters / wall, "moa.cpu_s": cpu}
    print(
        f"moa RequestRateLimiter: {args.waiters} grants in {wall:.2f} s ({args.waiters / wall:.0f}/s), CPU {cpu:.2f} s"
    )
    try:
        from asyncio_throttle import Throttler
    except ImportError:
        print("asyncio-throttle not installed: pip install asyncio-throttle to compare")
        write_figures(args.json, "bench_limiter", args, figures)
        return
    theirs = Throttler(rate_limit=int(args.rps), period=1.0)
    wall, cpu = asyncio.run(_drain(theirs.acquire, args.waiters))
    print(
        f"asyncio-throttle:       {args.waiters} grants in {wall:.2f} s ({args.waiters / wall:.0f}/s), CPU {cpu:.2f} s"
    )
    figures.update({"asyncio_throttle.wall_s": wall, "asyncio_throttle.grants_per_s": args.waiters / wall})
    figures["asyncio_throttle.cpu_s"] = cpu
    write_figures(args.json, "bench_limiter", args, figures)


if __name__ == "__main__":
    main()
