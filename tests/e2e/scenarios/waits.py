"""Waits the kernel-stack rules do not name: a payment hands its settlement batch to a
worker process and sleeps until the worker says it is done.

    python -m tests.e2e.scenarios.waits --truth T --ipc sem|eventfd|pipe
                                        --worker-cgroup MEMCG [--cgroup CPU_CG]

The worker is a separate process (forked before the tracer starts, uninstrumented, in its
own memory cgroup). Each payment writes a request byte to the worker's request pipe, then
waits for its answer on the channel ``--ipc`` names:

    sem      a System V semaphore (``semop`` -1; the worker's ``semop`` +1 wakes it): the
             stack is in ``do_semtimedop``, which no wait-reason rule names ('other')
    eventfd  an eventfd (``read``; the worker's ``write`` wakes it): ``eventfd_read``, no
             rule names it either
    pipe     a pipe (``read``): named 'pipe'

The worker builds each batch in fresh memory (``--batch-mb``, as the memory scenario's
payments do); the test runs a batch job in the worker's cgroup cycling more memory than the
limit, so the worker reclaims, and the payment waits for it. Nothing in the payment's own
thread is slow: the cause is one hop away, behind a wait with an unnamed stack.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time

from tests.e2e.scenarios.cpu import price
from tests.e2e.scenarios.memory import build_batch
from tests.e2e.scenarios.telemetry import (
    Service,
    join_cgroups,
    pace,
    parser,
    pin_to_cpu,
    schedstat,
)

_IPC_PRIVATE = 0
_IPC_CREAT = 0o1000
_IPC_RMID = 0


class _SemBuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short),
                ("sem_flg", ctypes.c_short)]


class SysVSemaphore:
    """One System V semaphore (libc's semget/semop/semctl through ctypes, GIL released)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.id = self._libc.semget(_IPC_PRIVATE, 1, _IPC_CREAT | 0o600)
        if self.id < 0:
            raise OSError(ctypes.get_errno(), "semget failed")

    def op(self, delta: int) -> None:
        buf = _SemBuf(0, delta, 0)
        while self._libc.semop(self.id, ctypes.byref(buf), 1) < 0:
            err = ctypes.get_errno()
            if err != 4:  # EINTR
                raise OSError(err, "semop failed")

    def remove(self) -> None:
        self._libc.semctl(self.id, 0, _IPC_RMID)


class Channel:
    """The worker's 'done' signal: post from the worker, wait in the payment."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sem = SysVSemaphore() if kind == "sem" else None
        self.efd = os.eventfd(0) if kind == "eventfd" else -1
        self.r, self.w = os.pipe() if kind == "pipe" else (-1, -1)

    def post(self) -> None:
        if self.sem is not None:
            self.sem.op(1)
        elif self.efd >= 0:
            os.eventfd_write(self.efd, 1)
        else:
            os.write(self.w, b"d")

    def wait(self) -> None:
        if self.sem is not None:
            self.sem.op(-1)
        elif self.efd >= 0:
            os.eventfd_read(self.efd)
        else:
            os.read(self.r, 1)

    def close(self) -> None:
        if self.sem is not None:
            self.sem.remove()


def worker(requests: int, results: int, channel: Channel, cgroups: list[str],
           batch_mb: int, cpu: int | None) -> None:
    """The settlement worker: one batch per request, then 'done'; before posting it
    reports (on ``results``) how long it waited for a CPU while building the batch, by its
    schedstat: time the payment waited for the worker that no memory pressure explains."""
    join_cgroups(cgroups)
    pin_to_cpu(cpu)
    size = batch_mb << 20
    build_batch(size, 0)
    channel.post()  # warmed up: ready
    while True:
        data = os.read(requests, 8)
        if not data or data.startswith(b"q"):
            return
        number = struct.unpack("<q", data)[0]
        _, wait0 = schedstat()
        build_batch(size, number)
        _, wait1 = schedstat()
        os.write(results, struct.pack("<q", wait1 - wait0))
        channel.post()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--ipc", choices=("sem", "eventfd", "pipe"), required=True)
    p.add_argument("--worker-cgroup", action="append", default=[])
    p.add_argument("--batch-mb", type=int, default=32)
    p.add_argument("--price-paths", type=int, default=0,
                   help="then price the payment (CPU) on --price-cpu: a second step, for a "
                        "second fault")
    p.add_argument("--price-cpu", type=int, default=None)
    p.add_argument("--worker-cpu", type=int, default=None)
    args = p.parse_args()
    join_cgroups(args.cgroup)
    channel = Channel(args.ipc)
    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()  # before the tracer's threads exist
    if pid == 0:
        os.close(req_w)
        os.close(res_r)
        try:
            worker(req_r, res_w, channel, args.worker_cgroup + args.cgroup, args.batch_mb,
                   args.worker_cpu)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(res_w)
    service = Service(f"waits-{args.ipc}", args.truth, "payment-handoff")
    service.truth.facts.update({"worker_pid": pid, "ipc": args.ipc})
    channel.wait()  # the worker is in its cgroups and warmed up
    pin_to_cpu(args.price_cpu)
    steps: dict[str, dict[str, int]] = {}
    try:
        for i in range(args.ops):
            started = time.monotonic()
            with service.operation(i, args.deadline_ms):
                handoff = time.monotonic_ns()
                with service.child("settlement.handoff"):
                    os.write(req_w, struct.pack("<q", i))
                    channel.wait()
                handoff = time.monotonic_ns() - handoff
                (worker_runqueue,) = struct.unpack("<q", os.read(res_r, 8))
                _, wait0 = schedstat()
                if args.price_paths:
                    with service.child("risk.price"):
                        price(args.price_paths, i)
                _, wait1 = schedstat()
            steps[service.truth.operations[-1].payment_id] = {
                "handoff_ns": handoff, "worker_runqueue_ns": worker_runqueue,
                "price_runqueue_ns": wait1 - wait0}
            pace(args.interval_ms, started)
    finally:
        os.write(req_w, b"q" * 8)
        os.waitpid(pid, 0)
        channel.close()
    service.truth.facts["steps"] = steps
    service.finish()


if __name__ == "__main__":
    main()
