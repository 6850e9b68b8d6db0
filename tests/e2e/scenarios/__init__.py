"""The accuracy scenarios: real services, real kernel-level faults, known ground truth.

Each scenario is a small service instrumented with the OpenTelemetry SDK (one module per
scenario, run as ``python -m tests.e2e.scenarios.<name>`` under ``kprobe run``) and, for
most, a culprit: a separate real process (``tests.e2e.scenarios.culprits``) or, for the
lock, another thread of the service. Nothing sleeps inside an operation to fake a delay:
the time an operation loses is taken from it by the kernel (reclaim, the run queue, the
disk, TCP's retransmit timer) or by a thread holding the lock it needs.

    memory    payments allocate a fresh batch buffer in a memory cgroup where an allocator
              cycles more anonymous memory than the limit through a zram swap device
    cpu       a pricing loop pinned to one CPU, with hog threads pinned to the same CPU
    disk      settlement writes that fsync, while a writer rewrites a file and fdatasyncs
    network   ledger calls over loopback TCP, with an iptables statistic DROP on the
              ledger port (INPUT -i lo): lost segments wait for TCP's retransmit timer
    lock      payments take the ledger lock a snapshot thread holds while it checksums
    healthy   the same kinds of work with no fault: nothing to explain

Ground truth (``truth.GroundTruth``) is written by the service (its operations, measured
durations and deadlines, the holder thread) and completed by the test (the culprit pid).
"""
