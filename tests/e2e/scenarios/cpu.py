"""CPU scenario service: a risk engine pricing each payment's exposure, pinned to one CPU.

Each payment runs a fixed amount of pure computation (a Monte-Carlo-style loop). Its
deadline is a multiple of the computation's own CPU time, measured at start-up on this
machine (CPU speed varies between runs here): alone on its CPU a payment takes about 1x, so
only time taken by other threads on that CPU can make it miss the deadline.
"""

from __future__ import annotations

import os
import time

from tests.e2e.scenarios.telemetry import (
    Service,
    best_cpu_ms,
    join_cgroups,
    pace,
    parser,
    pin_to_cpu,
)


def price(paths: int, seed: int) -> float:
    x, total = seed * 2654435761 % 2**32, 0.0
    for _ in range(paths):  # a linear congruential walk: no I/O, no allocation to speak of
        x = (1103515245 * x + 12345) % 2**31
        total += (x / 2**31 - 0.5) ** 2
    return total


def calibrate(paths: int, cpu: int) -> float:
    """What one payment costs without contention (ms): the best of a few runs on ``cpu``,
    in this thread's own CPU time (other load on the machine does not inflate it)."""
    pin_to_cpu(cpu)
    return best_cpu_ms(lambda i: price(paths, i), 7)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--cpu", type=int, required=True, help="the CPU the service is pinned to")
    p.add_argument("--quiet-cpu", type=int, required=True,
                   help="a CPU without the hogs, to measure one payment's own cost")
    p.add_argument("--paths", type=int, default=100_000)
    p.add_argument("--deadline-factor", type=float, default=2.5)
    args = p.parse_args()
    join_cgroups(args.cgroup)
    service = Service("cpu", args.truth, "risk-engine")
    own_ms = calibrate(args.paths, args.quiet_cpu)
    deadline_ms = round(args.deadline_factor * own_ms, 1)
    service.truth.facts.update({"own_ms": own_ms, "cpu": args.cpu, "pid": os.getpid()})
    pin_to_cpu(args.cpu)
    for i in range(args.ops):
        started = time.monotonic()
        with service.operation(i, deadline_ms), service.child("risk.exposure"):
            price(args.paths, i)
        pace(args.interval_ms, started)
    service.finish()


if __name__ == "__main__":
    main()
